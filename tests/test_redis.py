"""The Redis store against a real redis-server: contract, layout, tampering, events, forks, locks.

The store contract tests run on both stores (``store_manager``); the rest are
about what only Redis has.  Each test gets a Redis database of its own.
"""

from __future__ import annotations

import gc
import hmac
import json
import logging
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from helpers import run_python, wait_until

from cacheman import (
    CacheManager,
    InvalidCacheNameError,
    NonPersistentCache,
    PersistentCache,
    RedisStore,
    SignatureMismatchError,
    UnpicklableValueError,
)
from cacheman._stores.redis import REDIS_URL_ENV

# -- the store contract, on both stores -------------------------------------------------------


def test_save_load_exists_delete(store_manager: CacheManager) -> None:
    store = store_manager.store
    assert store.load("numbers") is None
    assert not store.exists("numbers")
    contents = {1: "one", ("a", "a"): [1, 2], "nested": {"x": None}, b"raw": 2.5}
    store.save("numbers", contents)
    assert store.exists("numbers")
    assert store.load("numbers") == contents
    store.save("numbers", {"only": 1})  # a full save replaces, it does not merge
    assert store.load("numbers") == {"only": 1}
    store.delete("numbers")
    assert store.load("numbers") is None
    assert not store.exists("numbers")
    store.delete("numbers")  # deleting nothing is fine


def test_an_empty_saved_cache_exists_and_loads_empty(store_manager: CacheManager) -> None:
    store = store_manager.store
    store.save("empty", {"a": 1})
    store.save("empty", {})
    assert store.exists("empty")
    assert store.load("empty") == {}


def test_names_metadata_and_edges(store_manager: CacheManager) -> None:
    store = store_manager.store
    store.save("b", {1: 1})
    store.update_meta("a", generation="0123456789abcdef:1")
    assert store.names() == ["a", "b"]
    meta = store.update_meta("a", parents={"p": "x:1"}, fingerprint="f")
    assert meta["generation"] == "0123456789abcdef:1"
    assert meta["parents"] == {"p": "x:1"}
    assert store.update_meta("a", fingerprint=None).get("fingerprint") is None
    assert store.read_meta("a") == store.update_meta("a")
    assert store.read_meta("never") is None
    store.add_edges([("p", "a"), ("a", "b"), ("p", "a")])
    store.add_edges([("b", "c")])
    assert store.read_edges() == [("p", "a"), ("a", "b"), ("b", "c")]
    store.remove_edges("b")
    assert store.read_edges() == [("p", "a")]
    store.delete("a")
    assert store.read_meta("a") is None
    assert store.names() == ["b"]


def test_unpicklable_value_leaves_saved_copy(store_manager: CacheManager) -> None:
    store = store_manager.store
    store.save("kept", {"a": 1})
    with pytest.raises(UnpicklableValueError, match="'kept'"):
        store.save("kept", {"a": 2, "lock": threading.Lock()})
    assert store.load("kept") == {"a": 1}


# -- layout ----------------------------------------------------------------------------------------


@pytest.fixture
def store(redis_url: str) -> Any:
    store = RedisStore(redis_url, manager="m")
    yield store
    store.close()


@pytest.fixture
def raw(redis_url: str) -> Any:
    """Another client of the same database: what anyone with access to the Redis sees."""
    import redis  # here, not at the top: without redis-py the module still collects (and skips)

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def scan_hash(raw: Any, key: str) -> dict[bytes, bytes]:
    return dict(raw.hscan_iter(key, count=100))


def test_layout_one_field_per_entry_and_json_meta(store: RedisStore, raw: Any) -> None:
    contents = {f"k{i}": i for i in range(250)}
    store.save("squares", contents)
    store.update_meta("squares", generation="g:1", parents={"root": "r:2"})
    fields = scan_hash(raw, "cacheman:m:squares:data")
    assert len(fields) == 250
    assert {pickle.loads(field) for field in fields} == set(contents)
    assert fields[pickle.dumps("k7", 5)] == pickle.dumps(7, 5)  # unsigned: a bare pickle
    meta = raw.hgetall("cacheman:m:squares:meta")
    assert json.loads(meta[b"generation"]) == "g:1"
    assert json.loads(meta[b"parents"]) == {"root": "r:2"}
    assert json.loads(meta[b"format"]) == 1
    assert abs(json.loads(meta[b"saved_at"]) - time.time()) < 60
    assert raw.ttl("cacheman:m:squares:data") == -1  # the temporary hash's TTL did not stick
    assert sorted(raw.scan_iter("cacheman:m:*")) == [
        b"cacheman:m:squares:data",
        b"cacheman:m:squares:meta",
    ]  # no temporary hash left behind
    store.add_edges([("root", "squares")])
    assert raw.type("cacheman:m:edges") == b"zset"


def test_equal_keys_find_their_field_whatever_objects_hold_them(store: RedisStore) -> None:
    # Two equal tuples, one of them holding one string object twice: pickle.dumps
    # would write them differently (memo), and HDEL would miss the field.
    first = ("word", "word")
    second = tuple("".join(["wo", "rd"]) for _ in range(2))
    assert first == second
    assert first[0] is first[1]
    assert second[0] is not second[1]
    store.save("tuples", {first: 1})
    store.append("tuples", [("set", second, 2)])
    assert store.load("tuples") == {first: 2}
    store.append("tuples", [("del", second, None)])
    assert store.load("tuples") == {}


