"""Benchmark the core speed targets: reads, save, load and memory of a real cache.

Every row is a ratio between a CacheMan operation and its floor, both timed in
this one run (the minimum over several repeats, alternating the two sides), so
a noisy or slow machine moves both sides alike.  Rows:

* ``c[k]``, ``c.get(k)``, ``k in c`` on a hit, for an AutoSyncCache from
  ``manager.register_cache`` and for a PersistentCache, against a bare
  ``class D(dict): pass`` (the target) and against a plain ``dict`` (reported).
* ``save()`` of N entries through the cache, against ``pickle.dump`` (protocol 5)
  of the same dict to a file plus ``fsync``.  A cache tracks the keys it
  changes, and a save writes only those, so a second ``save()`` of an
  unchanged cache writes nothing: the row times ``mark_dirty(); save()``, which
  rewrites the whole snapshot.  Reported beside it (no target here; the
  journal's own target is in ``bench_journal.py``): ``save()`` after changing
  one key, which appends that key to the journal (an explicit save also
  checks the digests of the values that can change in place: none here).
* ``load()`` of N entries through the cache (header check, CRC-32, unpickle,
  copy into the live cache), against ``pickle.load`` of the same pickle.
* what a user does to load: ``manager.register_cache(name)`` of a saved
  N-entry cache (an AutoSyncCache) and ``PersistentCache(name)``, each timed
  until the cache is ready, against ``pickle.load`` of the same dict pickled
  raw.  A full collection runs before every timed call, so that one owed by
  earlier work does not land in a single side.
* memory of a cache holding N entries against a plain dict holding the same
  ones, measured with ``tracemalloc`` as the bytes each container allocates
  while it is filled with the same, already existing, keys and values (so the
  ratio is of the containers alone, the part CacheMan could make bigger).  The
  target is the steady state: an autosync cache filled, then saved.  Until a
  save, a cache also holds the set of keys it changed (one set entry per key,
  freed when the save lands); that case is reported for information.

* the save model (issue 12): a process that only read a cache of lists exits
  writing nothing (the files untouched), at the cost of one pickling of its
  values, against ``pickle.dumps`` of the same dict; the first ``save()`` after
  ``update()`` of N keys into an empty cache, against ``pickle.dump`` + fsync;
  a one-key ``save()`` right after a load, p99 over 50 saves, against 2 ms; a
  whole save and a load of N *mixed* values (dicts, tuples, strings), against
  raw pickle.

Run ``python benchmarks/bench_core.py`` (1,000,000 entries) or ``--quick``
(100,000 entries, fewer repeats).  The exit status is 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import statistics
import sys
import tempfile
import time
import timeit
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _report import print_columns, verdict

from cacheman import CacheManager, PersistentCache, TimeCount

READ_TARGET = 1.10
SAVE_TARGET = 1.15
#: A read-only exit costs at most one pickle.dumps of the cache (issue 12).
READ_ONLY_EXIT_TARGET = 1.0
#: p99 of a one-key save() right after a load, whatever the cache size (issue 12).
ONE_KEY_SAVE_SECONDS = 0.002
LOAD_TARGET = 1.15
REGISTER_TARGET = 1.15
MEMORY_TARGET = 1.05


@dataclass
class Row:
    """One line of the table: what was measured, the ratio, and its target (if any)."""

    what: str
    ratio: float
    against: str
    target: float | None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.target is None or self.ratio <= self.target


class Bare(dict[Any, Any]):
    """The floor for reads: a dict subclass that overrides nothing."""


def entries(count: int) -> dict[str, tuple[int, float, str]]:
    """A cache-like mapping: string keys, small tuples of mixed values."""
    return {f"key-{i:08d}": (i, i * 0.5, f"value {i}") for i in range(count)}


def best_of(repeats: int, *functions: Callable[[], object]) -> list[float]:
    """The shortest run of each function, alternating them so drift hits all alike."""
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            function()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def read_rows(manager: CacheManager, repeats: int, number: int) -> list[Row]:
    contents = {f"key-{i}": i for i in range(1000)}
    caches: dict[str, dict[Any, Any]] = {
        "AutoSyncCache": manager.register_cache("reads_autosync", contents),
        "PersistentCache": PersistentCache(
            "reads_persistent", cache_manager=manager, contents=contents
        ),
        "D(dict)": Bare(contents),
        "dict": dict(contents),
    }
    statements = {"c[k]": "c[k]", "c.get(k)": "c.get(k)", "k in c": "k in c"}
    rows = []
    for label, statement in statements.items():
        timers = [
            timeit.Timer(statement, globals={"c": cache, "k": "key-500"})
            for cache in caches.values()
        ]
        best = [float("inf")] * len(timers)
        for _ in range(repeats):
            for index, timer in enumerate(timers):
                best[index] = min(best[index], timer.timeit(number))
        by_kind = dict(zip(caches, best, strict=True))
        for kind in ("AutoSyncCache", "PersistentCache"):
            rows.append(
                Row(
                    f"{label} on a hit, {kind}",
                    by_kind[kind] / by_kind["D(dict)"],
                    "D(dict)",
                    READ_TARGET,
                    f"{by_kind[kind] / by_kind['dict']:.2f} x dict",
                )
            )
    return rows


def save_load_rows(manager: CacheManager, count: int, repeats: int) -> list[Row]:
    plain = entries(count)
    cache = manager.register_cache("big", plain)
    raw_path = manager.cache_directory.parent / "raw.pickle"

    def raw_dump() -> None:
        with open(raw_path, "wb") as handle:
            pickle.dump(plain, handle, 5)
            handle.flush()
            os.fsync(handle.fileno())

    def raw_load() -> None:
        with open(raw_path, "rb") as handle:
            pickle.load(handle)

    persistent = PersistentCache("big_persistent", cache_manager=manager, contents=plain)
    persistent.save()

    def whole_save() -> None:
        # A save writes only what changed: mark everything changed to time a rewrite.
        # (On an autosync cache that fires the burst rule, so a child process writes
        # it and save() waits for that child, then looks for in-place changes.)
        cache.mark_dirty()
        cache.save()

    def whole_save_persistent() -> None:
        persistent.mark_dirty()
        persistent.save()

    def one_key_save() -> None:
        cache["key-00000007"] = plain["key-00000007"]
        cache.save()

    cache.save()  # the first save writes the snapshot; the rows time later ones
    raw_save_time, save_time, persistent_time = best_of(
        repeats, raw_dump, whole_save, whole_save_persistent
    )
    manager.deregister_cache("big_persistent")
    one_key_time = best_of(repeats, one_key_save)[0]
    raw_load_time, load_time = best_of(repeats, raw_load, cache.load)
    assert cache == plain, "the benchmark cache did not round-trip"
    size = manager.store.path_for("big").stat().st_size
    return [
        Row(
            f"save() of {count:,} entries (mark_dirty(); save()), AutoSyncCache",
            save_time / raw_save_time,
            "pickle.dump+fsync",
            SAVE_TARGET,
            f"{save_time * 1000:.0f} ms vs {raw_save_time * 1000:.0f} ms, {size / 1e6:.1f} MB",
        ),
        Row(
            f"save() of {count:,} entries, PersistentCache",
            persistent_time / raw_save_time,
            "pickle.dump+fsync",
            SAVE_TARGET,
            f"{persistent_time * 1000:.0f} ms vs {raw_save_time * 1000:.0f} ms",
        ),
        Row(
            f"save() of 1 changed key in {count:,} (journal append)",
            one_key_time / save_time,
            "whole save()",
            None,
            f"{one_key_time * 1000:.1f} ms (with the in-place check)",
        ),
        Row(
            f"load() of {count:,} entries",
            load_time / raw_load_time,
            "pickle.load",
            LOAD_TARGET,
            f"{load_time * 1000:.0f} ms vs {raw_load_time * 1000:.0f} ms",
        ),
    ]


def register_rows(manager: CacheManager, count: int, repeats: int) -> list[Row]:
    """Load as a user does: register a saved cache, against pickle.load of the same dict."""
    plain = entries(count)
    manager.store.save("registered", plain)
    raw_path = manager.cache_directory.parent / "raw-registered.pickle"
    with open(raw_path, "wb") as handle:
        pickle.dump(plain, handle, 5)
    del plain

    def raw_load() -> object:
        with open(raw_path, "rb") as handle:
            return pickle.load(handle)

    def register_autosync() -> object:
        return manager.register_cache("registered")

    def register_persistent() -> object:
        return PersistentCache("registered", cache_manager=manager)

    sides = {
        "raw": raw_load,
        "AutoSyncCache": register_autosync,
        "PersistentCache": register_persistent,
    }
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(repeats):
        for label, load in sides.items():
            gc.collect()
            start = time.perf_counter()
            loaded = load()
            best[label] = min(best[label], time.perf_counter() - start)
            # Freed outside the timed part: each side drops what it loaded alike.
            assert len(loaded) == count  # type: ignore[arg-type]
            if label != "raw":
                manager.deregister_cache("registered")
            del loaded
    return [
        Row(
            f"register {count:,}-entry saved cache, {kind}",
            best[kind] / best["raw"],
            "pickle.load",
            REGISTER_TARGET,
            f"{best[kind] * 1000:.0f} ms vs {best['raw'] * 1000:.0f} ms",
        )
        for kind in ("AutoSyncCache", "PersistentCache")
    ]


def allocated_while(fill: Callable[[], object]) -> tuple[int, object]:
    """Bytes still allocated after ``fill()`` returned, and what it returned."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = fill()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, result


