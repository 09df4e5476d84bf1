"""Benchmark CacheMan against diskcache, joblib.Memory, cachier, cachetools and shelve.

The numbers behind docs/compared.rst.  Every library stores the same entries
(``bench_core.entries``: string keys, small tuples) in a temporary directory, in
this one run, alternating the libraries over the repeats so that drift hits all
alike; each number is the best of the repeats.  Three costs, per entry:

* **store**: make ``n`` entries durable, from an empty store.  CacheMan: fill a
  cache, then ``save()`` (one snapshot write); diskcache and shelve: assign each
  entry (diskcache writes SQLite per assignment; shelve writes to its dbm file,
  then ``close()``); joblib.Memory and cachier: ``n`` calls of a memoized
  function that each compute a new entry (a miss: each stores its result).
  cachetools keeps entries in memory only: its "store" is filling an LRUCache,
  shown for scale.
* **reopen + read**: in a fresh object on the same directory, read all ``n``
  entries back (for the memoizers: ``n`` calls that are all hits).
* **hit**: one read of a stored entry from an open store (``c[k]``, or a
  memoized call that hits).

``x cacheman`` is the ratio to CacheMan's number in the same run.  joblib.Memory
and cachier store one file (cachier: rewrites one file) per call, so they are
timed over fewer entries; every number is per entry, so the ratios compare.
A peer that is not installed is skipped with a note (``pip install
cacheman[bench]`` installs them); cachetools and shelve are always run.

Run ``python benchmarks/bench_compare.py`` (``--quick`` for fewer entries and
repeats, ``--rst`` to print the table as reStructuredText for the docs).  There
are no targets: this compares, it does not judge (the exit status is 0).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import shelve
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

from _report import print_columns, verdict
from bench_core import entries

from cacheman import CacheManager, _registry

Data = dict[str, tuple[int, float, str]]


@dataclass
class Times:
    """Seconds per entry of each cost; None when it does not apply."""

    store: float | None
    reopen: float | None
    hit: float | None


class Library:
    """How one library stores, reopens and reads ``data`` under ``directory``."""

    name = ""
    module: str | None = None  # must be importable, else the library is skipped
    #: Entries it is timed over, as a share of the run's ``n`` (slow per-call stores get less).
    share = 1.0
    note = ""

    def run(self, directory: Path, data: Data) -> Times:
        raise NotImplementedError


def _timed(function: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _hits(read: Callable[[str], object], keys: list[str]) -> float:
    """Seconds per read, the best of three passes over ``keys`` (a pass is short)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for key in keys:
            read(key)
        best = min(best, time.perf_counter() - start)
    return best / len(keys)


_runs = count()


class CacheMan(Library):
    name = "cacheman"
    note = "PersistentCache: fill, then save(); reopen = register (load)"

    def run(self, directory: Path, data: Data) -> Times:
        keys = list(data)
        manager_name = f"bench-{next(_runs)}"
        manager = CacheManager(manager_name, directory)

        def store() -> None:
            cache = manager.register_custom_cache("compare", autosync=False)
            cache.update(data)
            cache.save()

        stored = _timed(store)
        manager.deregister_all_caches()
        reader = CacheManager(manager_name, directory)
        opened: dict[str, Any] = {}

        def reopen() -> None:
            cache = reader.register_custom_cache("compare", autosync=False)
            opened["cache"] = cache
            for key in keys:
                cache[key]

        reopened = _timed(reopen)
        hit = _hits(opened["cache"].__getitem__, keys)
        for each in (manager, reader):
            each.deregister_all_caches()
            _registry.discard(each)
        return Times(stored / len(data), reopened / len(data), hit)


class DiskCache(Library):
    name = "diskcache"
    module = "diskcache"
    note = "Cache (SQLite): c[k] = v each; reopen = Cache(dir)"

    def run(self, directory: Path, data: Data) -> Times:
        from diskcache import Cache

        path = str(directory / "diskcache")
        keys = list(data)

        def store() -> None:
            with Cache(path) as cache:
                for key, value in data.items():
                    cache[key] = value

        stored = _timed(store)
        opened: dict[str, Any] = {}

        def reopen() -> None:
            cache = opened["cache"] = Cache(path)
            for key in keys:
                cache[key]

        reopened = _timed(reopen)
        hit = _hits(opened["cache"].__getitem__, keys)
        opened["cache"].close()
        return Times(stored / len(data), reopened / len(data), hit)


class Shelve(Library):
    name = "shelve (stdlib)"
    note = "shelve.open (dbm): d[k] = v each, close(); reopen = shelve.open"

    def run(self, directory: Path, data: Data) -> Times:
        path = str(directory / "shelf")
        keys = list(data)

        def store() -> None:
            with shelve.open(path) as shelf:
                for key, value in data.items():
                    shelf[key] = value

        stored = _timed(store)
        opened: dict[str, Any] = {}

        def reopen() -> None:
            # Left open for the hits below, and closed after them.
            shelf = opened["shelf"] = shelve.open(path, flag="r")  # noqa: SIM115
            for key in keys:
                shelf[key]

        reopened = _timed(reopen)
        hit = _hits(opened["shelf"].__getitem__, keys)
        opened["shelf"].close()
        return Times(stored / len(data), reopened / len(data), hit)


