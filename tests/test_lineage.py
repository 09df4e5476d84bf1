"""One lineage decision: nothing is rebuilt from a stale parent, nothing stale is stamped fresh.

The decision itself (:func:`cacheman._persist.lineage.decide`) is a pure function,
tested on its table.  The scenarios run real processes on both stores: a
long-running program holds ``raw`` and a derived ``features`` (its builder
reads ``raw``), another program changes ``raw`` and invalidates it, and the
long-running one must neither serve nor save ``features`` built from its stale
``raw``.  Where the scenario is about the explicit paths (save, exit,
``refresh()``, a background save), the long-running program loses every event
(as after a dropped pub/sub message), so that only those paths can catch up.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import run_python, wait_until, wait_until_reading_stdin

from cacheman import CacheManager, RedisStore, TimeCount, _registry
from cacheman._persist.lineage import Verdict, decide

# -- the decision ------------------------------------------------------------------------------

G1, G2 = "a:1", "a:2"


@pytest.mark.parametrize(
    ("current", "saved", "held", "invalidated", "verdict"),
    [
        # Something in memory: fresh while its parents are where it was built from.
        ({"raw": G1}, {"parents": {"raw": G1}}, {"raw": G1}, False, Verdict.FRESH),
        ({"raw": G2}, {"parents": {"raw": G1}}, {"raw": G1}, False, Verdict.STALE),
        ({"raw": G2}, {"parents": {"raw": G2}}, {"raw": G1}, False, Verdict.REBUILT_ELSEWHERE),
        # A parent declared since the build is taken as it is now.
        ({"raw": G1, "new": G1}, None, {"raw": G1}, False, Verdict.FRESH),
        # Rebuilt elsewhere only on a positive record: every parent, no stale mark.
        ({"raw": G2}, None, {"raw": G1}, False, Verdict.STALE),
        ({"raw": G2}, {"generation": "b:1"}, {"raw": G1}, False, Verdict.STALE),
        ({"raw": G2}, {"parents": {"raw": G2}, "stale": True}, {"raw": G1}, False, Verdict.STALE),
        ({"raw": G2, "x": G1}, {"parents": {"raw": G2}}, {"raw": G1}, False, Verdict.STALE),
        # Nothing in memory (a load): the saved copy, unless something says it is stale.
        ({"raw": G1}, {"parents": {"raw": G1}}, None, False, Verdict.FRESH),
        ({"raw": G1}, None, None, False, Verdict.FRESH),
        ({"raw": G1}, {"generation": "b:1"}, None, False, Verdict.FRESH),
        ({"raw": G2}, {"parents": {"raw": G1}}, None, False, Verdict.STALE),
        ({"raw": G1}, {"parents": {"raw": G1}, "stale": True}, None, False, Verdict.STALE),
        # After an invalidation the copy held is stale whatever it records.
        ({"raw": G2}, {"parents": {"raw": G1}}, {"raw": G2}, True, Verdict.STALE),
        ({"raw": G2}, {"parents": {"raw": G2}}, None, True, Verdict.REBUILT_ELSEWHERE),
        ({"raw": None}, {"parents": {"raw": None}}, None, True, Verdict.STALE),
    ],
)
def test_the_decision_table(
    current: dict[str, str | None],
    saved: dict[str, object] | None,
    held: dict[str, str | None] | None,
    invalidated: bool,
    verdict: Verdict,
) -> None:
    assert decide(current, saved, held, invalidated=invalidated) is verdict


# -- the scenarios -------------------------------------------------------------------------------


@dataclass
class Place:
    """A directory (pickle store) or a Redis database, and the managers a test made there."""

    directory: Path
    redis_url: str | None = None
    managers: list[CacheManager] = field(default_factory=list)

    def manager(self) -> CacheManager:
        store = None if self.redis_url is None else RedisStore(self.redis_url)
        manager = CacheManager("lineage", self.directory, store=store)
        self.managers.append(manager)
        return manager

    def args(self) -> list[str]:
        return [str(self.directory), self.redis_url or ""]

    def saved(self, name: str) -> object:
        """What the next program to start would load for ``name``."""
        return self.manager().store.load(name)

    def builds(self) -> list[str]:
        """The value of ``raw`` each build of ``features`` read, in every process, in order."""
        path = self.directory / "builds"
        return path.read_text().split() if path.exists() else []


@pytest.fixture(params=["pickle", "redis"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    where = Place(tmp_path, url)
    yield where
    for manager in where.managers:
        manager.deregister_all_caches()
        _registry.discard(manager)
        if isinstance(manager.store, RedisStore):
            manager.store.close()


SETUP = """
import sys
from cacheman import CacheManager, RedisStore, TimeCount
directory, url = sys.argv[1], sys.argv[2]
manager = CacheManager("lineage", directory, store=RedisStore(url) if url else None)

