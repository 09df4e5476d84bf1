"""Many processes, one cache: the cost of change tracking, and what several writers keep.

Rows:

* ``c[k] = v`` on an AutoSyncCache and on a PersistentCache, which both track
  the keys they change (so that a save writes only those, and several processes
  can write one cache), against the floor for that bookkeeping: a dict subclass
  whose ``__setitem__`` does ``dict.__setitem__`` plus ``set.add(key)``
  (target <= 1.3).  Timed in this run, the minimum of several repeats.
* 4 processes (fresh interpreters) each writing 10,000 distinct keys into one
  cache with the default rules, started together; the row is how many of the
  40,000 keys the next program loads (target: all of them).

Run ``python benchmarks/bench_processes.py`` or ``--quick`` (fewer repeats and
1,000 keys per process).  The exit status is 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import timeit
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _report import print_columns, verdict

from cacheman import CacheManager, TimeCount

WRITE_TARGET = 1.3
PROCESSES = 4

WRITER = """
import sys
from cacheman import CacheManager, TimeCount
manager = CacheManager("bench", sys.argv[1])
cache = manager.register_cache("shared")
worker, count = int(sys.argv[2]), int(sys.argv[3])
sys.stdin.read()  # start together
for i in range(count):
    cache[(worker, i)] = i
"""


@dataclass
class Row:
    """One line of the table."""

    what: str
    measured: str
    against: str
    target: str
    passed: bool


class Tracked(dict[Any, Any]):
    """The floor: a dict subclass that records each key it sets."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: set[Any] = set()

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self.changed.add(key)


def write_rows(manager: CacheManager, repeats: int, number: int) -> list[Row]:
    targets: dict[str, dict[Any, Any]] = {
        "Tracked": Tracked(),
        # Rules that never fire while timing: the row is the bookkeeping, not the saves.
        "AutoSyncCache": manager.register_custom_cache(
            "writes_autosync", time_checks=[TimeCount(3600, 10**12)]
        ),
        "PersistentCache": manager.register_custom_cache("writes_persistent", autosync=False),
        "dict": {},
    }
    # Keys cycle through a fixed range so every side does the same, steady-state work.
    statement = "c[i & 1023] = i; i += 1"
    timers = {
        label: timeit.Timer(statement, setup="i = 0", globals={"c": cache})
        for label, cache in targets.items()
    }
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(repeats):
        for label, timer in timers.items():
            best[label] = min(best[label], timer.timeit(number))
    rows = []
    for label in ("AutoSyncCache", "PersistentCache"):
        ratio = best[label] / best["Tracked"]
        rows.append(
            Row(
                f"c[k] = v, {label}",
                f"{best[label] / number * 1e9:.0f} ns, {ratio:.2f} x",
                f"Tracked {best['Tracked'] / number * 1e9:.0f} ns "
                f"(dict {best['dict'] / number * 1e9:.0f} ns)",
                f"<= {WRITE_TARGET}",
                ratio <= WRITE_TARGET,
            )
        )
    return rows


def writers_row(directory: Path, count: int) -> Row:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), str(worker), str(count)],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(PROCESSES)
    ]
    for proc in procs:  # closing stdin is the starting gun
        assert proc.stdin is not None
        proc.stdin.close()
    for proc in procs:
        assert proc.stderr is not None
        error = proc.stderr.read()
        if proc.wait(timeout=300) != 0:
            raise RuntimeError("a writer failed:\n" + error)
    loaded = CacheManager("bench", directory).store.load("shared") or {}
    expected = {(worker, i): i for worker in range(PROCESSES) for i in range(count)}
    kept = sum(1 for key, value in expected.items() if loaded.get(key) == value)
    return Row(
        f"{PROCESSES} processes x {count:,} keys into one cache",
        f"{kept:,} / {len(expected):,} kept",
        "every key written",
        "all",
        kept == len(expected) and len(loaded) == len(expected),
    )


def print_table(rows: list[Row]) -> None:
    header = ("what", "measured", "against", "target", "ok")
    lines = [(r.what, r.measured, r.against, r.target, "yes" if r.passed else "NO") for r in rows]
    print_columns(header, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 1,000 keys each")
    args = parser.parse_args(argv)
    repeats, number, count = (5, 200_000, 1_000) if args.quick else (9, 1_000_000, 10_000)
    with tempfile.TemporaryDirectory(prefix="cacheman-bench-") as directory:
        manager = CacheManager("bench-writes", Path(directory))
        rows = write_rows(manager, repeats, number)
        manager.deregister_all_caches()
        rows.append(writers_row(Path(directory), count))
    print(f"CacheMan many-processes benchmark, Python {sys.version.split()[0]}")
    print_table(rows)
    return verdict([row.what for row in rows if not row.passed])


if __name__ == "__main__":
    sys.exit(main())
