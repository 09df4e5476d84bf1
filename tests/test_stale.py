"""memoize(stale_after=...): stale results served while one refresh per key computes."""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
from typing import Any

import pytest
from helpers import both_stores, wait_until

from cacheman import CacheManager
from cacheman._memo.stale import StaleAfter


class Clock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def in_virtual_time(function: Any) -> Clock:
    """Give a memoized function's cache a clock the test moves."""
    clock = Clock()
    function.cache.wall_clock = clock
    return clock


class Gated:
    """A function whose calls after the first block until ``gate`` opens."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.started = threading.Event()  # a call after the first began
        self.gate = threading.Event()

    def __call__(self, x: int) -> str:
        self.calls.append(x)
        if len(self.calls) > 1:
            self.started.set()
            assert self.gate.wait(10)
        return f"{x}#{len(self.calls)}"


@both_stores
def test_a_stale_result_is_served_at_once_while_one_refresh_computes(
    manager: CacheManager,
) -> None:
    gated = Gated()
    rate = manager.memoize("rate", stale_after=60)(gated.__call__)
    clock = in_virtual_time(rate)
    assert rate(1) == "1#1"
    clock.now += 59
    assert rate(1) == "1#1"  # fresh: a plain hit
    clock.now += 2
    assert rate(1) == "1#1"  # stale: served, and a refresh starts
    assert gated.started.wait(10)
    assert [rate(1) for _ in range(5)] == ["1#1"] * 5  # while it runs: no second one
    assert gated.calls == [1, 1]
    gated.gate.set()
    wait_until(lambda: rate(1) == "1#2")
    assert gated.calls == [1, 1]
    assert rate.cache.age(rate.key_of(1)) == 0


def test_threads_asking_for_a_stale_key_start_one_refresh(manager: CacheManager) -> None:
    gated = Gated()
    rate = manager.memoize("rate_threads", stale_after=60)(gated.__call__)
    clock = in_virtual_time(rate)
    rate(1)
    clock.now += 61
    barrier = threading.Barrier(16)
    results: list[str] = []

    def ask() -> None:
        barrier.wait()
        results.append(rate(1))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == ["1#1"] * 16  # nobody waited for the refresh
    gated.gate.set()
    wait_until(lambda: rate(1) == "1#2")
    assert gated.calls == [1, 1]
    assert rate.stats.misses == 2  # the first computation, and the one refresh


@both_stores
def test_refresh_wait_computes_a_stale_result_in_the_call(manager: CacheManager) -> None:
    calls: list[int] = []

    # Under a lease: the stale result the store holds is not taken for another's fresh one.
    @manager.memoize(
        "rate_wait", stale_after=datetime.timedelta(minutes=1), refresh="wait", lease=True
    )
    def rate(x: int) -> str:
        calls.append(x)
        return f"{x}#{len(calls)}"

    clock = in_virtual_time(rate)
    assert rate(1) == "1#1"
    clock.now += 61
    assert rate(1) == "1#2"
    assert rate(1) == "1#2"
    assert calls == [1, 1]


def test_a_failed_refresh_keeps_serving_the_stale_result_and_is_tried_again(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: list[Any] = ["first", ValueError("service down"), "third"]

    @manager.memoize("flaky", stale_after=60)
    def flaky(x: int) -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)

    clock = in_virtual_time(flaky)
    assert flaky(1) == "first"
    clock.now += 61
    with caplog.at_level(logging.WARNING, logger="cacheman"):
        assert flaky(1) == "first"
        wait_until(lambda: "refreshing a stale result failed" in caplog.text)
    assert "'flaky'" in caplog.text
    assert "service down" in caplog.text
    wait_until(lambda: flaky._calls == {})  # the failed refresh is over
    assert flaky(1) == "first"  # still stale: served, and refreshed again
    wait_until(lambda: flaky(1) == "third")
    assert outcomes == []


def test_how_old_a_result_is_survives_a_reload(manager: CacheManager) -> None:
    calls: list[int] = []

    @manager.memoize("aged", stale_after=60, refresh="wait")
    def aged(x: int) -> int:
        calls.append(x)
        return x

    clock = in_virtual_time(aged)
    aged(1)
    aged.cache.save()
    clock.now += 50
    manager.reload_cache("aged")  # reads the contents and the saved ages back
    assert aged.cache.age(aged.key_of(1)) == 50
    clock.now += 11
    aged(1)  # 61 s old, not 11: computed again
    assert calls == [1, 1]


def test_a_stale_result_past_its_ttl_is_gone_not_served(manager: CacheManager) -> None:
    calls: list[int] = []

    @manager.memoize("short", ttl=100, stale_after=10)
    def short(x: int) -> int:
        calls.append(x)
        return len(calls)

    clock = in_virtual_time(short)
    assert short(1) == 1
    clock.now += 101
    assert short(1) == 2  # expired: computed in the call, like any miss
    assert isinstance(short.cache, StaleAfter)
    assert short.cache.stale(short.key_of(1)) == 2


def test_stale_after_is_refused_when_it_cannot_mean_anything(manager: CacheManager) -> None:
    def f(x: int) -> int:
        return x

    with pytest.raises(ValueError, match=r"stale_after \(10 s\) must be shorter") as caught:
        manager.memoize("bad1", ttl=10, stale_after=10)(f)
    assert "'bad1'" in str(caught.value)
    with pytest.raises(ValueError, match="stale_after must be > 0"):
        manager.memoize("bad2", stale_after=0)(f)
    with pytest.raises(ValueError, match="refresh must be 'background' or 'wait'"):
        manager.memoize("bad3", stale_after=5, refresh="later")(f)  # type: ignore[arg-type]


def test_an_async_function_serves_stale_results_while_a_task_refreshes(
    manager: CacheManager,
) -> None:
    calls: list[int] = []

    async def main() -> list[str]:
        gate = asyncio.Event()

        @manager.memoize("arate", stale_after=60)
        async def arate(x: int) -> str:
            calls.append(x)
            if len(calls) > 1:
                await gate.wait()
            return f"{x}#{len(calls)}"

        clock = in_virtual_time(arate)
        seen = [await arate(1)]
        clock.now += 61
        seen += [await arate(1) for _ in range(3)]  # stale, served; one refresh task
        gate.set()
        for _ in range(1000):
            if (latest := await arate(1)) == "1#2":
                break
            await asyncio.sleep(0.01)
        return [*seen, latest]

    assert asyncio.run(main()) == ["1#1", "1#1", "1#1", "1#1", "1#2"]
    assert calls == [1, 1]
