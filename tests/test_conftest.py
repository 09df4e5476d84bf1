"""The test session's own guard: a test that leaves files in $TMPDIR fails the run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from helpers import run_python

CONFTEST = Path(__file__).with_name("conftest.py")

_LEAKY = """
import tempfile

def test_forgets_to_clean_up():
    tempfile.mkdtemp(prefix="forgotten-")
"""

_TIDY = """
import tempfile

def test_cleans_up(tmp_path):
    (tmp_path / "kept-in-tmp-path").write_text("x")
    with tempfile.TemporaryDirectory() as directory:
        assert directory
"""


def run_suite(tmp_path: Path, test_code: str) -> tuple[int, str, list[str]]:
    """Run a one-test suite with our conftest and an empty TMPDIR: status, output, leftovers."""
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(CONFTEST, suite / "conftest.py")
    shutil.copy(CONFTEST.with_name("redis_server.py"), suite)  # the conftest imports it
    (suite / "test_one.py").write_text(test_code)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    result = run_python(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite), env=env, cwd=suite
    )
    return result.returncode, result.stdout + result.stderr, sorted(os.listdir(tmpdir))


def test_a_test_that_leaves_files_in_tmpdir_fails_the_run(tmp_path: Path) -> None:
    status, output, left = run_suite(tmp_path, _LEAKY)
    assert status == 1, output
    assert "1 passed" in output
    assert "the tests left files in $TMPDIR (use tmp_path): forgotten-" in output
    assert left == []  # the session removed its directory, the leak included


def test_a_tidy_suite_passes_and_leaves_tmpdir_empty(tmp_path: Path) -> None:
    status, output, left = run_suite(tmp_path, _TIDY)
    assert status == 0, output
    assert left == []
