"""A save writes exactly this process's changes, over the store's current state.

The cases of issue 12 that broke where the rules met: a process that only read
a cache wrote it back at exit (over newer writes); a process behind the store
rewrote the snapshot from its memory (dropping keys it never read); a save
while other threads edited the cache raised.  Each runs on both stores, with
real processes where processes are the point.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import both_stores, wait_until
from test_processes import PRELUDE, Place, place, run, saved

from cacheman import (
    AutoSyncCache,
    CacheManager,
    PersistentCache,
    RedisStore,
    TimeCount,
    _registry,
)

__all__ = ["place"]  # the fixture, shared with test_processes


def files_of(directory: Path, name: str) -> dict[str, tuple[bytes, int]]:
    """The bytes and modification times of every file kept for cache ``name``."""
    return {
        path.name: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in directory.rglob(f"{name}.*")
        if path.is_file()
    }


# -- 1. in-place changes are detected, not assumed ---------------------------------------------

READ_ONLY = """
cache = manager.register_cache("lists")
print(sum(len(value) for value in cache.values()))
"""


def test_a_process_that_only_read_a_cache_of_lists_writes_nothing(place: Place) -> None:
    manager = place.manager()
    cache = manager.register_custom_cache("lists", autosync=False)
    cache.update({f"k{i}": [i, {"n": i}] for i in range(200)})
    cache.save()
    before = files_of(place.directory, "lists")
    assert run(READ_ONLY, place).strip() == str(2 * 200)
    assert files_of(place.directory, "lists") == before  # untouched, not even rewritten
    assert saved(place, "lists") == {f"k{i}": [i, {"n": i}] for i in range(200)}


def test_an_in_place_change_is_detected_and_written_at_exit(place: Place) -> None:
    manager = place.manager()
    cache = manager.register_custom_cache("lists", autosync=False)
    cache.update({"a": [1], "b": [2], "c": {"n": 3}})
    cache.save()
    run("c = manager.register_cache('lists'); c['b'].append(20); c['c']['m'] = 4", place)
    assert saved(place, "lists") == {"a": [1], "b": [2, 20], "c": {"n": 3, "m": 4}}


READER = """
cache = manager.register_cache("shared")
print(cache["t"], flush=True)
sys.stdin.readline()  # the test lets us end once the writer has saved
"""


def test_a_reader_does_not_put_an_old_value_back_over_a_newer_one(place: Place) -> None:
    manager = place.manager()
    cache = manager.register_custom_cache("shared", autosync=False)
    cache["t"] = ["old"]
    cache.save()
    reader = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(READER), str(place.directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=place.env,
    )
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "['old']"  # it has loaded
    run("c = manager.register_cache('shared'); c['t'] = ['new']", place)
    _, err = reader.communicate("go\n", timeout=60)
    assert reader.returncode == 0, err
    assert saved(place, "shared") == {"t": ["new"]}


_jobs_manager: CacheManager


def _open_jobs(directory: str, redis_url: str | None) -> None:
    """Pool initializer: the worker's own manager (a spawned worker has none)."""
    global _jobs_manager
    store = None if redis_url is None else RedisStore(redis_url)
    _jobs_manager = CacheManager("procs", directory, store=store)
    _jobs_manager.register_cache("jobs")


def _do_job(index: int) -> int:
    jobs = _jobs_manager.retrieve_cache("jobs")
    assert jobs[index] == {"status": "pending"}
    jobs[index] = {"status": "done"}
    return index


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_job_queue_keeps_every_worker_s_result(place: Place, start: str) -> None:
    manager = place.manager()
    jobs = manager.register_cache("jobs")
    for index in range(100):
        jobs[index] = {"status": "pending"}
    jobs.save()  # the workers find the queue saved
    context = multiprocessing.get_context(start)
    pool = context.Pool(4, initializer=_open_jobs, initargs=(str(place.directory), place.redis_url))
    try:
        assert sorted(pool.map(_do_job, range(100))) == list(range(100))
        pool.close()
        pool.join()  # each worker saves its results as it exits
    finally:
        pool.terminate()
    done = place.manager().store.load("jobs") or {}
    assert sum(job == {"status": "done"} for job in done.values()) == 100
    # ... and this process, which only holds the old values, does not put them back.
    jobs.save()
    manager.deregister_cache("jobs")  # its exit save
    done = place.manager().store.load("jobs") or {}
    assert sum(job == {"status": "done"} for job in done.values()) == 100


