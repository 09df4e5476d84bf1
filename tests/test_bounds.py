"""Expiry and bounds: ttl (per cache, per key), max_entries, max_bytes, LRU eviction."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from helpers import both_stores

from cacheman import CacheManager
from cacheman._persist.bounds import BoundedCache, BoundedPersistentCache, sidecar_name
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
    # Iteration and len() see a due key until a read, a write or expire() drops it.
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