class CacheTools(Library):
    name = "cachetools"
    module = "cachetools"
    note = "LRUCache, memory only: nothing survives a restart"

    def run(self, directory: Path, data: Data) -> Times:
        from cachetools import LRUCache

        cache: LRUCache[str, Any] = LRUCache(maxsize=len(data))
        stored = _timed(lambda: cache.update(data))
        return Times(stored / len(data), None, _hits(cache.__getitem__, list(data)))


def _memoized_timings(
    make: Callable[[Callable[[str], Any]], Callable[[str], Any]], data: Data
) -> Times:
    """store = n misses, reopen = n hits on a fresh memoized function, hit = warm hits."""
    keys = list(data)

    def compute(key: str) -> Any:
        return data[key]

    first = make(compute)
    stored = _timed(lambda: [first(key) for key in keys])
    again = make(compute)
    reopened = _timed(lambda: [again(key) for key in keys])
    return Times(stored / len(keys), reopened / len(keys), _hits(again, keys))


class JoblibMemory(Library):
    name = "joblib.Memory"
    module = "joblib"
    share = 0.02
    note = "Memory(dir).cache(f): a miss stores f(k), one directory per call"

    def run(self, directory: Path, data: Data) -> Times:
        from joblib import Memory

        location = directory / "joblib"
        return _memoized_timings(lambda f: Memory(location, verbose=0).cache(f), data)


class Cachier(Library):
    name = "cachier"
    module = "cachier"
    share = 0.02
    note = "@cachier(cache_dir=...): a miss rewrites the function's pickle file"

    def run(self, directory: Path, data: Data) -> Times:
        from cachier import cachier

        location = directory / "cachier"
        return _memoized_timings(cachier(cache_dir=location, separate_files=False), data)


LIBRARIES: list[Library] = [
    CacheMan(),
    DiskCache(),
    Shelve(),
    CacheTools(),
    JoblibMemory(),
    Cachier(),
]


def measure(libraries: list[Library], n: int, repeats: int) -> dict[str, tuple[Times, int]]:
    """The best time per entry of each cost, for each library, over ``repeats`` rounds."""
    best: dict[str, tuple[Times, int]] = {}
    for _ in range(repeats):
        for library in libraries:
            size = max(20, int(n * library.share))
            data = entries(size)
            with tempfile.TemporaryDirectory(prefix="cacheman-compare-") as directory:
                times = library.run(Path(directory), data)
            old = best.get(library.name)
            if old is not None:
                times = Times(
                    *(
                        _least(a, b)
                        for a, b in zip(vars(old[0]).values(), vars(times).values(), strict=True)
                    )
                )
            best[library.name] = (times, size)
    return best


def _least(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _ratio(value: float | None, ours: float | None) -> str:
    if value is None or ours is None or ours == 0:
        return "-"
    return f"{value / ours:.1f}"


def _us(value: float | None, scale: float = 1e6) -> str:
    return "-" if value is None else f"{value * scale:.2f}"


def table(
    results: dict[str, tuple[Times, int]], skipped: dict[str, str]
) -> tuple[list[str], list[list[str]]]:
    ours = results["cacheman"][0]
    header = [
        "library",
        "entries",
        "store (us/entry)",
        "x cacheman",
        "reopen + read (us/entry)",
        "x cacheman",
        "hit (ns)",
        "x cacheman",
    ]
    lines = []
    for library in LIBRARIES:
        if library.name in skipped:
            lines.append([library.name, "-", "-", "-", "-", "-", "-", skipped[library.name]])
            continue
        times, size = results[library.name]
        lines.append(
            [
                library.name,
                f"{size:,}",
                _us(times.store),
                _ratio(times.store, ours.store),
                _us(times.reopen),
                _ratio(times.reopen, ours.reopen),
                _us(times.hit, 1e9),
                _ratio(times.hit, ours.hit),
            ]
        )
    return header, lines


def print_rst(header: list[str], lines: list[list[str]]) -> None:
    print(".. list-table::")
    print("   :header-rows: 1")
    print()
    for row in [header, *lines]:
        print(f"   * - {row[0]}")
        for cell in row[1:]:
            print(f"     - {cell}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer entries and repeats")
    parser.add_argument("--rst", action="store_true", help="print the table as reStructuredText")
    args = parser.parse_args(argv)
    n, repeats = (2_000, 2) if args.quick else (20_000, 5)
    libraries, skipped = [], {}
    for library in LIBRARIES:
        if library.module is not None and importlib.util.find_spec(library.module) is None:
            skipped[library.name] = f"skipped: {library.module} is not installed"
        else:
            libraries.append(library)
    results = measure(libraries, n, repeats)
    header, lines = table(results, skipped)
    print(
        f"compare benchmark, Python {sys.version.split()[0]}, best of {repeats} repeats, "
        f"up to {n:,} entries"
    )
    if args.rst:
        print_rst(header, lines)
    else:
        print_columns(header, lines)
    print()
    for library in LIBRARIES:
        print(f"{library.name}: {library.note}")
    return verdict([])


if __name__ == "__main__":
    sys.exit(main())