def test_a_value_assigned_saved_then_changed_in_place_is_written(place: Place) -> None:
    cache = place.manager().register_custom_cache("lists", autosync=False)
    cache["t"] = ["a"]
    cache.save()
    cache["t"].append("b")  # measured against what the save wrote
    cache.save()
    assert saved(place, "lists") == {"t": ["a", "b"]}


def test_refresh_writes_a_value_changed_in_place(place: Place) -> None:
    # refresh() acknowledges this process's changes, in place ones included (the model
    # test's short form lost such a change now and then).
    cache = place.manager().register_custom_cache("lists", autosync=False)
    cache["t"] = ["a"]
    cache.save()
    cache["t"].append("b")  # no touch(): the refresh must find it
    cache.refresh()
    assert saved(place, "lists") == {"t": ["a", "b"]}


# -- 2. a process that is behind never erases keys it has not seen -----------------------------


def test_a_whole_rewrite_by_a_process_that_is_behind_keeps_keys_it_never_read(
    place: Place,
) -> None:
    late = place.manager().register_custom_cache("shared", autosync=False)
    early = place.manager().register_custom_cache("shared", autosync=False)
    for round_ in range(5):
        for i in range(100):
            early[f"early-{round_}-{i}"] = i
        early.save()
        for i in range(100):
            late[f"late-{round_}-{i}"] = i
        late.mark_dirty()  # a whole rewrite, by a process that never read early's keys
        late.save()
        late.save()
    kept = saved(place, "shared") or {}
    assert len(kept) == 1000
    assert kept == {
        f"{who}-{round_}-{i}": i
        for who in ("early", "late")
        for round_ in range(5)
        for i in range(100)
    }


def test_on_one_key_the_last_acknowledged_save_wins_even_over_a_rewrite(place: Place) -> None:
    first = place.manager().register_custom_cache("shared", autosync=False)
    second = place.manager().register_custom_cache("shared", autosync=False)
    first["k"] = "first"
    first.save()
    second["k"] = "second"
    second.save()
    first.mark_dirty()  # rewrites every key first holds: its "k" is the later save
    first.save()
    assert saved(place, "shared") == {"k": "first"}
    second["k"] = "second, again"
    second.save()
    assert saved(place, "shared") == {"k": "second, again"}


# -- 3. threads ---------------------------------------------------------------------------------


def editing(cache: dict[object, object], threads: int = 2) -> Callable[[], None]:
    """Start ``threads`` threads that assign and delete keys of ``cache`` until stopped."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def edit(worker: int) -> None:
        i = 0
        try:
            while not stop.is_set():
                # Over a bounded set of keys, so the cache keeps its size.
                cache[(worker, i % 2_000)] = i
                if i % 3 == 0:
                    cache.pop((worker, i % 2_000), None)  # (a replacement may have removed it)
                i += 1
        except BaseException as error:  # reported by the test, not lost in the thread
            errors.append(error)

    running = [threading.Thread(target=edit, args=(n,), daemon=True) for n in range(threads)]
    for thread in running:
        thread.start()

    def stop_editing() -> None:
        stop.set()
        for thread in running:
            thread.join()
        assert errors == []

    return stop_editing


@pytest.fixture(params=["persistent", "autosync"])
def busy_cache(request: pytest.FixtureRequest, manager: CacheManager) -> Iterator[PersistentCache]:
    contents = {f"base-{i}": (i, str(i)) for i in range(50_000)}
    if request.param == "persistent":
        yield manager.register_custom_cache("busy", contents, autosync=False)
    else:
        yield manager.register_cache("busy", contents)


@pytest.mark.slow
@both_stores
@pytest.mark.parametrize("how", ["save", "mark_dirty", "refresh"])
def test_saves_while_threads_edit_never_raise_and_lose_nothing(
    manager: CacheManager, busy_cache: PersistentCache, how: str
) -> None:
    stop_editing = editing(busy_cache)
    try:
        for _ in range(5):
            if how == "mark_dirty":
                busy_cache.mark_dirty()
            if how == "refresh":
                busy_cache.refresh()
            else:
                busy_cache.save()
    finally:
        stop_editing()
    busy_cache.save()  # what the threads did after the last save above
    assert manager.store.load("busy") == dict(busy_cache)


class SlowToPickle:
    """A value whose pickling takes half a second: it keeps a background save's child busy."""

    def __reduce__(self) -> tuple[type, tuple[()]]:
        time.sleep(0.5)
        return (SlowToPickle, ())