def memory_rows(manager: CacheManager, count: int) -> list[Row]:
    items = list(entries(count).items())

    def fill_plain() -> dict[Any, Any]:
        plain: dict[Any, Any] = {}
        plain.update(items)
        return plain

    def fill_saved() -> dict[Any, Any]:
        # The steady state: filled, then saved (the save frees the set of changed keys).
        cache = manager.register_cache("memory")
        cache.update(items)
        cache.save()
        return cache

    def fill_pending() -> dict[Any, Any]:
        # Rules that never fire: the edits stay pending, so the changed keys are held.
        cache = manager.register_custom_cache(
            "memory_pending", time_checks=[TimeCount(3600, 10**12)]
        )
        cache.update(items)
        return cache

    plain_bytes, _plain = allocated_while(fill_plain)
    cache_bytes, _cache = allocated_while(fill_saved)
    pending_bytes, _pending = allocated_while(fill_pending)
    return [
        Row(
            f"memory of {count:,} entries (containers), after a save",
            cache_bytes / plain_bytes,
            "dict",
            MEMORY_TARGET,
            f"{cache_bytes / 1e6:.1f} MB vs {plain_bytes / 1e6:.1f} MB",
        ),
        Row(
            f"memory of {count:,} entries, edits pending (info)",
            pending_bytes / plain_bytes,
            "dict",
            None,
            f"{pending_bytes / 1e6:.1f} MB: + the set of changed keys, until a save",
        ),
    ]


