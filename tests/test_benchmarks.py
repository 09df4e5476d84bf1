"""The benchmarks run, print their tables and meet their targets (quick sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_bench_core_quick_meets_its_targets() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_core.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for row in ("c[k] on a hit", "c.get(k) on a hit", "k in c on a hit", "save()", "load()"):
        assert row in done.stdout
    assert "memory of" in done.stdout
    assert "all targets met" in done.stdout


def test_bench_autosync_quick_meets_its_targets() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_autosync.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for row in ("autosync c[k] = v (bookkeeping)", "bare os.fork()", "longest pause"):
        assert row in done.stdout
    assert "all targets met" in done.stdout