@both_stores
def test_a_save_asked_for_while_a_child_writes_runs_after_it(manager: CacheManager) -> None:
    """Two saves of one cache never overlap: a delete is not undone by an older save's child.

    A thread's ``save()`` found no child save running, then waited for the cache's
    lock while another thread's edits started one; it used to write at once, beside
    the child, whose older value of ``k`` then landed after the delete.
    """
    cache = AutoSyncCache(
        "jobs", cache_manager=manager, async_save=True, time_checks=[TimeCount(3600, 1_500)]
    )
    cache["k"] = "saved"
    cache.save()
    wait_until(lambda: not cache.save_in_progress and cache.pending_edits == 0)

    asked = threading.Event()

    def save_from_another_thread() -> None:
        asked.set()
        cache.save()  # finds no child yet; waits for the lock held below

    with cache._lock:  # the lock every save of the cache plans under
        other = threading.Thread(target=save_from_another_thread)
        other.start()
        asked.wait()
        time.sleep(0.3)  # (it is now waiting for the lock)
        # 1,501 edits fire the burst rule: a child writes them, k = "new" among them.
        cache.update({**{i: i for i in range(1_500)}, "k": "new", "slow": SlowToPickle()})
        assert cache.save_in_progress
        del cache["k"]
    other.join()
    wait_until(lambda: not cache.save_in_progress and cache.pending_edits == 0, timeout=30)
    assert "k" not in manager.store.load("jobs")
    assert manager.store.load("jobs").keys() == cache.keys()


@both_stores
def test_a_save_replacing_the_saved_copy_while_threads_edit(manager: CacheManager) -> None:
    cache = manager.register_custom_cache("busy", autosync=False)
    stop_editing = editing(cache)
    try:
        for round_ in range(5):
            cache.contents = {f"base-{round_}-{i}": i for i in range(20_000)}  # a replacement
            cache.save()
    finally:
        stop_editing()
    cache.save()
    assert manager.store.load("busy") == dict(cache)


EXIT_WHILE_EDITING = """
import atexit, threading
cache = manager.register_cache("busy", {f"base-{i}": (i,) for i in range(50_000)})
cache.save()
started = threading.Event()
def edit(worker):
    for i in range(1_000_000):
        cache[f"{worker}-{i}"] = i
        started.set()
for worker in range(2):
    threading.Thread(target=edit, args=(worker,), daemon=True).start()
started.wait()
# Runs before CacheMan's exit save (atexit is last in, first out): what the cache holds
# then must all be saved, whatever the threads add while the save runs.
atexit.register(lambda: Path(sys.argv[2]).write_text(repr(list(cache))))
"""


