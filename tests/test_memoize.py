"""manager.memoize: hits and misses, stable keys, fingerprints that reset what derives from them."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import run_python, wait_until

from cacheman import CacheManager, _registry
from cacheman._memo.memoize import MemoStats, default_name

ROOT = Path(__file__).resolve().parent.parent

# A module-level memoized function, as users write them (its cache is never opened here).
module_manager = CacheManager("test-memoize-module")


@module_manager.memoize
def module_level(x: int) -> int:
    return x


def counted(calls: list[Any]) -> Any:
    """A function that records each call in ``calls`` and returns its arguments."""

    def function(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return args, kwargs

    return function


# -- hits, misses, stats ------------------------------------------------------------


def test_second_call_is_a_hit_and_stats_count_both(manager: CacheManager) -> None:
    calls = []

    @manager.memoize
    def add(a: int, b: int = 2) -> int:
        calls.append((a, b))
        return a + b

    assert add(1, 5) == 6
    assert add(1, 5) == 6
    assert calls == [(1, 5)]
    assert add.stats == MemoStats(hits=1, misses=1, saves=0)
    assert add.stats.hits == 1


def test_positional_keyword_and_default_spellings_share_a_key(manager: CacheManager) -> None:
    calls = []

    @manager.memoize()
    def add(a: int, b: int = 2) -> int:
        calls.append((a, b))
        return a + b

    assert {add(1, 2), add(1, b=2), add(a=1, b=2), add(b=2, a=1), add(1)} == {3}
    assert len(calls) == 1
    assert add.stats.misses == 1
    assert add.stats.hits == 4


def test_positional_only_and_keyword_only_parameters(manager: CacheManager) -> None:
    calls: list[Any] = []

    @manager.memoize
    def mixed(a: int, /, b: int = 1, *rest: int, c: int = 2, **options: int) -> int:
        calls.append(a)
        return a + b + sum(rest) + c + sum(options.values())

    assert mixed(1) == mixed(1, 1) == mixed(1, b=1) == mixed(1, 1, c=2) == 4
    assert len(calls) == 1
    assert mixed(1, 1, 5) == 9
    assert mixed(1, c=2, d=3) == mixed(1, d=3, c=2) == 7
    assert len(calls) == 3
    with pytest.raises(TypeError, match="mixed"):
        mixed(a=1)  # type: ignore[call-arg]


def test_calls_that_python_refuses_are_refused(manager: CacheManager) -> None:
    @manager.memoize
    def pair(a: int, /, b: int, c: int = 0) -> int:
        return a + b + c

    for bad in [(), (1,)]:
        with pytest.raises(TypeError, match="pair"):
            pair(*bad)
    with pytest.raises(TypeError, match="pair"):
        pair(1, 2, b=2)
    with pytest.raises(TypeError, match="pair"):
        pair(1, 2, d=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="pair"):
        pair(1, c=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="pair"):
        pair(a=1, b=2)  # type: ignore[call-arg]
    assert pair(1, c=3, b=2) == pair(1, 2, 3) == 6
    assert pair.stats == MemoStats(hits=1, misses=1, saves=0)


def test_var_keyword_arguments_are_order_independent(manager: CacheManager) -> None:
    calls: list[Any] = []
    options = manager.memoize(counted(calls))
    options(1, x=1, y=2)
    options(1, y=2, x=1)
    options(1, y=2, x=1, z=3)
    assert len(calls) == 2


def test_a_wrong_call_raises_like_the_function(manager: CacheManager) -> None:
    @manager.memoize
    def one(a: int) -> int:
        return a

    with pytest.raises(TypeError, match="one"):
        one(1, 2, 3)
    with pytest.raises(TypeError):
        one(b=1)


def test_results_are_kept_in_the_named_cache(manager: CacheManager) -> None:
    @manager.memoize("squares")
    def square(x: int) -> int:
        return x * x

    square(3)
    assert square.cache is manager.retrieve_raise("squares")
    assert list(square.cache.values()) == [9]
    assert square.name == "squares"


def test_none_results_are_cached(manager: CacheManager) -> None:
    calls: list[Any] = []

    @manager.memoize
    def nothing(x: int) -> None:
        calls.append(x)

    assert nothing(1) is None
    assert nothing(1) is None
    assert calls == [1]


def test_works_as_a_method_with_a_key_for_the_instance(manager: CacheManager) -> None:
    calls: list[Any] = []

    class Scaler:
        def __init__(self, factor: int) -> None:
            self.factor = factor

        # A local class cannot be pickled, so key= says what identifies a call.
        @manager.memoize(key=lambda self, x: (self.factor, x))
        def scale(self, x: int) -> int:
            calls.append(x)
            return self.factor * x

    assert Scaler(2).scale(3) == 6
    assert Scaler(2).scale(3) == 6
    assert Scaler(3).scale(3) == 9
    assert calls == [3, 3]


def test_key_function_decides_what_identifies_a_call(manager: CacheManager) -> None:
    calls: list[Any] = []
    by_first = manager.memoize(key=lambda a, *rest, **kw: a)(counted(calls))
    by_first(1, object())
    by_first(1, object())
    by_first(2, object())
    assert len(calls) == 2


def test_a_module_level_memoized_function_pickles_by_reference() -> None:
    import pickle

    assert pickle.loads(pickle.dumps(module_level)) is module_level


def test_a_callable_without_python_code_is_refused_at_decoration(manager: CacheManager) -> None:
    import functools

    with pytest.raises(TypeError, match="check_code=False"):
        manager.memoize("partial")(functools.partial(max, 0))
    loose = manager.memoize("partial", check_code=False)(functools.partial(max, 0))
    assert loose(5) == 5
    assert loose(5) == 5
    assert loose.stats.hits == 1


def test_unpicklable_argument_is_refused_with_a_hint(manager: CacheManager) -> None:
    @manager.memoize
    def call(function: Any) -> Any:
        return function()

    with pytest.raises(TypeError, match="key="):
        call(lambda: 1)


# -- keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (1, 1.0),
        (1, True),
        (1.0, True),
        (0, False),
        (("a",), ["a"]),
        ("1", b"1"),
        (b"1", bytearray(b"1")),
        ({1, 2}, frozenset({1, 2})),
        ({1, 2}, [1, 2]),
        ({"a": 1}, [("a", 1)]),
        ((1, 2), (2, 1)),
        (("ab", "c"), ("a", "bc")),
        ([[1], 2], [1, [2]]),
        (None, "None"),
        (-0.0, 0.0),
        ([1.0], [1]),
    ],
)
def test_different_values_get_different_keys(manager: CacheManager, one: Any, other: Any) -> None:
    function = manager.memoize(counted([]))
    assert function.key_of(one) != function.key_of(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}),
        ({"x", "y", "z", 1, 2.5}, {2.5, 1, "z", "y", "x"}),
        ({1: {"k": {3, 4}}}, {1: {"k": {4, 3}}}),
        ([1, {"a"}, {"b": 2}], [1, {"a"}, {"b": 2}]),
        pytest.param(10**5000, 10**5000, id="int-too-long-for-str"),
    ],
)
def test_equal_unhashable_values_share_a_key(manager: CacheManager, one: Any, other: Any) -> None:
    calls: list[Any] = []
    function = manager.memoize(counted(calls))
    function(one)
    function(other)
    assert len(calls) == 1
    assert function.key_of(one) == function.key_of(other)


def test_equal_strings_share_a_key_whether_interned_or_one_object(manager: CacheManager) -> None:
    import sys

    function = manager.memoize(counted([]))
    built = "".join(["memo", "ize"])
    assert built is not "memoize"  # noqa: F632 (two objects, one value)
    one = function.key_of("memoize", "memoize")
    assert one == function.key_of("memoize", built)
    assert one == function.key_of(sys.intern(built), built)
    assert one == function.key_of(*("memoize",) * 2)


def test_dataclass_arguments_are_keyed_by_their_fields(manager: CacheManager) -> None:
    from dataclasses import dataclass

    @dataclass
    class Point:
        x: int
        tags: set[str]

    function = manager.memoize(counted([]))
    assert function.key_of(Point(1, {"a", "b"})) == function.key_of(Point(1, {"b", "a"}))
    assert function.key_of(Point(1, set())) != function.key_of(Point(2, set()))


def test_numpy_arrays_are_keyed_by_dtype_shape_and_data(manager: CacheManager) -> None:
    numpy = pytest.importorskip("numpy")
    calls: list[Any] = []
    function = manager.memoize(counted(calls))
    grid = numpy.arange(12, dtype="int64").reshape(3, 4)
    key = function.key_of
    assert key(grid) == key(grid.copy())
    assert key(grid[:, ::2]) == key(numpy.ascontiguousarray(grid[:, ::2]))
    assert key(grid) != key(grid.astype("int32"))
    assert key(grid) != key(grid.reshape(4, 3))
    assert key(grid) != key(grid + 1)
    assert key(numpy.float64(1.5)) != key(1.5)
    assert key(numpy.array(["a", None], dtype=object)) == key(
        numpy.array(["a", None], dtype=object)
    )
    function(grid)
    function(grid.copy())
    assert len(calls) == 1


# -- persistence across processes ------------------------------------------------------

SCRIPT = """
import json, sys
from cacheman import CacheManager, _registry

