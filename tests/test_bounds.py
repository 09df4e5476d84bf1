"""Expiry and bounds: ttl (per cache, per key), max_entries, max_bytes, LRU eviction."""

from __future__ import annotations

import gc
import logging
import pickle
import random
import threading
import weakref
from typing import Any

import pytest
from helpers import both_stores, wait_until

from cacheman import CacheManager
from cacheman._persist import bounds as _bounds
from cacheman._persist.bounds import BoundedCache, BoundedPersistentCache, sidecar_name
from cacheman._process import scheduler as _scheduler
from cacheman.autosync import AutoSyncCache
from cacheman.cachewrap import PersistentCache


class Clock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def bounded(manager: CacheManager, name: str, clock: Clock, **options: Any) -> BoundedCache:
    cache = manager.register_custom_cache(name, wall_clock=clock, **options)
    assert isinstance(cache, BoundedCache)
    return cache


def reopened(manager: CacheManager, name: str, clock: Clock, **options: Any) -> BoundedCache:
    """The cache as another process would load it: a new manager over the same store."""
    other = CacheManager(manager.name, manager.cache_directory.parent, store=_same_store(manager))
    return bounded(other, name, clock, **options)


def _same_store(manager: CacheManager) -> Any:
    from cacheman import RedisStore

    store = manager.store
    if isinstance(store, RedisStore):
        return RedisStore(store.url)  # type: ignore[attr-defined]
    return None


# -- only the caches that ask pay ---------------------------------------------------------


