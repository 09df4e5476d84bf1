"""Memoize's fingerprints: what resets the results (callees, constants...) and what does not."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

from cacheman._memo.fingerprint import describe_changes, fingerprint_parts

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import fingerprint_edits as suite

# -- the mutation suite --------------------------------------------------------------------


def test_the_suite_is_as_large_as_promised() -> None:
    meaningful = suite.meaningful_edits()
    assert len(meaningful) >= 200
    assert len(suite.cosmetic_edits()) >= 100
    kinds = {edit.what for edit in meaningful}
    for kind in (
        "callee body",
        "callee of a callee",
        "constant of another module",
        "module constant",
        "class attribute",
        "method called on an instance",
        "closure cell",
        "default argument",
        "decorated helper",
        "lambda",
    ):
        assert kind in kinds


def test_every_meaningful_edit_resets_and_every_cosmetic_edit_keeps(tmp_path: Path) -> None:
    # In this process (one package directory per edit): every edit, in a second.
    meaningful = suite.judge(
        suite.meaningful_edits(), tmp_path / "m", suite.inprocess_fingerprint, workers=1
    )
    cosmetic = suite.judge(
        suite.cosmetic_edits(), tmp_path / "c", suite.inprocess_fingerprint, workers=1
    )
    assert [o.edit for o in meaningful if not o.reset] == []
    assert [o.edit for o in cosmetic if o.reset] == []


def test_a_sample_of_edits_in_fresh_interpreters(tmp_path: Path) -> None:
    # Fresh interpreters with random hash seeds: nothing may depend on the process.
    rng = random.Random(13)
    meaningful = rng.sample(suite.meaningful_edits(), 3)
    cosmetic = rng.sample(suite.cosmetic_edits(), 2)
    outcomes = suite.judge(meaningful + cosmetic, tmp_path)
    assert [o.reset for o in outcomes] == [True, True, True, False, False]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 338 interpreters: minutes on a busy machine
def test_the_whole_suite_in_fresh_interpreters(tmp_path: Path) -> None:
    meaningful = suite.judge(suite.meaningful_edits(), tmp_path / "m")
    cosmetic = suite.judge(suite.cosmetic_edits(), tmp_path / "c")
    assert [o.edit for o in meaningful if not o.reset] == []
    kept = sum(not o.reset for o in cosmetic)
    assert kept >= 0.95 * len(cosmetic), [o.edit for o in cosmetic if o.reset]


# -- what is walked --------------------------------------------------------------------------


def test_a_helper_defined_after_the_function_counts(tmp_path: Path) -> None:
    module = tmp_path / "late_helper.py"
    module.write_text("def f(x):\n    return g(x)\n\n\ndef g(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import late_helper  # type: ignore[import-not-found]

        parts = fingerprint_parts(late_helper.f)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("late_helper", None)
    assert set(parts) == {"function late_helper.f", "function late_helper.g"}


def test_the_standard_library_and_installed_packages_are_not_walked() -> None:
    def uses_them(x: object) -> str:
        return json.dumps(os.path.join(str(x), "a")) + str(pytest.approx(1))

    parts = fingerprint_parts(uses_them)
    assert [label for label in parts if "json" in label or "pytest" in label] == []
    assert [label for label in parts if label.startswith("function")] == [
        f"function {__name__}.{uses_them.__qualname__}"
    ]


def test_mutable_closure_cells_count_by_type_not_contents() -> None:
    calls: list[int] = []

    def record(x: int) -> int:
        calls.append(x)
        return x

    before = fingerprint_parts(record)
    calls.extend([1, 2, 3])  # an accumulator the program fills as it runs
    assert fingerprint_parts(record) == before


def test_describe_changes_names_what_changed() -> None:
    old = {"function m.f": "1", "global m.SCALE": "a", "function m.gone": "x"}
    new = {"function m.f": "1", "global m.SCALE": "b", "function m.new": "y"}
    assert describe_changes(old, new) == (
        "global m.SCALE changed, function m.new is new, function m.gone is gone"
    )


def test_enum_members_count_by_name_and_plain_value() -> None:
    import enum
    import threading

    class Mode(enum.Enum):
        FAST = 1
        LOCKED = threading.Lock()  # a value that cannot be encoded: counted by name

    def pick(x: int) -> object:
        return (x, Mode.FAST, Mode.LOCKED)

    parts = fingerprint_parts(pick)  # no error
    assert any("Mode" in label for label in parts)