manager = CacheManager("memo", sys.argv[1])
report = manager.register_cache("report")
calls = []

@manager.memoize("upstream", version=VERSION)
def upstream(x):
    calls.append(("upstream", x))
    return UPSTREAM_BODY

@manager.memoize("downstream", depends_on=[upstream])
def downstream(x):
    calls.append(("downstream", x))
    return [upstream(x), type(x).__name__]

manager.register_dependent_cache("upstream", "report")
results = [downstream(value) for value in ARGUMENTS]
fresh = len(report) == 0
report["runs"] = report.get("runs", 0) + 1
print(json.dumps({
    "results": results,
    "calls": len(calls),
    "upstream": upstream.stats._asdict(),
    "downstream": downstream.stats._asdict(),
    "report_fresh": fresh,
}))
"""

ARGUMENTS = """[
    "text", "ünïcode", b"bytes", 1, 1.0, True, None, (1, "a", (2.5, b"x")),
    [1, 2], {"b": 1, "a": [2, 3]}, {"x", "y", "z", "w"}, frozenset({3, 4}),
]"""


def run_script(
    tmp_path: Path,
    *,
    body: str = "len(repr(x))",
    version: str = "None",
    seed: str = "0",
    prefix: str = "",
) -> dict[str, Any]:
    """Run SCRIPT in a fresh interpreter, with ``upstream`` returning ``body``."""
    script = tmp_path / "memo_script.py"
    text = SCRIPT.replace("UPSTREAM_BODY", body).replace("VERSION", version)
    script.write_text(prefix + text.replace("ARGUMENTS", ARGUMENTS))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}
    done = run_python(str(script), str(tmp_path / "caches"), env=env)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.slow
def test_a_second_process_gets_hits_for_the_first_ones_calls(tmp_path: Path) -> None:
    first = run_script(tmp_path, seed="1")
    assert first["calls"] == 24
    assert first["upstream"]["misses"] == 12
    # A different hash seed: keys must not depend on the salted hash() of str.
    second = run_script(tmp_path, seed="2")
    assert second["calls"] == 0
    assert second["downstream"] == {"hits": 12, "misses": 0, "saves": 0}
    assert second["results"] == first["results"]
    assert second["report_fresh"] is False


@pytest.mark.slow
def test_a_code_change_resets_the_memo_and_everything_downstream(tmp_path: Path) -> None:
    run_script(tmp_path)
    unchanged = run_script(tmp_path)
    assert unchanged["calls"] == 0
    assert unchanged["report_fresh"] is False

    changed = run_script(tmp_path, body="len(repr(x)) + 1000")
    # upstream's code changed: it recomputes, so does downstream (it depends on
    # upstream), and the cache derived from upstream was reset.
    assert changed["upstream"]["misses"] == 12
    assert changed["downstream"]["misses"] == 12
    assert changed["report_fresh"] is True
    assert changed["results"][0][0] == 1006

    again = run_script(tmp_path, body="len(repr(x)) + 1000")
    assert again["calls"] == 0
    assert again["report_fresh"] is False


@pytest.mark.slow
def test_moving_the_code_or_renaming_a_local_keeps_the_results(tmp_path: Path) -> None:
    run_script(tmp_path, body="(lambda value: len(repr(value)))(x)")
    moved = run_script(tmp_path, body="(lambda value: len(repr(value)))(x)", prefix="\n# moved\n\n")
    assert moved["calls"] == 0
    renamed = run_script(tmp_path, body="(lambda other_name: len(repr(other_name)))(x)")
    assert renamed["calls"] == 0
    assert renamed["report_fresh"] is False


@pytest.mark.slow
def test_a_version_bump_resets_across_runs(tmp_path: Path) -> None:
    run_script(tmp_path, version="1")
    assert run_script(tmp_path, version="1")["calls"] == 0
    bumped = run_script(tmp_path, version="2")
    assert bumped["calls"] == 24
    assert bumped["report_fresh"] is True


def test_version_bump_resets_the_cache_and_a_derived_cache(manager: CacheManager) -> None:
    calls: list[Any] = []
    first = manager.memoize("work", version=1)(counted(calls))
    first(1)
    first.cache.save()
    derived = manager.register_cache("derived", {"kept": 1})
    manager.register_dependent_cache("work", "derived")
    derived.save()

    second = manager.memoize("work", version=2)(counted(calls))
    second(1)
    assert len(calls) == 2
    assert derived == {}
    assert not manager.store.exists("derived")

    third = manager.memoize("work", version=2)(counted(calls))
    third(1)
    assert len(calls) == 2  # same version: the saved results are kept


def test_check_code_false_ignores_the_code(manager: CacheManager) -> None:
    calls: list[Any] = []

    @manager.memoize("loose", check_code=False)
    def one(x: int) -> int:
        calls.append(x)
        return x

    one(1)
    one.cache.save()

    # The same function, edited (redefined under its own name, as a re-run cell does).
    @manager.memoize("loose", check_code=False)  # type: ignore[no-redef]
    def one(x: int) -> int:
        calls.append(x)
        return x + 100

    assert one(1) == 1
    assert calls == [1]


def test_the_fingerprint_is_saved_beside_the_cache(manager: CacheManager) -> None:
    @manager.memoize("fp")
    def one(x: int) -> int:
        return x

    one(1)
    # Written when the (empty) cache opens: another process opening it before the first
    # save lands must not take the results it will find for stale ones.
    assert (manager.store.read_meta("fp") or {}).get("fingerprint") == one.fingerprint
    one.cache.save()
    assert (manager.store.read_meta("fp") or {}).get("fingerprint") == one.fingerprint


# -- dependencies ------------------------------------------------------------------------


def test_invalidating_a_parent_cache_resets_the_memo(manager: CacheManager) -> None:
    prices = manager.register_cache("prices", {"apple": 1})
    calls: list[Any] = []

    @manager.memoize("cost", depends_on=["prices"])
    def cost(item: str) -> int:
        calls.append(item)
        return prices[item] * 10

    assert cost("apple") == 10
    cost.cache.save()
    assert manager.store.exists("cost")

    prices["apple"] = 2
    prices.save()
    manager.invalidate_cache("prices")
    assert cost.cache == {}
    assert not manager.store.exists("cost")
    assert cost("apple") == 20
    assert calls == ["apple", "apple"]


def test_depends_on_a_memoized_function_whose_code_changed(manager: CacheManager) -> None:
    @manager.memoize("base")
    def base(x: int) -> int:
        return x

    calls: list[Any] = []

    # check_code=False: only the dependency can change this one's fingerprint.
    @manager.memoize("derived", depends_on=[base], check_code=False)
    def derived(x: int) -> int:
        calls.append(x)
        return base(x) + 1

    derived(1)
    derived.cache.save()
    base.cache.save()
    before = derived.fingerprint

    @manager.memoize("base")  # type: ignore[no-redef]
    def base(x: int) -> int:
        return x * 2

    @manager.memoize("derived", depends_on=[base], check_code=False)  # type: ignore[no-redef]
    def derived(x: int) -> int:
        calls.append(x)
        return base(x) + 1

    assert derived.fingerprint != before
    assert derived(1) == 3
    assert calls == [1, 1]


def test_resetting_during_a_computation_does_not_store_a_stale_result(
    manager: CacheManager,
) -> None:
    manager.register_cache("source", {"v": 1})

    @manager.memoize("reader", depends_on=["source"])
    def reader(x: int) -> int:
        manager.invalidate_cache("source")  # the source changes while we compute
        return x

    assert reader(1) == 1
    assert reader.cache == {}


def test_bad_dependencies_are_refused(manager: CacheManager, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="depends_on"):
        manager.memoize(depends_on=[42])(counted([]))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="invalid cache name"):
        manager.memoize(depends_on=["../x"])(counted([]))
    other = CacheManager("other-memo", tmp_path / "other")
    try:
        elsewhere = other.memoize("elsewhere")(counted([]))
        with pytest.raises(ValueError, match="belongs to manager"):
            manager.memoize(depends_on=[elsewhere])(counted([]))
    finally:
        _registry.discard(other)


# -- threads and exceptions ----------------------------------------------------------------


def test_concurrent_calls_for_one_key_compute_once(manager: CacheManager) -> None:
    calls = []
    lock = threading.Lock()

    @manager.memoize
    def slow(x: int) -> int:
        with lock:
            calls.append(x)
        time.sleep(0.3)
        return x * 2

    threads = 8
    barrier = threading.Barrier(threads)
    results: list[int] = []

    def worker() -> None:
        barrier.wait()
        results.append(slow(21))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert calls == [21]
    assert results == [42] * threads
    assert slow.stats.misses == 1
    assert slow.stats.hits == threads - 1


def test_different_keys_compute_in_parallel(manager: CacheManager) -> None:
    started = threading.Barrier(2, timeout=10)

    @manager.memoize
    def meet(x: int) -> int:
        started.wait()  # both computations must be running at once to pass
        return x

    pool = [threading.Thread(target=meet, args=(i,)) for i in range(2)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert meet.stats.misses == 2
    assert not started.broken


def test_an_exception_is_raised_to_every_waiter_and_not_cached(manager: CacheManager) -> None:
    calls = []
    release = threading.Event()

    @manager.memoize
    def fails(x: int) -> int:
        calls.append(x)
        release.wait(10)
        raise ValueError(f"no result for {x}")

    errors: list[BaseException] = []

    def worker() -> None:
        try:
            fails(1)
        except ValueError as error:
            errors.append(error)

    pool = [threading.Thread(target=worker) for _ in range(4)]
    for thread in pool:
        thread.start()
    wait_until(lambda: len(calls) == 1)
    time.sleep(0.5)  # let the other threads reach the wait
    release.set()
    for thread in pool:
        thread.join()
    assert calls == [1]
    assert len(errors) == 4
    assert all(str(error) == "no result for 1" for error in errors)
    # The user's error, not chained to the cache's internal KeyError.
    assert all(error.__context__ is None for error in errors)
    assert fails.cache == {}

    with pytest.raises(ValueError, match="no result"):
        fails(1)
    assert calls == [1, 1]  # not cached: it ran again


def test_waiters_compute_themselves_when_the_computing_thread_is_interrupted(
    manager: CacheManager,
) -> None:
    calls = []
    release = threading.Event()

    @manager.memoize
    def interrupted_once(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            release.wait(10)
            raise SystemExit  # ends the first thread only, not the threads waiting on it
        return x

    def first_caller() -> None:
        with pytest.raises(SystemExit):
            interrupted_once(7)

    first = threading.Thread(target=first_caller)
    results: list[int] = []
    waiter = threading.Thread(target=lambda: results.append(interrupted_once(7)))
    first.start()
    wait_until(lambda: len(calls) == 1)
    waiter.start()
    time.sleep(0.5)  # let the waiter reach the wait
    release.set()
    first.join()
    waiter.join()
    assert results == [7]
    assert calls == [7, 7]
    assert interrupted_once(7) == 7
    assert len(calls) == 2


def test_a_forked_child_does_not_wait_for_the_parents_computations(
    manager: CacheManager,
) -> None:
    import os
    import signal

    release = threading.Event()
    started = threading.Event()

    @manager.memoize
    def blocking(x: int) -> int:
        started.set()
        release.wait(10)
        return x

    computing = threading.Thread(target=blocking, args=(5,))
    computing.start()
    started.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread computing blocking(5) does not exist here
        release.set()
        os._exit(0 if blocking(5) == 5 else 1)
    exit_codes = []

    def reaped() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            exit_codes.append(os.waitstatus_to_exitcode(status))
        return bool(done)

    try:
        wait_until(reaped, timeout=20)
        assert exit_codes == [0]
    except AssertionError:
        if not exit_codes:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    finally:
        release.set()
        computing.join()


# -- saves and clearing -------------------------------------------------------------------


def test_saves_count_completed_saves_not_loads(manager: CacheManager) -> None:
    @manager.memoize("counted-saves")
    def square(x: int) -> int:
        return x * x

    square(2)
    assert square.stats.saves == 0
    square.cache.save()
    assert square.stats.saves == 1
    manager.reload_cache("counted-saves")
    assert square.stats.saves == 1


@pytest.mark.slow
def test_a_burst_of_misses_is_saved_in_the_background(manager: CacheManager) -> None:
    @manager.memoize("burst")
    def square(x: int) -> int:
        return x * x

    for x in range(10_000):  # the default burst rule: 10,000 edits within 60 s
        square(x)
    wait_until(lambda: square.stats.saves >= 1, timeout=30)
    assert manager.store.exists("burst")
    assert (manager.store.read_meta("burst") or {}).get("fingerprint") == square.fingerprint


def test_cache_clear_empties_deletes_and_resets_downstream(manager: CacheManager) -> None:
    calls: list[Any] = []
    function = manager.memoize("cleared")(counted(calls))
    function(1)
    function(1)
    function.cache.save()
    derived = manager.register_cache("after", {"a": 1})
    manager.register_dependent_cache("cleared", "after")
    derived.save()

    function.cache_clear()
    assert function.cache == {}
    assert not manager.store.exists("cleared")
    assert derived == {}
    assert not manager.store.exists("after")
    assert function.stats == MemoStats(0, 0, 0)
    function(1)
    assert len(calls) == 2


# -- names ---------------------------------------------------------------------------------


def test_default_name_is_module_and_qualname(manager: CacheManager) -> None:
    def local() -> None:
        pass

    memo = manager.memoize(local)
    assert memo.name == f"{__name__}.{local.__qualname__}"
    assert "<locals>" in memo.name


def test_default_name_maps_what_a_name_cannot_hold() -> None:
    def function() -> None:
        pass

    function.__qualname__ = "a/b\\c\nd"
    assert default_name(function).endswith("a_b_c_d")
    function.__qualname__ = "x" * 500
    long_one = default_name(function)
    function.__qualname__ = "x" * 499 + "y"
    assert len(long_one.encode()) <= 200
    assert default_name(function) != long_one


def test_an_invalid_explicit_name_is_refused(manager: CacheManager) -> None:
    with pytest.raises(ValueError, match="invalid cache name"):
        manager.memoize("a/b")(counted([]))


# -- async def ---------------------------------------------------------------------------


def test_an_async_function_is_awaited_once_and_its_result_stored(manager: CacheManager) -> None:
    import asyncio

    calls: list[int] = []

    @manager.memoize("fetch")
    async def fetch(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return x * 10

    async def main() -> list[int]:
        # The second await was "cannot reuse already awaited coroutine" before.
        return [await fetch(1), await fetch(1), await fetch(x=2), await fetch(2)]

    assert asyncio.iscoroutinefunction(fetch)  # frameworks check before awaiting
    assert asyncio.run(main()) == [10, 10, 20, 20]
    assert calls == [1, 2]
    assert fetch.stats == MemoStats(hits=2, misses=2, saves=0)
    fetch.cache.save()  # results, not coroutines: the save works
    manager.deregister_all_caches()
    again = CacheManager(manager.name, manager.cache_directory.parent)
    assert sorted(again.register_cache("fetch").values()) == [10, 20]
    again.deregister_all_caches()


def test_ten_thousand_concurrent_awaits_of_one_key_run_the_function_once(
    manager: CacheManager,
) -> None:
    import asyncio

    calls: list[int] = []

    async def main() -> list[int]:
        release = asyncio.Event()

        @manager.memoize("slow")
        async def slow(x: int) -> int:
            calls.append(x)
            await release.wait()
            return x + 1

        waiting = [asyncio.ensure_future(slow(5)) for _ in range(10_000)]
        await asyncio.sleep(0)  # every task has started and is waiting now
        release.set()
        return await asyncio.gather(*waiting)

    assert asyncio.run(main()) == [6] * 10_000
    assert calls == [5]


def test_an_async_exception_reaches_every_awaiter_and_is_not_cached(
    manager: CacheManager,
) -> None:
    import asyncio

    calls: list[int] = []

    async def main() -> list[object]:
        release = asyncio.Event()

        @manager.memoize("fails")
        async def fails(x: int) -> int:
            calls.append(x)
            await release.wait()
            if len(calls) == 1:
                raise ValueError("first time")
            return x

        waiting = [asyncio.ensure_future(fails(1)) for _ in range(3)]
        await asyncio.sleep(0)
        release.set()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        return [*outcomes, await fails(1)]

    outcomes = asyncio.run(main())
    assert [type(each).__name__ for each in outcomes[:3]] == ["ValueError"] * 3
    assert outcomes[3] == 1
    assert calls == [1, 1]


def test_a_cancelled_async_computation_lets_its_awaiters_compute(manager: CacheManager) -> None:
    import asyncio

    calls: list[str] = []

    async def main() -> int:
        started = asyncio.Event()
        release = asyncio.Event()

        @manager.memoize("cancelled")
        async def work(x: int) -> int:
            calls.append("start")
            started.set()
            await release.wait()
            return x

        first = asyncio.ensure_future(work(3))
        await started.wait()
        second = asyncio.ensure_future(work(3))  # waits for the first
        await asyncio.sleep(0)
        first.cancel()
        release.set()
        return await second

    assert asyncio.run(main()) == 3
    assert calls == ["start", "start"]


def test_async_calls_from_two_event_loops_compute_once(manager: CacheManager) -> None:
    import asyncio

    calls: list[int] = []
    entered = threading.Event()
    release = threading.Event()

    @manager.memoize("two_loops")
    async def work(x: int) -> int:
        calls.append(x)
        entered.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        return x * 2

    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(asyncio.run(work(4))))
    first.start()
    entered.wait(10)
    second = threading.Thread(target=lambda: results.append(asyncio.run(work(4))))
    second.start()
    wait_until(lambda: work._calls.get(work.key_of(4)) is not None and second.is_alive())
    release.set()
    first.join(10)
    second.join(10)
    assert results == [8, 8]
    assert calls == [4]


# -- results that cannot be saved, names, what a reset says ---------------------------------


def test_an_unpicklable_result_is_returned_not_stored_and_the_others_are_saved(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    @manager.memoize("mixed")
    def make(kind: str) -> object:
        return threading.Lock() if kind == "lock" else kind.upper()

    assert make("a") == "A"
    assert type(make("lock")) is type(threading.Lock())
    assert type(make("lock")) is type(threading.Lock())  # computed again: nothing was stored
    assert make("b") == "B"
    make.cache.save()  # failed before, losing "A" and "B"
    warnings = [r for r in caplog.records if "be pickled" in r.getMessage()]
    assert len(warnings) == 1
    assert "'mixed'" in warnings[0].getMessage()
    assert "lock" in warnings[0].getMessage()
    assert make.stats.misses == 4
    assert sorted(manager.store.load("mixed").values()) == ["A", "B"]  # type: ignore[union-attr]


def test_a_second_function_under_an_existing_name_is_refused(manager: CacheManager) -> None:
    @manager.memoize("shared")
    def first(x: int) -> int:
        return x

    with pytest.raises(ValueError, match=r"'shared'.*already used by.*first"):

        @manager.memoize("shared")
        def second(x: int) -> int:
            return -x

    # The same function decorated again (an edited, re-run cell) takes the name over.
    @manager.memoize("shared")  # type: ignore[no-redef]
    def first(x: int) -> int:  # noqa: F811
        return x + 1

    assert first(1) == 2


def test_a_code_change_reset_is_a_warning_naming_the_changed_helper(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    def rate() -> int:
        return 2

    @manager.memoize("priced")
    def priced(x: int) -> int:
        return x * rate()

    assert priced(3) == 6
    priced.cache.save()

    def rate() -> int:  # type: ignore[no-redef]  # noqa: F811
        return 5

    @manager.memoize("priced")  # type: ignore[no-redef]
    def priced(x: int) -> int:
        return x * rate()

    caplog.clear()
    assert priced(3) == 15  # a helper seen through the closure: the old result is not served
    [record] = [r for r in caplog.records if "reset, with every cache" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert "rate changed" in record.getMessage()


def test_a_memoized_function_whose_cache_was_deregistered_registers_it_again(
    manager: CacheManager,
) -> None:
    @manager.memoize("kept")
    def kept(x: int) -> int:
        return x * 3

    assert kept(1) == 3
    manager.deregister_all_caches()
    assert not manager.cache_registered("kept")
    assert kept(2) == 6  # computed before into a cache nothing saved
    assert manager.cache_registered("kept")
    assert manager.holds(kept.cache)
    manager.save_all_cache_contents()
    # (What was computed before is gone with the deregistered object: deregistering saves nothing.)
    assert manager.store.load("kept") == {kept.key_of(2): 6}
    manager.deregister_cache("kept")
    assert kept(4) == 12
    assert manager.holds(kept.cache)


def test_a_memoized_function_of_a_closed_manager_raises(manager: CacheManager) -> None:
    from cacheman.errors import ManagerClosedError

    calls: list[int] = []

    @manager.memoize("closing")
    def closing(x: int) -> int:
        calls.append(x)
        return x

    closing(1)
    manager.close()
    assert closing(1) == 1  # a hit: the results it holds are still there to read
    with pytest.raises(ManagerClosedError, match=r"'closing'.*closed"):
        closing(2)  # a miss would compute into a cache nobody saves
    assert calls == [1]


# -- one computation per key across processes ----------------------------------------------


def _stress() -> Any:
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import lease_stress

    return lease_stress


def test_processes_missing_the_same_keys_compute_each_once_despite_sigkills(
    tmp_path: Path,
) -> None:
    report = _stress().run(3, 30, 2, tmp_path, deadline=240)
    assert report.killed == 2
    assert report.errors == []
    assert (report.duplicates, report.lost, report.bad_reads, report.hung) == (0, 0, 0, False)


def test_processes_on_redis_compute_each_key_once_despite_sigkills(
    tmp_path: Path, redis_url: str
) -> None:
    report = _stress().run(3, 20, 1, tmp_path, redis_url=redis_url, deadline=240)
    assert report.killed == 1
    assert report.errors == []
    assert (report.duplicates, report.lost, report.bad_reads, report.hung) == (0, 0, 0, False)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sixteen_processes_by_a_thousand_cold_keys_with_sigkills(tmp_path: Path) -> None:
    report = _stress().run(16, 1000, 10, tmp_path, deadline=1500)
    assert report.killed == 10
    assert report.errors == []
    assert (report.duplicates, report.lost, report.bad_reads, report.hung) == (0, 0, 0, False)


def test_a_lease_held_too_long_is_waited_for_then_computed_with_a_warning(
    manager: CacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    from cacheman._memo.leases import FileLeases

    calls: list[int] = []

    @manager.memoize("leased", lease=True, lease_timeout=0.2)
    def leased(x: int) -> int:
        calls.append(x)
        return x + 1

    assert leased(1) == 2  # no one else holds it
    held = FileLeases(manager.store, "leased").acquire(leased.key_of(2))  # type: ignore[arg-type]
    assert held is not None  # as a hung process would
    try:
        assert leased(2) == 3
    finally:
        held.release()
    assert calls == [1, 2]
    assert any("held a key's lease" in r.getMessage() for r in caplog.records)


def test_a_redis_lease_is_kept_alive_while_its_holder_computes(redis_url: str) -> None:
    from cacheman import RedisStore
    from cacheman._memo.leases import RedisLeases

    store = RedisStore(redis_url, manager="lease_heartbeat")
    holder = RedisLeases(store, "long", timeout=0.3)
    other = RedisLeases(store, "long", timeout=0.3)  # as another process would ask
    try:
        held = holder.acquire(b"key")
        assert held is not None
        # The computation under test outlasts the lease timeout several times over.
        threading.Event().wait(1.2)
        assert other.acquire(b"key") is None  # still held: nobody computes it a second time
        held.release()
        taken = other.acquire(b"key")
        assert taken is not None
        taken.release()
    finally:
        store.close()
    # With no lease held, no thread is left beating.
    wait_until(lambda: not any(t.name.startswith("cacheman-lease") for t in threading.enumerate()))


def test_an_async_function_waits_for_a_lease_without_blocking_its_loop(
    manager: CacheManager,
) -> None:
    import asyncio

    from cacheman._memo.leases import FileLeases

    @manager.memoize("aleased", lease=True, lease_timeout=30)
    async def aleased(x: int) -> int:
        return x * 5

    leases = FileLeases(manager.store, "aleased")  # type: ignore[arg-type]

    async def main() -> tuple[int, list[str]]:
        held = leases.acquire(aleased.key_of(3))
        assert held is not None
        ticks: list[str] = []
        waiting = asyncio.ensure_future(aleased(3))
        for _ in range(3):  # the loop keeps running while the call waits for the lease
            await asyncio.sleep(0)
            ticks.append("tick")
        assert not waiting.done()
        held.release()
        return await waiting, ticks

    assert asyncio.run(main()) == (15, ["tick"] * 3)


def test_lease_auto_takes_leases_once_a_computation_was_slow(
    manager: CacheManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cacheman._memo import memoize as _memoize

    @manager.memoize("auto")
    def auto(x: int) -> int:
        return x

    monkeypatch.setattr(_memoize, "LEASE_AUTO_SECONDS", 3600.0)
    auto(1)
    assert auto._leases_for(auto.cache) is None  # fast: no lease, no save per miss
    monkeypatch.setattr(_memoize, "LEASE_AUTO_SECONDS", 0.0)
    auto(2)
    assert auto._leases_for(auto.cache) is not None
    auto(3)
    assert (manager.cache_directory / ".auto.leases").is_dir()
    # Published at once (with the result still pending before), not at the next autosave.
    assert manager.store.load("auto") == {auto.key_of(x): x for x in (1, 2, 3)}