def test_caches_without_bounds_keep_the_dicts_own_reads(manager: CacheManager) -> None:
    plain = manager.register_cache("plain")
    assert type(plain) is AutoSyncCache
    assert type(plain).__getitem__ is dict.__getitem__  # no Python-level read path added
    assert type(plain).__contains__ is dict.__contains__
    assert type(manager.register_custom_cache("plain2", ttl=None)) is AutoSyncCache
    assert type(manager.register_cache("timed", ttl=60)) is BoundedCache
    custom = manager.register_custom_cache("manual", autosync=False, max_entries=3)
    assert type(custom) is BoundedPersistentCache
    assert isinstance(custom, PersistentCache)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl": 0}, "ttl must be > 0"),
        ({"ttl": -1.5}, "ttl must be > 0"),
        ({"max_entries": 0}, "max_entries must be an int >= 1"),
        ({"max_bytes": 1.5}, "max_bytes must be an int >= 1"),
    ],
)
def test_bad_bounds_are_refused_naming_the_cache(
    manager: CacheManager, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        manager.register_cache("bad", **options)
    assert "'bad'" in str(caught.value)


# -- expiry ---------------------------------------------------------------------------------


def test_a_key_past_its_ttl_misses_on_every_kind_of_read(manager: CacheManager) -> None:
    clock = Clock()
    cache = bounded(manager, "api", clock, ttl=10)
    cache["a"] = 1
    clock.now += 9.9
    assert cache["a"] == 1
    assert "a" in cache
    clock.now += 0.2
    assert cache.get("a", "gone") == "gone"
    assert "a" not in cache
    with pytest.raises(KeyError):
        cache["a"]
    assert dict(cache) == {}


def test_a_per_key_ttl_overrides_the_caches(manager: CacheManager) -> None:
    clock = Clock()
    cache = bounded(manager, "mixed_ttl", clock, ttl=10)
    cache.set("short", 1, ttl=1)
    cache.set("forever", 2, ttl=None)
    cache.set("default", 3)
    clock.now += 5
    assert ("short" in cache, "forever" in cache, "default" in cache) == (False, True, True)
    clock.now += 10**9
    # In virtual time no thread runs: a due key stays until a read, a write or expire().
    assert cache.expire() == 1
    assert dict(cache) == {"forever": 2}


def test_expire_counts_and_deletes_what_is_due(manager: CacheManager) -> None:
    clock = Clock()
    cache = bounded(manager, "due", clock, ttl=10)
    for i in range(5):
        cache.set(i, i, ttl=i + 1)
    clock.now += 3.5
    assert cache.expire() == 3
    assert sorted(dict(cache)) == [3, 4]


@both_stores
def test_expired_keys_are_journaled_deletes_and_deadlines_survive_a_reload(
    manager: CacheManager,
) -> None:
    clock = Clock()
    cache = bounded(manager, "persisted", clock, ttl=100)
    cache["old"] = 1
    cache.set("young", 2, ttl=1000)
    cache.save()
    clock.now += 50
    # Another process loads it: the deadlines are the saved ones, not "ttl from now".
    later = reopened(manager, "persisted", clock, ttl=100)
    assert dict(later) == {"old": 1, "young": 2}
    clock.now += 60  # "old" is 110 s old: past its deadline though loaded 60 s ago
    assert "old" not in later
    later.save()
    assert manager.store.load("persisted") == {"young": 2}  # the expiry was saved as a delete


def test_keys_past_their_deadline_are_dropped_at_load(manager: CacheManager) -> None:
    clock = Clock()
    cache = bounded(manager, "at_load", clock, ttl=5)
    cache.update({"a": 1, "b": 2})
    cache.save()
    clock.now += 6
    assert dict(reopened(manager, "at_load", clock, ttl=5)) == {}


def test_a_refresh_dates_only_the_keys_another_process_added(manager: CacheManager) -> None:
    clock = Clock()
    cache = bounded(manager, "refreshed", clock, ttl=10)
    cache.set("forever", 1, ttl=None)
    cache["timed"] = 2
    cache.save()
    other = reopened(manager, "refreshed", clock, ttl=10)
    other["theirs"] = 3
    other.save()
    clock.now += 5
    cache.refresh()  # "theirs" is first seen now: ttl from now
    assert sorted(dict(cache)) == ["forever", "theirs", "timed"]
    clock.now += 11
    assert cache.expire() == 2
    assert dict(cache) == {"forever": 1}  # still undated: the refresh left it alone


def test_the_background_thread_drops_expired_keys_nobody_reads(manager: CacheManager) -> None:
    cache = manager.register_cache("ticking", ttl=0.2)
    cache["soon"] = 1
    cache.set("kept", 2, ttl=None)
    # Only iteration and len(): neither reads a key, so only the thread can drop it.
    wait_until(lambda: "soon" not in list(cache))
    assert list(cache) == ["kept"]
    assert len(cache) == 1
    cache.save()
    assert manager.store.load("ticking") == {"kept": 2}  # dropped as a journaled delete


def test_writes_reads_and_the_background_thread_keep_the_index_whole(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    """Seeded: a writer and a reader race the thread's expiry; the index stays consistent."""
    cache = manager.register_cache("raced", ttl=0.005, max_entries=300, max_bytes=20_000)
    assert isinstance(cache, BoundedCache)
    rng = random.Random(13)
    errors: list[str] = []
    stop = threading.Event()

    def read() -> None:
        reader = random.Random(31)
        while not stop.is_set():
            key = reader.randrange(1000)
            try:
                cache.get(key)
                _ = key in cache
            except Exception as error:  # pragma: no cover - what the test looks for
                errors.append(repr(error))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for step in range(10_000):
            key = rng.randrange(1000)
            operation = rng.random()
            if operation < 0.7:
                cache[key] = step
            elif operation < 0.8:
                cache.set(key, step, ttl=None)
            elif operation < 0.95:
                cache.pop(key, None)
            else:
                cache.update({key: step, key + 1: step})
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # the thread's too
    cache._check()
    wait_until(lambda: cache.expire() == 0 and not cache._soonest)  # all timed keys go
    cache._check()
    assert all(cache._deadlines.get(key) is None for key in cache)


def test_in_virtual_time_the_clocks_scheduler_expires_what_is_due(
    manager: CacheManager,
) -> None:
    clock = Clock()
    cache = bounded(manager, "virtual", clock, ttl=10)
    cache["a"] = 1
    clock.now += 5
    cache["b"] = 2
    scheduler = _scheduler.for_clock(clock)
    assert scheduler.next_deadline() == clock.now + 5  # "a"'s deadline, the soonest
    clock.now += 6
    scheduler.run_due()
    assert list(cache) == ["b"]
    assert scheduler.next_deadline() == clock.now + 4  # then "b"'s
    clock.now += 4
    scheduler.run_due()
    assert len(cache) == 0
    assert scheduler.next_deadline() is None  # nothing left: nothing scheduled


def test_a_busy_lock_delays_the_background_expiry_without_blocking(
    manager: CacheManager,
) -> None:
    clock = Clock()
    cache = bounded(manager, "busy", clock, ttl=1)
    cache["a"] = 1
    clock.now += 2
    scheduler = _scheduler.for_clock(clock)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with cache._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        scheduler.run_due()  # returns at once: the thread never waits for the lock
        assert list(cache) == ["a"]
        assert scheduler.next_deadline() == clock.now + _bounds.LOCK_RETRY
    finally:
        release.set()
        holder.join()
    clock.now += _bounds.LOCK_RETRY
    scheduler.run_due()
    assert len(cache) == 0


def test_a_scheduled_deadline_does_not_keep_a_dropped_cache_alive(
    manager: CacheManager,
) -> None:
    clock = Clock()
    cache = bounded(manager, "dropped", clock, ttl=3600)
    cache["a"] = 1
    scheduler = _scheduler.for_clock(clock)
    assert scheduler.next_deadline() is not None
    manager.deregister_cache("dropped")
    assert scheduler.next_deadline() is None  # released: the thread lets it go
    alive = weakref.ref(cache)
    del cache
    gc.collect()
    assert alive() is None


# -- size bounds ------------------------------------------------------------------------------


def test_max_entries_evicts_the_least_recently_used(manager: CacheManager) -> None:
    clock = Clock()
    cache = bounded(manager, "lru", clock, max_entries=3)
    cache["a"], cache["b"], cache["c"] = 1, 2, 3
    assert cache["a"] == 1  # "a" is now the most recently used
    cache["d"] = 4
    assert sorted(dict(cache)) == ["a", "c", "d"]
    cache.save()
    assert manager.store.load("lru") == {"a": 1, "c": 3, "d": 4}


def test_max_bytes_bounds_the_pickled_sizes(manager: CacheManager) -> None:
    clock = Clock()
    size = len(pickle.dumps("x" * 100, protocol=5))
    cache = bounded(manager, "sized", clock, max_bytes=3 * size)
    for key in "abcd":
        cache[key] = key * 100
    assert sorted(dict(cache)) == ["b", "c", "d"]
    cache["big"] = "y" * (2 * size)  # takes the room of more than one
    assert "big" in cache
    assert len(cache) <= 2


def test_deleting_and_clearing_keep_the_bounds_in_step(manager: CacheManager) -> None:
    clock = Clock()
    cache = bounded(manager, "steps", clock, max_entries=2, ttl=10)
    cache["a"] = 1
    del cache["a"]
    cache["b"], cache["c"] = 2, 3
    assert cache.pop("b") == 2
    assert cache.pop("missing", None) is None
    cache.clear()
    cache["d"], cache["e"] = 4, 5
    assert sorted(dict(cache)) == ["d", "e"]
    clock.now += 11
    cache["f"] = 6  # a write drops what expired before adding
    assert dict(cache) == {"f": 6}


def test_the_bounds_record_goes_with_the_cache(manager: CacheManager) -> None:
    clock = Clock()
    cache = bounded(manager, "goes", clock, ttl=10)
    cache["a"] = 1
    cache.save()
    assert manager.store.exists(sidecar_name("goes"))
    manager.delete_saved_cache_content("goes")
    assert not manager.store.exists(sidecar_name("goes"))


# -- memoize ----------------------------------------------------------------------------------


def test_memoize_with_ttl_computes_again_after_expiry(manager: CacheManager) -> None:
    calls: list[int] = []

    @manager.memoize("fresh", ttl=30)
    def fresh(x: int) -> int:
        calls.append(x)
        return x * 2

    clock = Clock()
    fresh.cache.wall_clock = clock  # type: ignore[attr-defined]
    assert fresh(1) == 2
    assert fresh(1) == 2
    clock.now += 31
    assert fresh(1) == 2
    assert calls == [1, 1]


def test_memoize_with_max_entries_keeps_the_most_recent_results(manager: CacheManager) -> None:
    @manager.memoize("few", max_entries=2)
    def few(x: int) -> int:
        return x

    for x in (1, 2, 3, 2, 4):
        few(x)
    assert sorted(few.cache.values()) == [2, 4]


def test_a_reset_cache_starts_a_fresh_index(manager: CacheManager) -> None:
    clock = Clock()
    cache = bounded(manager, "reset_me", clock, max_entries=2, ttl=10)
    cache["a"], cache["b"] = 1, 2
    cache.save()
    manager.invalidate_and_rebuild_cache("reset_me")
    assert dict(cache) == {}
    cache["c"], cache["d"] = 3, 4  # the old keys no longer count against the bound
    assert sorted(dict(cache)) == ["c", "d"]
    clock.now += 11
    assert cache.expire() == 2