def test_append_maps_onto_hset_hdel_and_clear(store: RedisStore, raw: Any) -> None:
    store.save("log", {"a": 1, "b": 2})
    result = store.append("log", [("set", "c", 3), ("del", "a", None), ("set", "b", 20)])
    assert result == (None, True)
    assert store.load_tracked("log") == ({"b": 20, "c": 3}, None)
    assert store.changes_since("log", None) is None
    assert raw.hlen("cacheman:m:log:data") == 2
    store.append("log", [("set", "x", 1), ("clear", None, None), ("set", "y", 2)])
    assert store.load("log") == {"y": 2}
    store.append("log", [("clear", None, None)])
    assert store.load("log") == {}  # cleared, not "never saved"
    with pytest.raises(ValueError, match="unknown change"):
        store.append("log", [("frobnicate", "k", 1)])
    assert store.load("log") == {}


def test_appends_from_two_processes_are_all_kept(redis_url: str) -> None:
    code = """
        import sys
        from cacheman import RedisStore
        store = RedisStore(sys.argv[1], manager="m")
        for i in range(200):
            store.append("shared", [("set", f"{sys.argv[2]}-{i}", i)])
    """
    workers = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), redis_url, tag])
        for tag in ("x", "y", "z")
    ]
    assert [worker.wait(60) for worker in workers] == [0, 0, 0]
    loaded = RedisStore(redis_url, manager="m").load("shared")
    assert loaded is not None
    assert len(loaded) == 600


def test_save_with_pending_changes_applies_them_on_a_copy(store: RedisStore) -> None:
    contents = {"a": 1, "b": 2}
    result = store.save("p", contents, since=None, pending=[("set", "c", 3), ("del", "a", None)])
    assert result == (None, False)
    assert store.load("p") == {"b": 2, "c": 3}
    assert contents == {"a": 1, "b": 2}


@pytest.mark.slow
def test_load_during_full_saves_never_mixes_two_snapshots(store: RedisStore) -> None:
    old = {("old", i): i for i in range(30_000)}
    new = {("new", i): i for i in range(30_000)}
    store.save("flip", old)
    stop = threading.Event()

    def keep_saving() -> None:
        while not stop.is_set():
            store.save("flip", new)
            store.save("flip", old)

    writer = threading.Thread(target=keep_saving)
    writer.start()
    try:
        for _ in range(5):
            assert store.load("flip") in (old, new)
    finally:
        stop.set()
        writer.join()


def test_names_scan_only_this_manager_and_escape_patterns(redis_url: str) -> None:
    mine = RedisStore(redis_url, manager="m*[x]")
    other = RedisStore(redis_url, manager="mm[x]")
    mine.save("a:b", {1: 1})
    other.save("c", {1: 1})
    assert mine.names() == ["a:b"]
    assert other.names() == ["c"]
    with pytest.raises(InvalidCacheNameError, match="':'"):
        RedisStore(redis_url, manager="has:colon")


def test_an_unbound_store_says_how_to_bind_it(redis_url: str) -> None:
    with pytest.raises(TypeError, match="not bound to a manager"):
        RedisStore(redis_url).load("x")


# -- damage and tampering -----------------------------------------------------------------------