def test_the_exit_save_while_threads_edit_never_raises_and_keeps_what_was_there(
    tmp_path: Path,
) -> None:
    shown = tmp_path / "keys"
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + EXIT_WHILE_EDITING, str(tmp_path), str(shown)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    manager = CacheManager("procs", tmp_path)
    try:
        kept = manager.store.load("busy") or {}
    finally:
        _registry.discard(manager)
    held = set(ast.literal_eval(shown.read_text()))
    assert len(held) > 50_000  # the threads had added keys
    assert held <= set(kept)


@pytest.mark.slow
@both_stores
def test_background_saves_while_threads_edit_never_fail(manager: CacheManager) -> None:
    cache = manager.register_custom_cache("busy", time_checks=[TimeCount(60, 5_000)])
    assert isinstance(cache, AutoSyncCache)
    stop_editing = editing(cache)
    try:
        # Every 5,000 edits the burst rule saves in a child; wait for a few of them.
        saver = cache._background
        start = saver.completed
        wait_until(lambda: saver.completed >= start + 3, timeout=60)
    finally:
        stop_editing()
    assert cache.last_save_error is None
    cache.save()
    assert manager.store.load("busy") == dict(cache)


def test_awaiting_a_child_save_waits_until_its_outcome_is_applied(
    manager: CacheManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A save (or refresh) awaits the child save in flight, then plans its own from where
    # that child left the journal: it must not start while the scheduler thread is still
    # applying the child's outcome (it once did, planning from a stale position).
    cache = manager.register_custom_cache("busy", time_checks=[TimeCount(60, 10**9)])
    assert isinstance(cache, AutoSyncCache)
    cache.save()
    cache.update({i: i for i in range(5_000)})  # too many keys to append in-process: a child
    applying, release = threading.Event(), threading.Event()
    applied: list[bool] = []
    landed = PersistentCache._landed

    def slow_landed(self: PersistentCache, written: object, **kwargs: bool) -> None:
        applying.set()
        release.wait()
        landed(self, written, **kwargs)
        applied.append(True)

    monkeypatch.setattr(PersistentCache, "_landed", slow_landed)
    cache._background.request("caller")
    assert applying.wait(60)  # the scheduler thread saw the child end and is applying it
    seen: list[bool] = []
    waiter = threading.Thread(
        target=lambda: (cache._await_pending_save(), seen.append(bool(applied)))
    )
    waiter.start()
    waiter.join(timeout=1)  # (a waiter that did not wait has long returned)
    release.set()
    waiter.join()
    assert seen == [True]


class _PausingKey(tuple[str, int]):
    """A key whose hashing pauses one thread's edit between its store and its record."""

    pause_in: threading.Thread | None = None
    stored = threading.Event()
    go = threading.Event()
    calls = 0

    def __hash__(self) -> int:
        cls = _PausingKey
        if threading.current_thread() is cls.pause_in:
            cls.calls += 1
            if cls.calls == 2:  # 1: the dict store; 2: the key's record (set.add)
                cls.stored.set()
                assert cls.go.wait(60)
        return tuple.__hash__(self)


def _in_drain(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "_drain":
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize("kind", ["persistent", "autosync"])
def test_refresh_never_puts_a_saved_value_over_a_write_in_progress(place: Place, kind: str) -> None:
    # A thread's c[k] = v stores, then records k; a refresh taking in another
    # process's value of k in between must not replace the thread's (it once did).
    manager = place.manager()
    if kind == "persistent":
        cache = manager.register_custom_cache("shared", autosync=False)
    else:
        cache = manager.register_custom_cache("shared", time_checks=[TimeCount(60, 10**9)])
    cache["other"] = 0
    cache.save()
    run("manager.register_cache('shared')[('k', 1)] = 'theirs'", place)  # saved at its exit
    key = _PausingKey(("k", 1))
    _PausingKey.stored, _PausingKey.go, _PausingKey.calls = threading.Event(), threading.Event(), 0
    writer = threading.Thread(target=cache.__setitem__, args=(key, "mine"))
    _PausingKey.pause_in = writer
    writer.start()
    assert _PausingKey.stored.wait(60)  # "mine" is stored, its key not yet recorded
    refresher = threading.Thread(target=cache.refresh)
    refresher.start()
    wait_until(lambda: _in_drain(refresher) or not refresher.is_alive())
    _PausingKey.go.set()
    writer.join()
    refresher.join()
    assert cache[("k", 1)] == "mine"
    cache.save()
    assert saved(place, "shared") == {"other": 0, ("k", 1): "mine"}


def test_a_refresh_after_clear_does_not_take_back_what_the_clear_removed(place: Place) -> None:
    # The clear, refused as a blank write, is still to replace the saved copy: keys
    # another process saved before it must not come back through a refresh (the model
    # test saw a deleted key come back this way).
    cache = place.manager().register_custom_cache(
        "shared", autosync=False, save_on_blank_cache=False
    )
    cache["a"] = 1
    cache.save()
    run("manager.register_cache('shared')['b'] = 2", place)  # saved at its exit
    cache.clear()
    cache.refresh()
    assert dict(cache) == {}
    cache["c"] = 3
    cache.save()
    assert saved(place, "shared") == {"c": 3}


def test_a_clear_racing_with_a_refresh_is_not_undone_by_it(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another thread clears the cache after the refresh saved and before it takes in
    # what others saved: those keys were saved before the clear, which must win
    # (the model test saw a key deleted by a clear come back this way).
    manager = place.manager()
    cache = manager.register_custom_cache("shared", autosync=False)
    cache["a"] = 1
    cache.save()
    run("manager.register_cache('shared')['b'] = 2", place)  # saved at its exit
    store = manager.store
    cleared: list[bool] = []

    def then_clear(read: Callable[..., object]) -> Callable[..., object]:
        def reading(*args: object) -> object:
            news = read(*args)
            if not cleared:
                cache.clear()  # as a thread would, right then
                cleared.append(True)
            return news

        return reading

    # What the refresh reads of the others' changes: the records since its position
    # (pickle store), or the whole saved copy (Redis, which keeps no positions).
    for method in ("changes_since", "load_tracked"):
        monkeypatch.setattr(store, method, then_clear(getattr(store, method)))
    cache.refresh()
    monkeypatch.undo()
    assert cleared
    assert dict(cache) == {}
    cache["c"] = 3
    cache.save()
    assert saved(place, "shared") == {"c": 3}


def test_a_refresh_with_nothing_saved_keeps_what_threads_wrote_meanwhile(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing saved yet, and a thread writes after the refresh's save found nothing to
    # write: the refresh must not replace the contents with an empty build (the model
    # test lost a whole round of threads' writes this way).
    manager = place.manager()
    cache = manager.register_custom_cache("fresh", autosync=False)
    store = manager.store
    wrote: list[bool] = []

    def then_write(read: Callable[..., object]) -> Callable[..., object]:
        def reading(*args: object) -> object:
            news = read(*args)
            if not wrote:
                cache["x"] = [1]  # as a thread would, right then
                wrote.append(True)
            return news

        return reading

    for method in ("changes_since", "load_tracked", "load"):
        monkeypatch.setattr(store, method, then_write(getattr(store, method)))
    cache.refresh()
    monkeypatch.undo()
    assert wrote
    assert dict(cache) == {"x": [1]}
    cache.save()
    assert saved(place, "fresh") == {"x": [1]}


def test_mark_dirty_then_save_writes_the_keys_deleted_too(place: Place) -> None:
    # mark_dirty() rewrites every key held, over what others saved meanwhile: a key this
    # process deleted after another process saved it must stay deleted (the model test
    # saw it come back).
    manager = place.manager()
    cache = manager.register_custom_cache("shared", autosync=False)
    cache["k"], cache["other"] = 1, 0
    cache.save()
    run("c = manager.register_cache('shared'); c['k'] = 2", place)  # saved at its exit
    del cache["k"]
    cache.mark_dirty()
    cache.save()
    assert saved(place, "shared") == {"other": 0}
