"""The judge of the consistency model: random operations by real processes, then a checker.

See ``tests/model_harness.py`` for what a run does, what counts as
acknowledged, and the rules the checker applies.  The short form runs in the
default lane (a few hundred operations per store); the long form, marked
``slow``, runs for ``$CACHEMAN_MODEL_SECONDS`` seconds per store (600 by
default).  ``$CACHEMAN_MODEL_SEED`` replays a seed; without it each run draws
one and prints it.  Both print the number of operations checked and of
violations; a failure prints the seed and the history of the first violations.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from model_harness import Place, Report, run_model

#: Rounds of the short form, per store (each round: one operation on most workers).
SHORT_ROUNDS = 120
#: Seconds of the long form, per store.
LONG_SECONDS = float(os.environ.get("CACHEMAN_MODEL_SECONDS", "600"))


def _seed() -> int:
    chosen = os.environ.get("CACHEMAN_MODEL_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


@pytest.fixture(params=["pickle", "redis"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    if request.param == "redis":
        yield Place("redis", tmp_path / "cache", request.getfixturevalue("redis_url"))
    else:
        yield Place("pickle", tmp_path / "cache")


def _judge(report: Report) -> None:
    print(report.summary())
    if report.violations:
        classes = sorted({v.what for v in report.violations})
        pytest.fail(
            f"{report.summary()} ({', '.join(classes)}); replay with "
            f"CACHEMAN_MODEL_SEED={report.seed}\n{report.history}",
            pytrace=False,
        )


def test_model_short(place: Place, tmp_path: Path) -> None:
    """A few hundred random operations by three processes at a time: nothing lost, nothing stale."""
    report = run_model(place, _seed(), tmp_path, rounds=SHORT_ROUNDS)
    assert report.steps > 500  # the run did work: logs, store reads and checks
    _judge(report)


@pytest.mark.slow
@pytest.mark.timeout(int(LONG_SECONDS * 2 + 300))
def test_model_long(place: Place, tmp_path: Path) -> None:
    """Thousands of random operations over ``$CACHEMAN_MODEL_SECONDS`` (default 600 s) per store."""
    report = run_model(place, _seed(), tmp_path, seconds=LONG_SECONDS)
    _judge(report)
