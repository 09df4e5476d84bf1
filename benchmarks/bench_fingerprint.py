"""The fingerprint mutation suite through CacheMan's memoize and joblib.Memory, in one run.

For each kind of edit of ``fingerprint_edits.py``'s package, the share of
edits each tool notices: for meaningful edits, the *recall* (edits that reset
the results: higher is better, stale results otherwise); for cosmetic edits,
the *keep* rate (edits that keep them: higher is better, needless
recomputation otherwise).  Every edit is judged in a fresh interpreter
(CacheMan: the fingerprint; joblib: whether a call recomputes against a copy
of a cache the original code filled).  joblib is skipped with a note if it
is not installed.

Targets (CacheMan): recall 100 % over at least 200 meaningful edits, keep >= 95 %
over at least 100 cosmetic ones.  ``--quick`` judges two edits of each kind.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import fingerprint_edits as suite
from _report import print_columns, verdict


def rates(outcomes: list[suite.Outcome], want_reset: bool) -> dict[str, tuple[int, int]]:
    """Per kind of edit: (edits judged as wanted, edits)."""
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for outcome in outcomes:
        row = table[outcome.edit.what]
        row[0] += outcome.reset == want_reset
        row[1] += 1
    return {kind: (good, total) for kind, (good, total) in table.items()}


def sample(edits: list[suite.Edit], per_kind: int) -> list[suite.Edit]:
    taken: dict[str, int] = defaultdict(int)
    chosen = []
    for edit in edits:
        if taken[edit.what] < per_kind:
            taken[edit.what] += 1
            chosen.append(edit)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="two edits of each kind")
    args = parser.parse_args(argv)
    meaningful, cosmetic = suite.meaningful_edits(), suite.cosmetic_edits()
    if args.quick:
        meaningful, cosmetic = sample(meaningful, 2), sample(cosmetic, 2)
    has_joblib = importlib.util.find_spec("joblib") is not None
    with tempfile.TemporaryDirectory(prefix="cacheman-bench-") as scratch:
        work = Path(scratch)
        ours = (
            suite.judge(meaningful, work / "cm-m"),
            suite.judge(cosmetic, work / "cm-c"),
        )
        theirs = (
            (
                suite.judge_joblib(meaningful, work / "jl-m"),
                suite.judge_joblib(cosmetic, work / "jl-c"),
            )
            if has_joblib
            else None
        )
    missed = []
    for title, index, want_reset in (
        ("meaningful edits: recall (reset)", 0, True),
        ("cosmetic edits: keep", 1, False),
    ):
        mine = rates(ours[index], want_reset)
        other = rates(theirs[index], want_reset) if theirs is not None else {}
        lines = []
        for kind, (good, total) in mine.items():
            joblib_cell = "skipped: not installed"
            if kind in other:
                joblib_cell = f"{other[kind][0]}/{other[kind][1]}"
            lines.append((kind, f"{good}/{total}", joblib_cell))
        good = sum(g for g, _ in mine.values())
        total = sum(t for _, t in mine.values())
        joblib_total = "-"
        if other:
            joblib_total = (
                f"{sum(g for g, _ in other.values())}/{sum(t for _, t in other.values())}"
            )
        lines.append(("all", f"{good}/{total} ({100 * good / total:.0f} %)", joblib_total))
        print(title)
        print_columns(("kind of edit", "cacheman memoize", "joblib.Memory"), lines)
        print()
        need = 1.0 if want_reset else 0.95
        if good < need * total:
            missed.append(f"{title}: {good}/{total}")
    return verdict(missed)


if __name__ == "__main__":
    sys.exit(main())