def lose_events():
    # As if every event were lost: a dropped pub/sub message, a log never read.
    if url:
        manager.store._on_message = lambda payload: None
    else:
        manager.store._events.poll = lambda: None

def build(name):
    with open(directory + "/builds", "a") as builds:
        builds.write(f"{raw['v']}\\n")
    return {"f": raw["v"] * 10}
"""

CHANGE_RAW = """
raw = manager.register_custom_cache("raw", autosync=False)
raw["v"] = 2
raw.save()
raw.invalidate()
"""

LONG_RUNNING = """
mode, kind = sys.argv[3], sys.argv[4]
lose_events()
raw = manager.register_custom_cache("raw", autosync=False)
options = {"time_checks": [TimeCount(600, 3)]} if kind == "autosync" else {"autosync": False}
features = manager.register_custom_cache("features", builder=build, **options)
manager.register_dependent_cache("raw", "features")
features.save()
print("ready", dict(features), flush=True)
sys.stdin.readline()  # another program changes raw meanwhile
features["note"] = "an edit to the copy built from the old raw"
if mode == "save":
    features.save()
elif mode == "refresh":
    features.refresh()
print(dict(features), flush=True)
if mode == "sigterm":
    sys.stdin.readline()  # the test sends SIGTERM meanwhile
"""  # modes "exit" and "sigterm": the exit flush saves


def seed_raw(place: Place) -> None:
    manager = place.manager()
    raw = manager.register_custom_cache("raw", {"v": 1}, autosync=False)
    raw.save()
    manager.deregister_all_caches()


def run_script(place: Place, script: str, *args: str) -> None:
    done = run_python("-c", SETUP + textwrap.dedent(script), *place.args(), *args)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("save", "persistent"),
        ("refresh", "persistent"),
        ("exit", "persistent"),
        ("exit", "autosync"),
        ("sigterm", "persistent"),
    ],
)
def test_a_stale_derived_cache_is_rebuilt_from_its_parent_brought_up_to_date(
    place: Place, mode: str, kind: str
) -> None:
    seed_raw(place)
    program = subprocess.Popen(
        [sys.executable, "-c", SETUP + LONG_RUNNING, *place.args(), mode, kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert program.stdout is not None
    assert program.stdout.readline().strip() == "ready {'f': 10}"
    run_script(place, CHANGE_RAW)
    if mode == "sigterm":
        program.stdin.write("go\n")
        program.stdin.flush()
        assert program.stdout.readline().startswith("{'f': 10, 'note'")  # edited, not saved
        wait_until_reading_stdin(program.pid)
        program.send_signal(signal.SIGTERM)
        out, err = program.communicate(timeout=60)
        assert program.returncode == -signal.SIGTERM, err
    else:
        out, err = program.communicate("go\n", timeout=60)
        assert program.returncode == 0, err
    if mode in ("save", "refresh"):
        # In memory: rebuilt from raw as the store has it (the edit was to the stale copy).
        assert out.strip() == "{'f': 20}"
    assert place.saved("features") == {"f": 20}
    assert place.builds() == ["1", "2"], "built once at the start, once from the new raw"
    assert "Traceback" not in err


def test_an_autosync_rule_on_a_cache_whose_parent_moved_on_does_not_recurse(
    place: Place, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seed_raw(place)
    manager = place.manager()
    if place.redis_url:
        monkeypatch.setattr(manager.store, "_on_message", lambda payload: None)
    else:
        monkeypatch.setattr(manager.store._events, "poll", lambda: None)  # type: ignore[attr-defined]
    raw = manager.register_custom_cache("raw", autosync=False)
    features = manager.register_custom_cache(
        "features", builder=lambda name: {"f": raw["v"] * 10}, time_checks=[TimeCount(600, 3)]
    )
    manager.register_dependent_cache("raw", "features")
    features.save()
    run_script(place, CHANGE_RAW)
    with caplog.at_level(logging.WARNING, logger="cacheman"):
        for key in range(3):
            features[key] = key  # the third edit fires the rule: a save of a stale cache
        wait_until(lambda: place.saved("features") == {"f": 20})
    assert features == {"f": 20}
    assert features.last_save_error is None
    assert "RecursionError" not in caplog.text


# -- live invalidation -------------------------------------------------------------------------


def test_a_long_running_process_learns_of_an_invalidation_without_calling_anything(
    place: Place,
) -> None:
    seed_raw(place)
    manager = place.manager()
    raw = manager.register_custom_cache("raw", autosync=False)
    built: list[int] = []
    features = manager.register_custom_cache(
        "features",
        builder=lambda name: built.append(raw["v"]) or {"f": raw["v"] * 10},
        autosync=False,
    )
    manager.register_dependent_cache("raw", "features")
    assert features == {"f": 10}
    run_script(place, CHANGE_RAW)
    wait_until(lambda: features == {"f": 20} and raw == {"v": 2}, timeout=20)
    assert built == [1, 2]


FULL_CHECK_AFTER_LOST_EVENTS = """
lose_events()
raw = manager.register_custom_cache("raw", autosync=False)
features = manager.register_custom_cache("features", builder=build, autosync=False)
manager.register_dependent_cache("raw", "features")
print("ready", flush=True)
sys.stdin.readline()
manager._check_all_lineage()  # what a reconnect (Redis) or a replaced log (pickle) runs
print(dict(raw), dict(features), flush=True)
"""


def test_the_full_check_catches_up_on_everything_the_lost_events_said(place: Place) -> None:
    seed_raw(place)
    program = subprocess.Popen(
        [sys.executable, "-c", SETUP + FULL_CHECK_AFTER_LOST_EVENTS, *place.args()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert program.stdout is not None
    assert program.stdout.readline().strip() == "ready"
    run_script(place, CHANGE_RAW)
    out, err = program.communicate("go\n", timeout=60)
    assert program.returncode == 0, err
    assert out.strip() == "{'v': 2} {'f': 20}"
    assert place.builds() == ["1", "2"]


def test_a_replaced_event_log_runs_the_full_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = Place(tmp_path)
    try:
        seed_raw(place)
        manager = place.manager()
        log = manager.store._events  # type: ignore[attr-defined]
        raw = manager.register_custom_cache("raw", autosync=False)
        features = manager.register_custom_cache(
            "features", builder=lambda name: {"f": raw["v"] * 10}, autosync=False
        )
        manager.register_dependent_cache("raw", "features")
        with monkeypatch.context() as lost:
            lost.setattr(log, "poll", lambda: None)
            run_script(place, CHANGE_RAW)
            # The log is replaced (as when it grows past its bound) before this process read it.
            os.replace(log.path, tmp_path / "old-log")
            log.path.write_text("")
        wait_until(lambda: features == {"f": 20} and raw == {"v": 2}, timeout=20)
    finally:
        for manager in place.managers:
            manager.deregister_all_caches()
            _registry.discard(manager)


def test_a_lost_redis_connection_runs_the_full_check(redis_url: str, tmp_path: Path) -> None:
    place = Place(tmp_path, redis_url)
    try:
        seed_raw(place)
        manager = place.manager()
        store = manager.store
        raw = manager.register_custom_cache("raw", autosync=False)
        features = manager.register_custom_cache(
            "features", builder=lambda name: {"f": raw["v"] * 10}, autosync=False
        )
        manager.register_dependent_cache("raw", "features")
        lost = store._on_message  # type: ignore[attr-defined]
        store._on_message = lambda payload: None  # type: ignore[attr-defined]
        run_script(place, CHANGE_RAW)
        store._on_message = lost  # type: ignore[attr-defined]
        assert features == {"f": 10}, "the event was lost"
        store._client().client_kill_filter(_type="pubsub")  # type: ignore[attr-defined]
        wait_until(lambda: features == {"f": 20} and raw == {"v": 2}, timeout=20)
    finally:
        for manager in place.managers:
            manager.deregister_all_caches()
            _registry.discard(manager)
            manager.store.close()  # type: ignore[attr-defined]


WAIT_FOR_NEW_RAW = """
raw = manager.register_custom_cache("raw", autosync=False)
features = manager.register_custom_cache("features", builder=build, autosync=False)
manager.register_dependent_cache("raw", "features")
print("ready", dict(features), flush=True)
import time
deadline = time.monotonic() + 30
while features != {"f": 20} and time.monotonic() < deadline:
    time.sleep(0.01)  # polling with a deadline: the events do the work