class Planted:
    """Unpickling this runs code: it creates the marker file named in its state."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_value_without_the_right_hmac_is_refused_before_unpickling(
    redis_url: str, raw: Any, tmp_path: Path
) -> None:
    signed = RedisStore(redis_url, manager="m", signing_key=b"secret")
    signed.save("safe", {"a": 1})
    assert signed.load("safe") == {"a": 1}
    marker = tmp_path / "pickle-ran"
    planted = pickle.dumps(Planted(marker), 5)
    data = "cacheman:m:safe:data"
    good = raw.hget(data, pickle.dumps("a", 5))

    attempts = [
        planted,  # unsigned
        b"\x01" + bytes(32) + planted,  # a made-up signature
        good[:33] + planted,  # a real signature, of another value
    ]
    for stored in attempts:
        raw.hset(data, pickle.dumps("a", 5), stored)
        with pytest.raises(SignatureMismatchError, match=r"'safe'.*nothing was unpickled"):
            signed.load("safe")
        assert not marker.exists()
    # A signed value moved under another field (key) is refused too: the HMAC covers the field.
    raw.hdel(data, pickle.dumps("a", 5))
    raw.hset(data, pickle.dumps(Planted(marker), 5), good)
    with pytest.raises(SignatureMismatchError):
        signed.load("safe")
    # ... and so is a signed hash renamed into another cache's place.
    signed.save("other", {"a": 1})
    raw.rename("cacheman:m:other:data", data)
    with pytest.raises(SignatureMismatchError):
        signed.load("safe")
    assert not marker.exists()
    with pytest.raises(SignatureMismatchError):
        RedisStore(redis_url, manager="m", signing_key=b"another key").load("safe")


def test_signed_value_layout_is_standard_hmac_sha256(redis_url: str, raw: Any) -> None:
    RedisStore(redis_url, manager="m", signing_key=b"secret").save("s", {"a": [1]})
    field, stored = pickle.dumps("a", 5), raw.hget("cacheman:m:s:data", pickle.dumps("a", 5))
    payload = pickle.dumps([1], 5)
    key_name = b"cacheman:m:s:data"
    message = struct.pack("<I", len(key_name)) + key_name + struct.pack("<I", len(field))
    expected = hmac.new(b"secret", message + field + payload, "sha256").digest()
    assert stored == b"\x01" + expected + payload


def test_a_reader_without_key_reads_signed_entries(redis_url: str) -> None:
    RedisStore(redis_url, manager="m", signing_key=b"secret").save("s", {"a": 1})
    RedisStore(redis_url, manager="m").append("s", [("set", "b", 2)])
    assert RedisStore(redis_url, manager="m").load("s") == {"a": 1, "b": 2}


def test_signed_manager_round_trip(redis_url: str, tmp_path: Path) -> None:
    manager = CacheManager("signed", tmp_path, signing_key=b"k", store=RedisStore(redis_url))
    cache = PersistentCache("c", cache_manager=manager)
    cache.update({"x": [1, 2]})
    cache.save()
    cache.load()
    assert cache == {"x": [1, 2]}
    manager.deregister_all_caches()


def test_damaged_entries_are_kept_aside_and_the_cache_rebuilt(
    store: RedisStore, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store.save("hurt", {"a": 1})
    raw.hset("cacheman:m:hurt:data", pickle.dumps("b", 5), b"not a pickle")
    caplog.set_level(logging.WARNING, logger="cacheman")
    assert store.load("hurt") is None
    assert "'hurt'" in caplog.text
    assert "damaged" in caplog.text
    kept = list(raw.scan_iter("cacheman:m:hurt:corrupt:*"))
    assert len(kept) == 1
    assert raw.hlen(kept[0]) == 2  # the bytes are kept, nothing is deleted silently
    assert not store.exists("hurt")
    raw.set("cacheman:m:wrong:data", b"a string, not a hash")
    assert store.load("wrong") is None


# -- caches on Redis ----------------------------------------------------------------------------


def test_background_save_in_a_forked_child_uses_its_own_connection(
    redis_url: str, tmp_path: Path
) -> None:
    manager = CacheManager("forking", tmp_path, store=RedisStore(redis_url))
    cache = PersistentCache("bg", cache_manager=manager, async_save=True)
    cache.update({i: i * i for i in range(1000)})
    cache.save()  # forks a child that writes to Redis
    cache.load()  # waits for it, then reads what it wrote
    assert cache == {i: i * i for i in range(1000)}
    assert cache.last_save_error is None
    manager.store.save("after", {"parent": "still connected"})
    assert manager.store.load("after") == {"parent": "still connected"}
    manager.deregister_all_caches()


def test_redis_url_environment_variable_keeps_caches_in_redis(
    redis_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, REDIS_URL_ENV: redis_url}
    write = """
        from cacheman import cacher
        cache = cacher.get_cache_manager("env").register_cache("squares")
        cache.update({n: n * n for n in range(5)})
    """
    read = """
        from cacheman import cacher
        manager = cacher.get_cache_manager("env")
        print(type(manager.store).__name__, sorted(manager.register_cache("squares").items()))
    """
    for code in (write, read):
        done = run_python("-c", textwrap.dedent(code), cache_dir=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"RedisStore {[(n, n * n) for n in range(5)]}"
    assert not list(tmp_path.rglob("*.pkl"))


def test_import_works_without_redis_and_use_names_the_extra() -> None:
    code = """
        import sys
        sys.modules["redis"] = None  # as if redis-py were not installed
        from cacheman import RedisStore, CacheManager
        CacheManager("fine")  # the default store needs no redis
        try:
            RedisStore("redis://127.0.0.1:1")
        except ImportError as error:
            print(error)
    """
    done = run_python("-c", textwrap.dedent(code))
    assert done.returncode == 0, done.stderr
    assert "pip install 'cacheman[redis]'" in done.stdout


# -- invalidation events ---------------------------------------------------------------------------

LISTENER = """
import sys, time
from cacheman import RedisStore
store = RedisStore(sys.argv[1], manager="m")
store.subscribe(lambda name, generation: print(name, generation, time.time(), flush=True))
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_generation_change_reaches_another_process(store: RedisStore) -> None:
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, store.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        store.update_meta("root", parents={})  # no generation change: no event
        sent = time.time()
        store.update_meta("root", generation="abc:2")
        name, generation, received = listener.stdout.readline().split()
        assert (name, generation) == ("root", "abc:2")
        assert float(received) - sent < 5.0  # the bound; the benchmark measures the latency
        store.update_meta("root", generation=None)
        assert listener.stdout.readline().split()[:2] == ["root", "None"]
    finally:
        listener.communicate("\n", timeout=30)