def mixed_entries(count: int) -> dict[str, Any]:
    """String keys; values a mix of small dicts, tuples and strings, in turn."""
    kinds: list[Callable[[int], Any]] = [
        lambda i: {"id": i, "name": f"item {i}"},
        lambda i: (i, i * 0.5, f"value {i}"),
        lambda i: f"a string value number {i}",
    ]
    return {f"key-{i:08d}": kinds[i % 3](i) for i in range(count)}


def files_state(directory: Path, name: str) -> list[tuple[str, int, int]]:
    """Name, size and modification time of every file kept for cache ``name``."""
    return sorted(
        (path.name, path.stat().st_size, path.stat().st_mtime_ns)
        for path in directory.glob(f"{name}.*")
    )


def save_model_rows(manager: CacheManager, count: int, repeats: int) -> list[Row]:
    """What issue 12 asks of the save path: each row against its floor, in this run."""
    rows = [read_only_exit_row(manager, count, repeats)]
    rows.append(first_save_row(manager, count, repeats))
    rows.append(one_key_save_row(manager, count))
    rows += mixed_rows(manager, count, repeats)
    return rows


def read_only_exit_row(manager: CacheManager, count: int, repeats: int) -> Row:
    lists = {f"key-{i:08d}": [i, i * 0.5, f"value {i}"] for i in range(count)}
    manager.store.save("lists", lists)
    cache = PersistentCache("lists", cache_manager=manager)  # loads: digests taken
    before = files_state(manager.cache_directory, "lists")

    def exit_save() -> None:
        cache._save_now("exit")  # what the exit handler runs for this cache

    dumps_time, exit_time = best_of(repeats, lambda: pickle.dumps(lists, 5), exit_save)
    untouched = files_state(manager.cache_directory, "lists") == before
    manager.deregister_cache("lists")
    manager.store.delete("lists")
    return Row(
        f"exit of a process that only read {count:,} lists",
        exit_time / dumps_time if untouched else float("inf"),
        "pickle.dumps",
        READ_ONLY_EXIT_TARGET,
        f"{exit_time * 1000:.0f} ms vs {dumps_time * 1000:.0f} ms; "
        + ("nothing written" if untouched else "THE FILES WERE WRITTEN"),
    )


