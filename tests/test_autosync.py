"""Autosync: the rules in virtual time (a table of scenarios), then in real time."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psutil
import pytest
from helpers import wait_until

from cacheman import AutoSyncCache, CacheManager, TimeCount
from cacheman._process import scheduler as _scheduler
from cacheman.autosync import DEFAULT_TIME_CHECKS


class VirtualClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settle(cache: AutoSyncCache) -> None:
    """Let a child save in flight land, and run what became due."""
    cache._await_pending_save()
    _scheduler.for_clock(cache.clock).run_due()
    cache._await_pending_save()


def advance(cache: AutoSyncCache, seconds: float) -> None:
    """Move virtual time on, running each deadline at its own moment (as the thread would)."""
    clock = cache.clock
    assert isinstance(clock, VirtualClock)
    scheduler = _scheduler.for_clock(clock)
    end = clock.now + seconds
    while True:
        settle(cache)
        deadline = scheduler.next_deadline()
        if deadline is None or deadline > end:
            break
        clock.now = max(clock.now, deadline)
        scheduler.run_due()
    clock.now = end
    settle(cache)
    cache._log._check()


# Each scenario: rules (None = the defaults) and a script of steps:
# ("edit", n) makes n edits now, ("wait", s) moves virtual time on by s seconds,
# ("saved", n, pending) checks that the saved copy holds n items and that
# `pending` edits are still unsaved.
SCENARIOS: list[tuple[str, Any, list[tuple[Any, ...]]]] = [
    (
        "burst of 10,000 edits fires at once",
        None,
        [("edit", 9999), ("saved", 0, 9999), ("edit", 1), ("saved", 10000, 0)],
    ),
    (
        "10 edits aged past 60 s",
        None,
        [("edit", 10), ("wait", 59.9), ("saved", 0, 10), ("wait", 0.1), ("saved", 10, 0)],
    ),
    (
        "10 edits in two groups: the rule fires when the younger group turns 60 s",
        None,
        [
            ("edit", 5),
            ("wait", 30),
            ("edit", 5),
            ("wait", 30),
            ("saved", 0, 10),
            ("wait", 29.9),
            ("saved", 0, 10),
            ("wait", 0.1),
            ("saved", 10, 0),
        ],
    ),
    (
        "one edit aged past 300 s",
        None,
        [("edit", 1), ("wait", 299.9), ("saved", 0, 1), ("wait", 0.1), ("saved", 1, 0)],
    ),
    (
        "9 edits are below the 10-edit rule, so they wait for the 300 s rule",
        None,
        [("edit", 9), ("wait", 299), ("saved", 0, 9), ("wait", 1), ("saved", 9, 0)],
    ),
    (
        "below every threshold nothing happens",
        [TimeCount(10, 100), TimeCount(20, 5)],
        [("edit", 4), ("wait", 100), ("saved", 0, 4), ("edit", 99), ("saved", 0, 103)],
    ),
    (
        "counts clear after a save: no second save without new edits",
        None,
        [("edit", 10), ("wait", 60), ("saved", 10, 0), ("wait", 2000), ("saved", 10, 0)],
    ),
    (
        "new edits after a save count afresh",
        None,
        [
            ("edit", 10),
            ("wait", 60),
            ("saved", 10, 0),
            ("edit", 3),
            ("wait", 300),
            ("saved", 13, 0),
        ],
    ),
    (
        "the burst window slides: 5,000 edits, 61 s, 5,000 more is no burst",
        [TimeCount(60, 10000), TimeCount(900, 10**9)],
        [
            ("edit", 5000),
            ("wait", 61),
            ("edit", 5000),
            ("saved", 0, 10000),
            ("edit", 5000),
            ("saved", 15000, 0),
        ],
    ),
]


@pytest.mark.parametrize(
    ("rules", "script"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_rules_in_virtual_time(
    manager: CacheManager, rules: Any, script: list[tuple[Any, ...]]
) -> None:
    clock = VirtualClock()
    cache = manager.register_custom_cache("rules", time_checks=rules, clock=clock)
    assert isinstance(cache, AutoSyncCache)
    made = 0
    for step in script:
        if step[0] == "edit":
            for _ in range(step[1]):
                cache[f"k{made}"] = made
                made += 1
            settle(cache)
        elif step[0] == "wait":
            advance(cache, step[1])
        else:
            _, saved_items, pending = step
            assert len(manager.store.load("rules") or {}) == saved_items, step
            assert cache.pending_edits == pending, step
            assert cache.last_save_error is None


def test_edits_made_during_a_save_stay_pending(manager: CacheManager) -> None:
    clock = VirtualClock()
    cache = manager.register_custom_cache("during", time_checks=[TimeCount(60, 100)], clock=clock)
    assert isinstance(cache, AutoSyncCache)
    for i in range(100):
        cache[i] = i  # the 100th edit forks the child: its snapshot holds 0..99
    assert cache.save_in_progress
    for i in range(100, 105):
        cache[i] = i  # made while the child saves
    settle(cache)
    assert sorted(manager.store.load("during") or {}) == list(range(100))
    assert cache.pending_edits == 5


@pytest.mark.parametrize(
    ("mutate", "edits"),
    [
        (lambda c: c.__setitem__("new", 1), 1),
        (lambda c: c.__delitem__("a"), 1),
        (lambda c: c.update({"x": 1, "y": 2}), 2),
        (lambda c: c.update([("x", 1)], z=3), 2),
        (lambda c: c.update(iter([("x", 1), ("y", 2)])), 2),
        (lambda c: c.__ior__({"x": 1}), 1),
        (lambda c: c.pop("a"), 1),
        (lambda c: c.pop("missing", None), 0),
        (lambda c: c.popitem(), 1),
        (lambda c: c.setdefault("a", 5), 0),
        (lambda c: c.setdefault("new", 5), 1),
        (lambda c: c.clear(), 2),
    ],
)
def test_every_mutator_counts_its_edits(
    manager: CacheManager, mutate: Callable[[AutoSyncCache], object], edits: int
) -> None:
    cache = manager.register_custom_cache("m", {"a": 1, "b": 2}, time_checks=[TimeCount(60, 10**6)])
    assert isinstance(cache, AutoSyncCache)
    cache.save()
    assert cache.pending_edits == 0
    mutate(cache)
    assert cache.pending_edits == edits


def test_defaults_and_bad_rules(manager: CacheManager) -> None:
    cache = manager.register_cache("defaults")
    assert cache.time_checks == DEFAULT_TIME_CHECKS
    assert cache.time_bucket_size == 1.0
    with pytest.raises(ValueError, match="time_bucket_size"):
        manager.register_custom_cache("bad", time_checks=[TimeCount(1, 5)], time_bucket_size=2)
    with pytest.raises(ValueError, match="count"):
        manager.register_custom_cache("bad2", time_checks=[TimeCount(1, 0)])


# -- real time ----------------------------------------------------------------------

SMALL_RULES = [TimeCount(0.2, 50), TimeCount(0.5, 1)]


def test_a_lone_edit_is_saved_while_the_program_runs(manager: CacheManager) -> None:
    cache = manager.register_custom_cache("lone", time_checks=SMALL_RULES, time_bucket_size=0.05)
    cache["only"] = 1
    started = time.monotonic()
    wait_until(lambda: manager.store.exists("lone"), timeout=5)
    assert time.monotonic() - started >= 0.15  # the 0.2 s rule, not at once
    wait_until(lambda: cache.pending_edits == 0)
    assert manager.store.load("lone") == {"only": 1}


def _slow_saver(store: Any) -> Callable[[str, Any], None]:
    def save(name: str, contents: Any) -> None:
        time.sleep(0.5)
        store.save(name, contents)

    return save


def test_a_burst_is_saved_by_a_child_process(manager: CacheManager) -> None:
    me = psutil.Process()
    before = {child.pid for child in me.children()}
    cache = manager.register_custom_cache(
        "burst", time_checks=SMALL_RULES, saver=_slow_saver(manager.store)
    )
    for i in range(50):
        cache[i] = i
    children = [child for child in me.children() if child.pid not in before]
    assert len(children) == 1, "the burst forked one child to save"
    assert children[0].ppid() == os.getpid()
    wait_until(lambda: manager.store.exists("burst"))
    wait_until(lambda: not cache.save_in_progress)
    assert manager.store.load("burst") == {i: i for i in range(50)}
    assert not [c for c in me.children() if c.pid not in before], "the child was reaped"


def test_at_most_one_child_per_cache_and_requests_coalesce(manager: CacheManager) -> None:
    me = psutil.Process()
    before = {child.pid for child in me.children()}
    cache = manager.register_custom_cache(
        "one", time_checks=[TimeCount(60, 10)], saver=_slow_saver(manager.store)
    )
    for i in range(100):  # ten bursts while the first child sleeps
        cache[i] = i
    assert len([c for c in me.children() if c.pid not in before]) == 1
    wait_until(lambda: cache.pending_edits == 0 and not cache.save_in_progress)
    assert manager.store.load("one") == {i: i for i in range(100)}
    assert cache._background.completed == 2  # the first save, then one coalesced save


def test_load_and_delete_wait_for_the_save_in_flight(manager: CacheManager) -> None:
    cache = manager.register_custom_cache(
        "ryw", time_checks=[TimeCount(60, 3)], saver=_slow_saver(manager.store)
    )
    cache.update(a=1, b=2, c=3)
    assert cache.save_in_progress
    cache.load()  # reads its own write, not the missing file
    assert cache == {"a": 1, "b": 2, "c": 3}
    cache["d"] = 4
    cache.update(e=5, f=6)
    assert cache.save_in_progress
    cache.delete_saved_content()
    assert not manager.store.exists("ryw"), "the delete came after the save, not before"


def test_load_runs_the_save_asked_for_while_a_child_ran(manager: CacheManager) -> None:
    # save(), edit, save() while the first child still writes: the second save is
    # coalesced; a load must not drop the edit that save was asked to keep.
    cache = manager.register_custom_cache(
        "asked", {"a": 1}, autosync=False, async_save=True, saver=_slow_saver(manager.store)
    )
    cache.save()
    cache["b"] = 2
    cache.save()
    cache.load()
    assert cache == {"a": 1, "b": 2}
    assert manager.store.load("asked") == {"a": 1, "b": 2}


def test_load_runs_the_save_a_rule_fired_while_a_child_ran(manager: CacheManager) -> None:
    cache = manager.register_custom_cache(
        "fired", time_checks=[TimeCount(60, 3)], saver=_slow_saver(manager.store)
    )
    cache.update(a=1, b=2, c=3)
    cache.update(d=4, e=5, f=6)  # a second burst while the first child sleeps
    assert cache.save_in_progress
    cache.load()
    assert cache == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}


def test_async_save_on_a_persistent_cache_uses_a_child(manager: CacheManager) -> None:
    cache = manager.register_custom_cache(
        "async", autosync=False, async_save=True, saver=_slow_saver(manager.store)
    )
    cache["a"] = 1
    started = time.monotonic()
    cache.save()
    assert time.monotonic() - started < 0.3, "save() returned before the write"
    assert not manager.store.exists("async")
    cache.load()
    assert cache == {"a": 1}


def test_editing_threads_and_the_autosync_thread_share_the_cache(manager: CacheManager) -> None:
    cache = manager.register_custom_cache(
        "threads", time_checks=[TimeCount(0.1, 500), TimeCount(0.3, 1)], time_bucket_size=0.02
    )

    def edit(offset: int) -> None:
        for i in range(3000):
            cache[offset + i] = i
            if i % 500 == 0:
                time.sleep(0.01)

    threads = [threading.Thread(target=edit, args=(n * 10000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: cache.pending_edits == 0 and not cache.save_in_progress)
    assert len(manager.store.load("threads") or {}) == 12000


def test_an_edit_made_while_a_synchronous_save_runs_stays_pending(manager: CacheManager) -> None:
    # Another thread's edit can land while the saver writes; it is not in what the
    # saver wrote, so it must still count as unsaved.  The saver itself makes the
    # edit here, which puts it at that moment deterministically.
    written: list[dict[Any, Any]] = []

    def saver(name: str, contents: Mapping[Any, Any]) -> None:
        written.append(dict(contents))
        cache["during"] = 1

    cache = manager.register_custom_cache("sync_during", saver=saver)
    assert isinstance(cache, AutoSyncCache)
    cache["before"] = 1
    cache.save()
    assert written == [{"before": 1}]
    assert cache.pending_edits == 1


def test_time_counts_shows_unsaved_edits_per_bucket(manager: CacheManager) -> None:
    # The 2.x view: one slot per bucket across the longest rule, the current bucket last.
    clock = VirtualClock()
    cache = manager.register_custom_cache(
        "counts",
        time_checks=[TimeCount(1, 100), TimeCount(5, 100)],
        time_bucket_size=1,
        clock=clock,
    )
    assert cache.time_counts == [0] * 5
    cache["a"] = 1
    assert cache.time_counts == [0, 0, 0, 0, 1]
    advance(cache, 1)
    cache["b"] = 1
    cache["c"] = 1
    assert cache.time_counts == [0, 0, 0, 1, 2]
    advance(cache, 3)
    assert cache.time_counts == [1, 2, 0, 0, 0]
    cache["d"] = 1
    cache.save()
    assert cache.time_counts == [0] * 5
    cache["e"] = 1
    advance(cache, 5)  # older than the longest rule: counted by no rule
    assert cache.time_counts == [0] * 5
