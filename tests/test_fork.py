"""Child-process saves with real processes and signals: kills, failures, exit, zombies."""

from __future__ import annotations

import logging
import os
import signal
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from helpers import run_python, wait_until

from cacheman import AutoSyncCache, CacheManager, TimeCount, cachewrap
from cacheman._process import background as _background


class SlowToPickle:
    """A value whose pickling takes long: the child is still writing when we kill it."""

    def __reduce__(self) -> tuple[type[SlowToPickle], tuple[()]]:
        time.sleep(30)
        return (SlowToPickle, ())


def temporaries(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [path for path in directory.iterdir() if ".tmp" in path.name]


def new_children(before: set[int]) -> list[psutil.Process]:
    return [child for child in psutil.Process().children() if child.pid not in before]


def test_a_child_killed_mid_save_warns_keeps_edits_and_leaves_no_temp_file(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    # The first retry comes RETRY_FIRST (1 s) after the failure: time enough to
    # check the state in between and to remove the slow value.
    before = {child.pid for child in psutil.Process().children()}
    cache = manager.register_custom_cache("killed", time_checks=[TimeCount(60, 3)])
    assert isinstance(cache, AutoSyncCache)
    cache.update(a=1, b=2, slow=SlowToPickle())  # the third edit forks the child
    (child,) = new_children(before)
    wait_until(lambda: temporaries(manager.cache_directory))  # it is writing
    with caplog.at_level(logging.WARNING, logger="cacheman"):
        os.kill(child.pid, signal.SIGKILL)
        wait_until(lambda: cache.last_save_error is not None)
    assert "SIGKILL" in (cache.last_save_error or "")
    assert "background save failed" in caplog.text
    assert cache.pending_edits == 3
    assert not temporaries(manager.cache_directory), "the parent removed the child's temp file"
    assert not manager.store.exists("killed")

    del cache["slow"]  # the retry (after its back-off) now succeeds
    wait_until(lambda: cache.pending_edits == 0 and cache.last_save_error is None)
    assert manager.store.load("killed") == {"a": 1, "b": 2}
    assert not temporaries(manager.cache_directory)
    assert not new_children(before)


def test_a_child_past_async_timeout_is_killed(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    before = {child.pid for child in psutil.Process().children()}
    cache = manager.register_custom_cache(
        "timeout", time_checks=[TimeCount(60, 1)], async_timeout=0.5
    )
    with caplog.at_level(logging.WARNING, logger="cacheman"):
        cache["slow"] = SlowToPickle()
        wait_until(lambda: cache.last_save_error is not None, timeout=5)
    assert "async_timeout" in (cache.last_save_error or "")
    assert "async_timeout" in caplog.text
    assert not new_children(before), "killed and reaped"
    assert not temporaries(manager.cache_directory)
    assert cache.pending_edits == 1
    cache.clear()  # drop the value that cannot be pickled in time, or exit would wait too


def test_an_unwritable_directory_shows_failures_retries_and_loses_nothing(
    manager: CacheManager, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_background, "RETRY_FIRST", 0.2)
    # Every save goes to a child here (small journal appends would run in-process).
    monkeypatch.setattr(cachewrap, "LIGHT_APPEND_KEYS", 0)
    cache = manager.register_custom_cache(
        "blocked", time_checks=[TimeCount(0.2, 1000), TimeCount(0.4, 1)], time_bucket_size=0.05
    )
    assert isinstance(cache, AutoSyncCache)
    cache["first"] = 1
    wait_until(lambda: cache.pending_edits == 0)
    directory = manager.cache_directory
    # This test is about the fallback from failing child saves: stop listening to the
    # store's events first, or the watcher, finding the events log gone with the
    # directory, runs its full check and makes the saves fail before they fork.
    # (What the watcher does then is tested in test_file_events.py.)
    assert manager._unsubscribe is not None
    manager._unsubscribe()
    # Tests run as root, for whom chmod blocks nothing: put a regular file where
    # the directory was, so every write fails for real.
    aside = directory.with_name(directory.name + ".aside")
    directory.rename(aside)
    directory.write_text("not a directory")
    try:
        with caplog.at_level(logging.WARNING, logger="cacheman"):
            for i in range(20):
                cache[i] = i
            wait_until(lambda: cache._background.failures >= 3)
        assert cache.last_save_error is not None
        assert cache.pending_edits == 20
        assert "background save failed" in caplog.text
        assert "saving in-process" in caplog.text  # after two failed child saves
    finally:
        directory.unlink()
        aside.rename(directory)
    wait_until(lambda: cache.last_save_error is None and cache.pending_edits == 0)
    fresh = CacheManager(manager.name, directory.parent)  # what the next run would see
    assert fresh.store.load("blocked") == {"first": 1, **{i: i for i in range(20)}}


@pytest.mark.slow
def test_no_zombies_after_hundreds_of_saves(manager: CacheManager) -> None:
    before = {child.pid for child in psutil.Process().children()}
    cache = manager.register_custom_cache("many", time_checks=[TimeCount(60, 1)])
    assert isinstance(cache, AutoSyncCache)
    for i in range(300):
        cache[i] = i
        wait_until(lambda: not cache.save_in_progress)
    wait_until(lambda: cache.pending_edits == 0)
    assert cache._background.completed >= 150  # edits during a save coalesce
    assert not new_children(before), "every child was reaped"
    assert manager.store.load("many") == {i: i for i in range(300)}


WARNING_SCRIPT = """
import sys, threading, time
from cacheman import CacheManager, TimeCount
stop = threading.Event()
threading.Thread(target=stop.wait, daemon=True).start()  # a second thread of the user's
manager = CacheManager("warn", sys.argv[1])
cache = manager.register_custom_cache("w", time_checks=[TimeCount(60, 10)])
for round in range(5):
    for i in range(10):
        cache[(round, i)] = i
    while cache.save_in_progress:
        time.sleep(0.01)
assert cache.pending_edits == 0 and cache.last_save_error is None
"""


def test_no_deprecation_warning_reaches_the_user(tmp_path: Path) -> None:
    done = run_python("-W", "error", "-c", WARNING_SCRIPT, str(tmp_path), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "DeprecationWarning" not in done.stderr


def test_fallback_in_process_when_the_platform_cannot_fork(manager: CacheManager) -> None:
    script = textwrap.dedent(
        """
        import os, sys, logging
        logging.basicConfig(level=logging.WARNING)
        del os.fork
        from cacheman import CacheManager, TimeCount
        manager = CacheManager("nofork", sys.argv[1])
        cache = manager.register_custom_cache("c", time_checks=[TimeCount(60, 5)])
        for i in range(5):
            cache[i] = i
        import time
        deadline = time.monotonic() + 10
        while cache.pending_edits and time.monotonic() < deadline:
            time.sleep(0.01)
        print("pending", cache.pending_edits)
        """
    )
    done = run_python("-c", script, str(manager.cache_directory), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pending 0" in done.stdout
    assert "cannot fork" in done.stderr
    assert (manager.cache_directory / "nofork" / "c.pkl").exists()