def first_save_row(manager: CacheManager, count: int, repeats: int) -> Row:
    plain = entries(count)
    raw_path = manager.cache_directory.parent / "raw-first.pickle"

    def raw_dump() -> None:
        with open(raw_path, "wb") as handle:
            pickle.dump(plain, handle, 5)
            handle.flush()
            os.fsync(handle.fileno())

    best_raw = best_first = float("inf")
    for _ in range(repeats):
        best_raw = min(best_raw, best_of(1, raw_dump)[0])
        cache = PersistentCache("first", cache_manager=manager)
        cache.update(plain)  # the usual build-then-save
        gc.collect()
        start = time.perf_counter()
        cache.save()
        best_first = min(best_first, time.perf_counter() - start)
        manager.deregister_cache("first")
        manager.store.delete("first")
    return Row(
        f"first save() after update() of {count:,} keys",
        best_first / best_raw,
        "pickle.dump+fsync",
        SAVE_TARGET,
        f"{best_first * 1000:.0f} ms vs {best_raw * 1000:.0f} ms",
    )


def one_key_save_row(manager: CacheManager, count: int) -> Row:
    plain = entries(count)
    manager.store.save("one_key", plain)
    del plain
    cache = PersistentCache("one_key", cache_manager=manager)  # right after a load
    times = []
    for i in range(50):
        cache[f"key-{i:08d}"] = (i, 0.0, "changed")
        start = time.perf_counter()
        cache.save()
        times.append(time.perf_counter() - start)
    manager.deregister_cache("one_key")
    manager.store.delete("one_key")
    p99 = statistics.quantiles(times, n=100, method="inclusive")[98]
    return Row(
        f"one-key save() right after a load of {count:,}, p99 of 50",
        p99 / ONE_KEY_SAVE_SECONDS,
        "2 ms",
        1.0,
        f"p99 {p99 * 1000:.2f} ms, p50 {statistics.median(times) * 1000:.2f} ms",
    )


def mixed_rows(manager: CacheManager, count: int, repeats: int) -> list[Row]:
    plain = mixed_entries(count)
    raw_path = manager.cache_directory.parent / "raw-mixed.pickle"
    cache = PersistentCache("mixed", cache_manager=manager, contents=plain)
    cache.save()

    def raw_dump() -> None:
        with open(raw_path, "wb") as handle:
            pickle.dump(plain, handle, 5)
            handle.flush()
            os.fsync(handle.fileno())

    def raw_load() -> None:
        with open(raw_path, "rb") as handle:
            pickle.load(handle)

    def whole_save() -> None:
        cache.mark_dirty()
        cache.save()

    raw_save_time, save_time = best_of(repeats, raw_dump, whole_save)
    gc.collect()
    raw_load_time, load_time = best_of(repeats, raw_load, cache.load)
    assert cache == plain, "the mixed cache did not round-trip"
    manager.deregister_cache("mixed")
    manager.store.delete("mixed")
    return [
        Row(
            f"save() of {count:,} mixed values (mark_dirty(); save())",
            save_time / raw_save_time,
            "pickle.dump+fsync",
            SAVE_TARGET,
            f"{save_time * 1000:.0f} ms vs {raw_save_time * 1000:.0f} ms",
        ),
        Row(
            f"load() of {count:,} mixed values",
            load_time / raw_load_time,
            "pickle.load",
            LOAD_TARGET,
            f"{load_time * 1000:.0f} ms vs {raw_load_time * 1000:.0f} ms (digests of the dicts)",
        ),
    ]


def print_table(rows: list[Row]) -> None:
    header = ("what", "ratio", "against", "target", "ok", "detail")
    lines = [
        (
            row.what,
            f"{row.ratio:.3f}",
            row.against,
            "-" if row.target is None else f"<= {row.target:.2f}",
            "yes" if row.passed else "NO",
            row.detail,
        )
        for row in rows
    ]
    print_columns(header, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100,000 entries, fewer repeats")
    args = parser.parse_args(argv)
    count, repeats, read_repeats, number = (
        (100_000, 5, 7, 200_000) if args.quick else (1_000_000, 7, 15, 1_000_000)
    )
    with tempfile.TemporaryDirectory(prefix="cacheman-bench-") as directory:
        manager = CacheManager("bench", Path(directory))
        rows = read_rows(manager, read_repeats, number)
        rows += save_load_rows(manager, count, repeats)
        rows += register_rows(manager, count, repeats)
        rows += memory_rows(manager, count)
        rows += save_model_rows(manager, count, repeats)
        # Deleting waits for the background saves still in flight: none of them may
        # write into (and so re-create) the directory after it is removed.
        manager.delete_all_saved_cache_contents()
        manager.deregister_all_caches()
    print(f"CacheMan core benchmark, Python {sys.version.split()[0]}, {count:,} entries")
    print_table(rows)
    return verdict([row.what for row in rows if not row.passed])


if __name__ == "__main__":
    sys.exit(main())
