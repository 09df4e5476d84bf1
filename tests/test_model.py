"""The judge of the consistency model: random operations by real processes, then a checker.

See ``tests/model_harness.py`` for what a run does, what counts as
acknowledged, and the rules the checker applies.  The short form runs in the
default lane (a few hundred operations per store); the long form, marked
``slow``, runs for ``$CACHEMAN_MODEL_SECONDS`` seconds per store (300 by
default).  ``$CACHEMAN_MODEL_SEED`` replays a seed; without it each run draws
one and prints it.  Both print the number of operations checked and of
violations; a failure prints the seed and the history of the first violations.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from model_harness import ABSENT, KEYS, Checker, Place, Report, run_model

#: Rounds of the short form, per store (each round: one operation on most workers).
SHORT_ROUNDS = 120
#: Seconds of the long form, per store.
LONG_SECONDS = float(os.environ.get("CACHEMAN_MODEL_SECONDS", "300"))


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
    _judge(report)
    assert report.operations >= SHORT_ROUNDS  # the run did work (one command a round at least)
    assert report.checks > 1000


@pytest.mark.slow
@pytest.mark.timeout(int(LONG_SECONDS * 2 + 300))
def test_model_long(place: Place, tmp_path: Path) -> None:
    """Thousands of random operations over ``$CACHEMAN_MODEL_SECONDS`` (default 300 s) per store."""
    report = run_model(place, _seed(), tmp_path, seconds=LONG_SECONDS)
    _judge(report)
    assert report.operations > LONG_SECONDS  # more than one a second: thousands in 10 minutes


# -- the checker itself, on histories written by hand ------------------------------------------


class History:
    """A history as the workers and the coordinator would log it, times in plain numbers."""

    def __init__(self) -> None:
        self.records: dict[int, list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = [{"ev": "start", "t": 0}]
        self.snapshots: list[dict[str, Any]] = []
        self.sids = itertools.count()

    def step(self, proc: int, kind: str, start: int, end: int | None, **what: Any) -> None:
        sid = str(next(self.sids))
        log = self.records.setdefault(proc, [])
        log.append({"ev": "pre", "sid": sid, "op": 0, "kind": kind, "t": start, **what})
        if end is not None:
            log.append({"ev": "post", "sid": sid, "t": end, **what.get("after", {})})

    def set(self, proc: int, start: int, key: str, content: str, **flags: Any) -> None:
        self.step(proc, "prod", start, start + 1, cache="data", prods=[[key, content]], **flags)

    def save(self, proc: int, start: int, end: int | None) -> None:
        self.step(proc, "ack", start, end, cache="data")

    def end(self, proc: int, t: int, how: str, rc: int) -> None:
        self.events.append({"ev": "end", "proc": proc, "how": how, "rc": rc, "sent": t - 1, "t": t})

    def store(self, t: int, features: str | None = None, **data: str) -> None:
        self.snapshots.append({"t": t, "data": data, "raw": {}, "features": features})

    def violations(self) -> list[str]:
        checker = Checker(self.events, self.snapshots, self.records)
        return sorted({v.what for v in checker.run()})


LOST = "lost acknowledged write"


@pytest.mark.parametrize(("found", "expected"), [("L:b", []), ("L:a", [LOST])])
def test_checker_wants_the_newer_acknowledged_write(found: str, expected: list[str]) -> None:
    history = History()
    history.set(1, 10, "k", "L:a")
    history.save(1, 20, 30)
    history.set(2, 40, "k", "L:b")
    history.save(2, 50, 60)
    history.store(70, k=found)
    assert history.violations() == expected


@pytest.mark.parametrize("found", ["L:a", "L:b"])
def test_checker_accepts_either_of_two_overlapping_saves(found: str) -> None:
    history = History()
    history.set(1, 10, "k", "L:a")
    history.set(2, 12, "k", "L:b")
    history.save(1, 20, 30)
    history.save(2, 25, 35)
    history.store(40, k=found)
    assert history.violations() == []


def test_checker_catches_a_value_written_back_by_a_process_that_only_read_it() -> None:
    history = History()
    history.set(1, 10, "k", "L:a")
    history.save(1, 20, 30)
    history.set(2, 31, "k", "L:b")
    history.save(2, 33, 35)
    history.save(3, 40, 50)  # worker 3 loaded L:a and saved: it must not write it back
    history.store(36, k="L:b")
    history.store(60, k="L:a")
    assert history.violations() == [LOST]


def test_checker_lets_a_pending_change_land_before_it_is_saved() -> None:
    """A background save (another process's invalidation event) may write pending changes."""
    history = History()
    history.set(1, 10, "k", "L:a")
    history.store(20, k="L:a")
    assert history.violations() == []


def test_checker_catches_a_value_before_any_process_made_it() -> None:
    history = History()
    history.store(5, k="L:a")
    history.set(1, 10, "k", "L:a")
    assert history.violations() == ["value written that its process never changed"]


@pytest.mark.parametrize(("second_save", "expected"), [(False, []), (True, [LOST])])
def test_checker_lets_an_edit_made_during_a_save_wait_for_the_next(
    second_save: bool, expected: list[str]
) -> None:
    history = History()
    history.save(1, 10, 20)
    history.set(1, 15, "k", "L:a")  # another thread, while the save runs
    history.store(25)  # not in that save: allowed
    if second_save:
        history.save(1, 30, 40)
    history.store(45)  # after the next one: it must be there
    assert history.violations() == expected


@pytest.mark.parametrize("found", [None, "L:a"])
def test_checker_accepts_either_outcome_of_a_save_cut_short_by_sigkill(found: str | None) -> None:
    history = History()
    history.set(1, 10, "k", "L:a")
    history.save(1, 20, None)
    history.end(1, 25, "sigkill", -9)
    history.store(30, **({} if found is None else {"k": found}))
    assert history.violations() == []


@pytest.mark.parametrize(("found", "expected"), [({}, []), ({KEYS[0]: "L:b"}, [LOST])])
def test_checker_lets_clear_replace_what_was_saved_before(
    found: dict[str, str], expected: list[str]
) -> None:
    history = History()
    history.set(2, 1, KEYS[0], "L:b")
    history.save(2, 5, 8)
    history.step(1, "prod", 10, 11, cache="data", prods=[[k, ABSENT] for k in KEYS])
    history.save(1, 20, 30)
    history.store(40, **found)
    assert history.violations() == expected


def test_checker_lets_mark_dirty_rewrite_what_it_holds_but_not_erase_the_rest() -> None:
    history = History()
    history.set(2, 40, "held", "L:new")
    history.set(2, 41, "unseen", "L:theirs")
    history.save(2, 43, 45)
    history.step(1, "prod", 50, 51, cache="data", prods=[["held", "L:old"]], dirty=True)
    history.save(1, 52, 60)
    history.store(70, held="L:old", unseen="L:theirs")
    history.store(71, held="L:new", unseen="L:theirs")
    assert history.violations() == []
    history.store(72, held="L:old")
    assert history.violations() == [LOST]


@pytest.mark.parametrize(("built_from", "expected"), [("t2", []), ("t1", ["in memory", "saved"])])
def test_checker_catches_a_derived_cache_built_from_an_old_parent(
    built_from: str, expected: list[str]
) -> None:
    history = History()
    history.step(1, "inv", 10, 20, token="t1")
    history.step(2, "inv", 30, 40, token="t2")
    history.step(3, "view", 45, 46, after={"built_from": built_from})
    history.store(50, features=built_from)
    assert history.violations() == [f"stale derived cache ({kind})" for kind in expected]


def test_checker_reports_exceptions_and_errors_logged() -> None:
    history = History()
    history.records[1] = [
        {"ev": "error", "where": "op 3 save", "tb": "Traceback ...\nRuntimeError: boom", "t": 5},
        {"ev": "log", "level": "ERROR", "msg": "a background save failed", "t": 6},
        {"ev": "log", "level": "WARNING", "msg": "a warning is not a violation", "t": 7},
    ]
    assert history.violations() == ["exception", "logged error"]