print(dict(features), flush=True)
"""


def test_two_processes_holding_the_derived_cache_build_it_once_per_invalidation(
    redis_url: str, tmp_path: Path
) -> None:
    place = Place(tmp_path, redis_url)
    seed_raw(place)
    programs = []
    for _ in range(2):
        program = subprocess.Popen(
            [sys.executable, "-c", SETUP + WAIT_FOR_NEW_RAW, *place.args()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert program.stdout is not None
        # One at a time: the second loads what the first built (and saved under the lock).
        assert program.stdout.readline().strip() == "ready {'f': 10}"
        programs.append(program)
    run_script(place, CHANGE_RAW)
    for program in programs:
        out, err = program.communicate(timeout=60)
        assert program.returncode == 0, err
        assert out.strip() == "{'f': 20}"
    assert place.builds() == ["1", "2"], "one build at the start, one per invalidation"
    assert place.saved("features") == {"f": 20}
    for manager in place.managers:
        _registry.discard(manager)
        manager.store.close()  # type: ignore[attr-defined]


def test_a_parent_whose_saved_copy_was_deleted_elsewhere_keeps_what_it_holds(
    place: Place,
) -> None:
    seed_raw(place)
    manager = place.manager()
    raw = manager.register_custom_cache("raw", autosync=False)
    features = manager.register_custom_cache(
        "features", builder=lambda name: {"f": raw["v"] * 10}, autosync=False
    )
    manager.register_dependent_cache("raw", "features")
    # Another program deletes raw's saved copy (and, downstream, features').
    place.manager().delete_saved_cache_content("raw")
    features.invalidate_and_rebuild()  # nothing in the store to bring raw up to date from
    assert raw == {"v": 1}
    assert features == {"f": 10}


def test_a_builder_failing_in_a_background_save_fails_that_save_not_the_edit(
    place: Place, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seed_raw(place)
    manager = place.manager()
    if place.redis_url:
        monkeypatch.setattr(manager.store, "_on_message", lambda payload: None)
    else:
        monkeypatch.setattr(manager.store._events, "poll", lambda: None)  # type: ignore[attr-defined]
    raw = manager.register_custom_cache("raw", autosync=False)

    def build(name: str) -> dict[str, int]:
        if raw["v"] == 2:
            raise ValueError("cannot build from raw 2")
        return {"f": raw["v"] * 10}

    features = manager.register_custom_cache(
        "features", builder=build, time_checks=[TimeCount(600, 3)]
    )
    manager.register_dependent_cache("raw", "features")
    features.save()
    run_script(place, CHANGE_RAW)
    with caplog.at_level(logging.WARNING, logger="cacheman"):
        for key in range(3):
            features[key] = key  # the third edit fires the rule; its rebuild raises
    assert features.last_save_error == "ValueError: cannot build from raw 2"
    assert "background save failed (ValueError: cannot build from raw 2)" in caplog.text
    assert place.saved("features") is None  # the stale copy was not written back