def test_reconnect_after_client_kill_says_anything_may_be_stale(
    store: RedisStore, raw: Any
) -> None:
    events: list[tuple[str | None, str | None]] = []
    store.subscribe(lambda name, generation: events.append((name, generation)))
    store.update_meta("a", generation="g:1")
    wait_until(lambda: ("a", "g:1") in events)
    raw.client_kill_filter(_type="pubsub")
    wait_until(lambda: (None, None) in events)
    store.update_meta("a", generation="g:2")  # and it listens again
    wait_until(lambda: ("a", "g:2") in events)


def test_a_raising_callback_is_logged_and_the_others_still_run(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str | None] = []

    def broken(name: str | None, generation: str | None) -> None:
        raise RuntimeError("callback bug")

    store.subscribe(broken)
    store.subscribe(lambda name, generation: seen.append(name))
    store.update_meta("a", generation="g:1")
    wait_until(lambda: seen == ["a"])
    assert "callback bug" in caplog.text
    store.unsubscribe(broken)


def test_forked_child_makes_its_own_pool_and_listens_again(store: RedisStore, raw: Any) -> None:
    events: list[tuple[str | None, str | None]] = []
    store.subscribe(lambda name, generation: events.append((name, generation)))
    store.save("f", {"from": "parent"})
    parent_id = store._client().client_id()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its connection and whether events reach it
        try:
            os.close(read_fd)
            child_id = store._client().client_id()
            loaded = store.load("f")
            wait_until(lambda: (None, None) in events)  # the new listener: "maybe stale"
            store.update_meta("f", generation="child:1")
            wait_until(lambda: ("f", "child:1") in events)
            os.write(write_fd, json.dumps([child_id, loaded]).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        reported = pipe.read()
    os.waitpid(pid, 0)
    child_id, loaded = json.loads(reported)
    assert child_id != parent_id
    assert loaded == {"from": "parent"}
    assert store._client().client_id() == parent_id  # the parent's connection still works
    wait_until(lambda: ("f", "child:1") in events)  # the parent heard the child's event


# -- the builder lock ------------------------------------------------------------------------

CONTENDER = """
import sys
from cacheman import RedisStore
store = RedisStore(sys.argv[1], manager="m")
try:
    with store.builder_lock("built", 10, wait=float(sys.argv[2])):
        print("acquired")
except TimeoutError as error:
    print("refused:", error)
"""


def test_builder_lock_excludes_a_second_process(store: RedisStore) -> None:
    with store.builder_lock("built", 30):
        done = run_python("-c", CONTENDER, store.url, "0.3")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("refused:")
        assert "'built'" in done.stdout
    done = run_python("-c", CONTENDER, store.url, "5")
    assert done.stdout.strip() == "acquired"


def test_builder_lock_waits_for_the_holder(store: RedisStore) -> None:
    contender = subprocess.Popen(
        [sys.executable, "-c", CONTENDER, store.url, "20"], stdout=subprocess.PIPE, text=True
    )
    with store.builder_lock("built", 30):
        time.sleep(0.5)  # the contender waits meanwhile
    assert contender.communicate(timeout=30)[0].strip() == "acquired"


def test_builder_lock_releases_only_its_own_token(
    store: RedisStore, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cacheman")
    lock = "cacheman:m:slow:lock"
    with store.builder_lock("slow", 0.2) as token:
        assert raw.get(lock) == token.encode()
        time.sleep(0.4)  # past its timeout: the lock freed itself ...
        assert raw.set(lock, "next-builder", nx=True)  # ... and another builder took it
    assert raw.get(lock) == b"next-builder"  # leaving our block did not free theirs
    assert "expired" in caplog.text


# -- the manager on Redis: events reset caches, one builder at a time --------------------------

on_redis = pytest.mark.parametrize("manager", ["redis"], indirect=True)

INVALIDATE_ROOT = """
import sys
from cacheman import CacheManager, RedisStore
manager = CacheManager(sys.argv[2], store=RedisStore(sys.argv[1]))
root = manager.register_custom_cache("root", autosync=False)
root["v"] = 2
root.save()
root.invalidate()
"""


@on_redis
def test_another_process_invalidating_a_parent_resets_the_derived_cache_here(
    manager: CacheManager, redis_url: str
) -> None:
    root = manager.register_custom_cache("root", {"v": 1}, autosync=False)
    root.save()
    built: list[object] = []
    child = manager.register_custom_cache(
        "child",
        builder=lambda name: built.append(root["v"]) or {"from": root["v"]},
        autosync=False,
    )
    manager.register_dependent_cache("root", "child")
    assert child == {"from": 1}
    child["extra"] = "computed from 1"
    done = run_python("-c", INVALIDATE_ROOT, redis_url, manager.name)
    assert done.returncode == 0, done.stderr
    # No call here: the event thread reloads the parent and resets the child.
    wait_until(lambda: child == {"from": 2}, timeout=20)
    assert root == {"v": 2}
    # The other process deleted the child it never registered before announcing the
    # new generation: the rebuild here, saved under the builder lock, stays.
    wait_until(lambda: manager.store.load("child") == {"from": 2}, timeout=20)
    assert built == [1, 2]


@on_redis
def test_this_process_own_events_do_not_reset_twice(manager: CacheManager, redis_url: str) -> None:
    built: list[str] = []
    root = manager.register_custom_cache("root", {"v": 1}, autosync=False)
    child = manager.register_custom_cache(
        "child", builder=lambda name: built.append(name) or {"b": 1}, autosync=False
    )
    manager.register_dependent_cache("root", "child")
    root.save()
    built.clear()
    seen: list[str | None] = []
    manager.store.subscribe(lambda name, generation: seen.append(name))  # type: ignore[attr-defined]
    root.invalidate()
    assert built == ["child"]
    # Events arrive in order: once a later one is seen, the manager has handled ours.
    RedisStore(redis_url, manager=manager.name).update_meta("unrelated", generation="u:1")
    wait_until(lambda: "unrelated" in seen)
    assert built == ["child"]
    assert child == {"b": 1}


@on_redis
def test_a_lost_event_connection_makes_the_next_save_reload(
    manager: CacheManager, redis_url: str, raw: Any
) -> None:
    cache = manager.register_custom_cache("c", {"k": 1, "mine": 0}, autosync=False)
    cache.save()
    events: list[tuple[str | None, str | None]] = []
    manager.store.subscribe(lambda *event: events.append(event))  # type: ignore[attr-defined]
    raw.client_kill_filter(_type="pubsub")
    wait_until(lambda: (None, None) in events, timeout=20)
    # Meanwhile another process changed the cache (its event would have been missed).
    RedisStore(redis_url, manager=manager.name).append("c", [("set", "k", 2)])
    assert cache["k"] == 1  # reads are the dict's own: they cannot notice
    cache["mine"] = 1
    cache.save()  # the next save writes this process's change, then reloads
    assert cache == {"k": 2, "mine": 1}
    assert manager.store.load("c") == {"k": 2, "mine": 1}


SLOW_BUILD = """
import sys, time
from cacheman import CacheManager, RedisStore
manager = CacheManager(sys.argv[2], store=RedisStore(sys.argv[1]))
def build(name):
    with open(sys.argv[3], "a") as runs:
        runs.write("x")
    time.sleep(1.5)
    return {"built": True}
cache = manager.register_custom_cache("slow", builder=build, autosync=False)
print(dict(cache))
"""


def test_two_processes_registering_a_slow_cache_build_it_once(
    redis_url: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    name = f"build-{os.getpid()}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SLOW_BUILD, redis_url, name, str(runs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert out.strip() == "{'built': True}"
    assert runs.read_text() == "x", "the builder ran in one process only"


@on_redis
def test_two_processes_appending_keep_the_union_even_after_mark_dirty(
    manager: CacheManager, redis_url: str
) -> None:
    cache = manager.register_custom_cache("shared", {"a": [1]}, autosync=False)
    cache.save()
    other = (
        "import sys\nfrom cacheman import CacheManager, RedisStore\n"
        "m = CacheManager(sys.argv[2], store=RedisStore(sys.argv[1]))\n"
        "c = m.register_custom_cache('shared', autosync=False)\nc['b'] = 2\nc.save()\n"
    )
    done = run_python("-c", other, redis_url, manager.name)
    assert done.returncode == 0, done.stderr
    cache["a"].append(10)
    cache.mark_dirty()
    cache.save()  # every key of this process, but no compaction: theirs stays
    assert manager.store.load("shared") == {"a": [1, 10], "b": 2}


def test_the_event_subscription_does_not_keep_a_manager_alive(redis_url: str) -> None:
    store = RedisStore(redis_url)
    manager = CacheManager("dropped", store=store)
    NonPersistentCache("c", cache_manager=manager)
    bound = manager.store
    assert bound._callbacks, "registering a cache subscribed the manager"  # type: ignore[attr-defined]
    manager.deregister_all_caches()
    # A program that forgot a manager entirely gets it collected, subscription or not.
    reference = weakref.ref(manager)
    del manager
    gc.collect()
    assert reference() is None
    assert not bound._callbacks  # type: ignore[attr-defined]  # and it unsubscribed
    bound.close()  # type: ignore[attr-defined]


def test_a_manager_collected_by_a_thread_holding_the_callbacks_lock_unsubscribes(
    redis_url: str,
) -> None:
    """The listener thread holds the lock while it copies the callbacks: a garbage
    collection there runs a dropped manager's finalizer, which unsubscribes."""
    manager = CacheManager("dropped_locked", store=RedisStore(redis_url))
    NonPersistentCache("c", cache_manager=manager)
    bound = manager.store
    manager.deregister_all_caches()
    reference, held = weakref.ref(manager), [manager]
    del manager
    finished = threading.Event()

    def collect_holding_the_lock() -> None:
        with bound._callbacks_lock:  # type: ignore[attr-defined]
            held.clear()
            gc.collect()
        finished.set()

    threading.Thread(target=collect_holding_the_lock, daemon=True).start()
    assert finished.wait(10), "the finalizer waited for a lock its own thread held"
    assert reference() is None
    assert not bound._callbacks  # type: ignore[attr-defined]
    bound.close()  # type: ignore[attr-defined]


@on_redis
def test_an_event_about_a_cache_busy_saving_never_holds_up_the_listener(
    manager: CacheManager, redis_url: str
) -> None:
    backing = {"v": 1}
    saving, release = threading.Event(), threading.Event()

    def slow_saver(name: str, contents: dict[str, int]) -> None:
        saving.set()
        release.wait(30)
        backing.update(contents)

    cache = manager.register_custom_cache(
        "busy", loader=lambda name: dict(backing), saver=slow_saver, autosync=False
    )
    seen: list[str | None] = []
    manager.store.subscribe(lambda name, generation: seen.append(name))  # type: ignore[attr-defined]
    cache["v"] = 2
    saver = threading.Thread(target=cache.save)
    saver.start()
    try:
        assert saving.wait(10)
        other = RedisStore(redis_url, manager=manager.name)  # another process's view
        other.update_meta("busy", generation="x:1")
        other.update_meta("unrelated", generation="u:1")
        wait_until(lambda: "unrelated" in seen, timeout=10)  # it moved on past the busy cache
        other.close()
    finally:
        release.set()
        saver.join(10)
    assert not saver.is_alive()
    assert backing == {"v": 2}


REBUILD_ROOT = """
import sys, time
from cacheman import CacheManager, RedisStore
manager = CacheManager(sys.argv[2], store=RedisStore(sys.argv[1]))
def build(name):
    time.sleep(0.5)
    return {"by": "B"}
root = manager.register_custom_cache("root", builder=build, autosync=False)
root.invalidate_and_rebuild()
"""


@on_redis
def test_a_process_hearing_of_a_reset_loads_what_the_other_built(
    manager: CacheManager, redis_url: str
) -> None:
    built: list[str] = []
    root = manager.register_custom_cache(
        "root", builder=lambda name: built.append(name) or {"by": "A"}, autosync=False
    )
    assert built == ["root"]
    assert manager.store.load("root") == {"by": "A"}  # built, and saved under the lock
    done = run_python("-c", REBUILD_ROOT, redis_url, manager.name)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: root == {"by": "B"}, timeout=20)
    assert built == ["root"], "this process did not build it again"


def test_closing_a_manager_stops_its_event_listener_and_unsubscribes(redis_url: str) -> None:
    manager = CacheManager("closed_listener", store=RedisStore(redis_url))
    cache = manager.register_cache("c")
    cache["k"] = 1
    bound = manager.store
    listener = bound._listener  # type: ignore[attr-defined]
    assert listener is not None
    assert listener.is_alive()
    manager.close()
    assert not bound._callbacks  # type: ignore[attr-defined]
    assert not listener.is_alive()
    assert "cacheman-redis-events-closed_listener" not in [t.name for t in threading.enumerate()]
    again = CacheManager("closed_listener", store=RedisStore(redis_url))
    assert again.retrieve_cache("c") == {"k": 1}  # the edit was saved first
    again.close()


def test_a_database_index_the_server_refuses_is_logged_not_a_thread_traceback(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from redis_server import DATABASES

    uncaught: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    store = RedisStore(redis_server.url(DATABASES))  # one past the last database
    manager = CacheManager("bad_db", store=store)
    started = time.monotonic()
    with pytest.raises(Exception, match="DB index is out of range"):
        manager.register_cache("c")  # the program's own call fails, in its own thread
    assert time.monotonic() - started < 4  # no wait for a subscription that cannot come
    listener = manager.store._listener  # type: ignore[attr-defined]
    assert listener is not None
    assert listener.ready.is_set()
    assert uncaught == []
    assert "'bad_db'" in caplog.text
    assert "cannot subscribe" in caplog.text
    assert "DB index is out of range" in caplog.text
    manager.close()
    assert not listener.is_alive()
    assert uncaught == []


# -- after a lost event: every generation read again -------------------------------------------


def test_after_a_reconnection_a_generation_changed_without_event_is_announced(
    store: RedisStore, raw: Any
) -> None:
    events: list[tuple[str | None, str | None]] = []
    store.subscribe(lambda name, generation: events.append((name, generation)))
    store.update_meta("a", generation="g:1")
    store.update_meta("b", generation="h:1")
    wait_until(lambda: ("b", "h:1") in events)
    # Another writer changes a generation and its event never arrives (written here
    # straight into the hash, which publishes nothing).
    raw.hset(store.meta_key("a"), "generation", json.dumps("g:2"))
    raw.client_kill_filter(_type="pubsub")
    wait_until(lambda: ("a", "g:2") in events)
    after = events[events.index((None, None)) :]
    assert after[:2] == [(None, None), ("a", "g:2")]
    assert ("b", "h:1") not in after  # unchanged since this process heard of it


def test_a_bad_database_number_is_one_clean_logged_error_in_the_events_thread(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    failures: list[object] = []
    previous_hook = threading.excepthook
    threading.excepthook = failures.append
    store = RedisStore(redis_server.url(999_999), manager="m")
    try:
        with caplog.at_level(logging.DEBUG, logger="cacheman"):
            store.subscribe(lambda name, generation: None, wait=10)
            listener = store._listener
            assert listener is not None
            wait_until(lambda: "cannot subscribe" in caplog.text)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, caplog.text  # once, not once per retry
        assert "DB index is out of range" in errors[0].getMessage()
        assert errors[0].exc_info is None  # a message, not a traceback
        assert failures == []
    finally:
        store.close()
        threading.excepthook = previous_hook


# -- verify and usage ----------------------------------------------------------------------------


def test_verify_checks_signatures_framing_and_lineage_without_unpickling(
    redis_url: str, raw: Any, tmp_path: Path
) -> None:
    signed = RedisStore(redis_url, manager="v", signing_key=b"k" * 32)
    signed.save("good", {"a": 1})
    assert signed.verify("good").problems == []
    assert signed.verify("good").signed
    marker = tmp_path / "unpickled"
    raw.hset(signed.data_key("good"), pickle.dumps("planted"), pickle.dumps(Planted(marker)))
    report = signed.verify("good")
    assert report.refused
    assert "unsigned, forged" in report.problems[0]
    assert not marker.exists()
    # Damage (not a pickle) is found, and fixed by moving it aside as a load would.
    unsigned = RedisStore(redis_url, manager="w")
    unsigned.save("broken", {"a": 1})
    raw.hset(unsigned.data_key("broken"), pickle.dumps("b"), b"garbage")
    assert unsigned.verify("broken").problems == ["1 entry is damaged"]
    fixed = unsigned.verify("broken", fix=True)
    assert fixed.fixed
    assert unsigned.verify("broken").problems == []
    # Lineage: a derived cache built from a parent generation that moved on is stale.
    unsigned.update_meta("parent", generation="p:2")
    unsigned.save("child", {"x": 1})
    unsigned.update_meta("child", parents={"parent": "p:1"})
    assert unsigned.verify("child").problems == [
        "stale: 'parent' is at p:2 (built from p:1); it is rebuilt when next registered"
    ]
    unsigned.update_meta("child", parents={"parent": "p:2"})
    assert unsigned.verify("child").problems == []
    signed.close()
    unsigned.close()


def test_usage_counts_the_bytes_redis_spends_on_a_cache(store: RedisStore) -> None:
    assert store.usage("none") == (0, None)
    store.save("small", {i: i for i in range(10)})
    store.save("big", dict.fromkeys(range(1000), "x" * 1000))
    small, big = store.usage("small"), store.usage("big")
    assert 0 < small.size < 10_000
    assert big.size > 1_000_000
    assert big.modified == store.read_meta("big")["saved_at"]


# -- the command line on Redis -------------------------------------------------------------------


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from cacheman.__main__ import main

    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_command_line_says_where_redis_data_lives_and_which_managers_it_holds(
    redis_server: Any,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, redis_url)
    store = RedisStore(redis_url, manager="clitest")
    store.save("numbers", {i: i for i in range(100)})
    store.update_meta("numbers", generation="g:1")
    status, out, _ = _cli(["--manager", "clitest", "path"], capsys)
    assert (status, out) == (0, f"{redis_url} cacheman:clitest:\n")
    status, out, _ = _cli(["--manager", "clitest", "show", "numbers"], capsys)
    assert status == 0
    assert f"clitest ({redis_url}, keys cacheman:clitest:*)" in out
    assert "bytes" in out
    assert " - " not in out.split("bytes")[1].splitlines()[0]
    status, out, _ = _cli(["--manager", "clitest", "verify"], capsys)
    assert (status, out.splitlines()[0]) == (0, "ok        numbers")
    status, _, err = _cli(["--manager", "clitesd", "list"], capsys)
    assert status == 1
    assert "managers in that Redis: clitest" in err
    assert "did you mean 'clitest'" in err
    status, out, _ = _cli(["--json", "list"], capsys)  # no --manager: every manager
    assert status == 0
    assert {
        "name": "clitest",
        "store": "redis",
        "path": f"{redis_url} cacheman:clitest:",
        "caches": 1,
    } in json.loads(out)["managers"]
    store.close()


# -- passwords and ACL users ---------------------------------------------------------------------

PASSWORD = "pw-Zq8v3-never-shown"
ALICE_PASSWORD = "alice-Kx2-never-shown"


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Any:
    """A redis-server that wants a password, with an ACL user ``alice`` limited to ``app:*``."""
    from redis_server import RedisServer

    server = RedisServer(
        tmp_path_factory.mktemp("secured"),
        redis_server.executable,
        extra_args=[
            "--requirepass", PASSWORD,
            "--user", "alice", "on", f">{ALICE_PASSWORD}", "~app:*", "&app:*", "+@all",
        ],
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


def test_acl_user_and_password_work_and_are_never_shown(
    secured_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = secured_server.port
    url = f"redis://alice:{ALICE_PASSWORD}@127.0.0.1:{port}/0"
    caplog.set_level(logging.DEBUG, logger="cacheman")
    manager = CacheManager("acl", tmp_path, store=RedisStore(url, namespace="app"))
    cache = manager.register_custom_cache("c", {"a": 1}, autosync=False)
    cache.save()
    assert RedisStore(url, namespace="app", manager="acl").load("c") == {"a": 1}
    shown = [repr(manager.store), manager.store.display_url]  # type: ignore[attr-defined]
    # The ACL holds alice to app:*: the default namespace is refused, with a clear error.
    outside = RedisStore(url, manager="acl")
    with pytest.raises(Exception, match="no permissions") as refused:
        outside.save("c", {"a": 1})
    shown.append(str(refused.value))
    # A wrong password: the error names the server, not the password.
    wrong = RedisStore(f"redis://alice:{PASSWORD}-wrong@127.0.0.1:{port}/0", manager="acl")
    with pytest.raises(ConnectionError) as failed:
        wrong.load("c")
    shown.append(str(failed.value))
    assert "cannot be reached" in shown[-1]
    assert "***" in shown[-1]
    # The password of the default user, in the URL: the command line never prints it.
    monkeypatch.setenv(REDIS_URL_ENV, f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    RedisStore(os.environ[REDIS_URL_ENV], manager="cli").save("x", {1: 2})
    for command in (["path"], ["list"], ["show", "x"], ["verify"], ["--json", "list"]):
        status, out, err = _cli(["--manager", "cli", *command], capsys)
        assert status == 0, err
        shown += [out, err]
    _cli(["--manager", "nobody", "list"], capsys)
    shown += list(capsys.readouterr())
    # The listener's errors too: subscribe with the wrong password.
    wrong.subscribe(lambda name, generation: None)
    wait_until(lambda: "cannot subscribe" in caplog.text)
    shown.append(caplog.text)
    for text in shown:
        assert PASSWORD not in text, text
        assert ALICE_PASSWORD not in text, text
    assert f"redis://:***@127.0.0.1:{port}/0 cacheman:cli:" in "".join(shown)
    for each in (outside, wrong):
        each.close()
    manager.close()


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Any:
    """A redis-server listening with TLS only, its certificate signed by a throw-away CA."""
    import shutil

    from redis_server import RedisServer

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificates for the TLS test")
    directory = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "san.cnf", "-out", "server.crt")  # fmt: skip
    from redis_server import _free_port

    tls_port = _free_port()
    server = RedisServer(
        directory,
        redis_server.executable,
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(directory / "server.crt"),
            "--tls-key-file", str(directory / "server.key"),
            "--tls-ca-cert-file", str(directory / "ca.crt"),
            "--tls-auth-clients", "no",
            "--requirepass", PASSWORD,
        ],
    )  # fmt: skip
    server.start()
    server.tls_port = tls_port  # type: ignore[attr-defined]
    server.ca = directory / "ca.crt"  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_rediss_urls_connect_with_tls(tls_server: Any, tmp_path: Path) -> None:
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_server.tls_port}/0"
    store = RedisStore(url, manager="tls", ssl_ca_certs=str(tls_server.ca))
    store.save("c", {"over": "tls"})
    assert store.load("c") == {"over": "tls"}
    assert repr(store) == (
        f"RedisStore('rediss://:***@127.0.0.1:{tls_server.tls_port}/0', namespace='cacheman', "
        "manager='tls')"
    )
    # Without the CA the certificate is refused: TLS is checked, not only spoken.
    untrusting = RedisStore(url, manager="tls")
    with pytest.raises(ConnectionError, match="certificate verify failed") as refused:
        untrusting.load("c")
    assert PASSWORD not in str(refused.value)
    store.close()
    untrusting.close()


def test_wait_for_replicas_without_a_replica_refuses_to_acknowledge(
    redis_url: str, raw: Any
) -> None:
    store = RedisStore(redis_url, manager="w", wait_for_replicas=1, replica_timeout=0.05)
    assert repr(store).endswith("manager='w', wait_for_replicas=1)")
    with pytest.raises(TimeoutError, match=r"cache 'c': .* only 0 of 1 replica"):
        store.save("c", {"a": 1})
    with pytest.raises(TimeoutError, match="cache 'c'"):
        store.append("c", [("set", "b", 2)])
    with pytest.raises(TimeoutError, match="cache 'c'"):
        store.update_meta("c", generation="g:1")
    # Each reached the primary all the same (WAIT cannot undo a write): only unacknowledged.
    assert RedisStore(redis_url, manager="w").load("c") == {"a": 1, "b": 2}
    assert json.loads(raw.hget(store.meta_key("c"), "generation")) == "g:1"
    store.close()


def test_list_and_show_on_redis_leave_damaged_contents_in_place(
    redis_url: str,
    raw: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, redis_url)
    store = RedisStore(redis_url, manager="damaged")
    store.save("c", {"a": 1})
    raw.hset(store.data_key("c"), pickle.dumps("b"), b"garbage")
    for command in (["list"], ["show", "c"]):
        status, _, _ = _cli(["--manager", "damaged", *command], capsys)
        assert status == 1
        assert raw.hlen(store.data_key("c")) == 2, f"{command} moved the damaged hash aside"
    status, out, _ = _cli(["--manager", "damaged", "verify", "--fix"], capsys)
    assert (status, out.split()[:2]) == (0, ["fixed", "c:"]), out
    assert raw.hlen(store.data_key("c")) == 0  # verify --fix is what moves it aside
    store.close()
