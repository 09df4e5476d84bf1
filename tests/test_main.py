"""``python -m cacheman``: the demo on a fresh machine, and usage errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import run_python

from cacheman.__main__ import USAGE_ERROR, main
from cacheman._demo import DEMO_MANAGER


def run_cacheman(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "cacheman", *args, env=env)


def test_demo_runs_cleans_up_and_exits_0(tmp_path: Path) -> None:
    env = {**os.environ, "CACHEMAN_DIR": str(tmp_path)}
    result = run_cacheman("demo", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    squares = "{1: 1, 2: 4, 3: 9, 4: 16, 5: 25}"
    assert f"stored {squares} and exited without calling save()" in out
    assert f"a fresh interpreter, loaded {squares}" in out
    assert "its builder filled it: {'cache': 5, 'manager': 7, 'hook': 4}" in out
    assert "basket = {'total': 5}, notes = {'reminder': 'pears are cheap'}" in out
    assert "basket = {'total': 7} (rebuilt by its builder), notes = {} (reset)" in out
    assert "removed the demo data" in out
    assert not (tmp_path / DEMO_MANAGER).exists()
    assert "Traceback" not in result.stderr


def test_demo_uses_the_platform_directory_by_default(tmp_path: Path) -> None:
    # A fresh machine: no CACHEMAN_DIR, an empty per-user cache directory.
    env = {k: v for k, v in os.environ.items() if k != "CACHEMAN_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    result = run_cacheman("demo", env=env)
    assert result.returncode == 0, result.stderr
    demo_dir = tmp_path / "xdg-cache" / "cacheman" / DEMO_MANAGER
    assert f"caches under {demo_dir}" in result.stdout
    assert not demo_dir.exists()
    assert not demo_dir.parent.exists(), "the demo created the base directory, so it removes it"


def test_demo_keeps_a_base_directory_that_already_existed(tmp_path: Path) -> None:
    (tmp_path / "other-manager").mkdir()
    result = run_cacheman("demo", env={**os.environ, "CACHEMAN_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other-manager"]


def test_demo_starts_clean_after_an_interrupted_run(tmp_path: Path) -> None:
    leftover = tmp_path / DEMO_MANAGER
    leftover.mkdir()
    (leftover / "squares.pkl").write_bytes(b"left by an interrupted demo")
    result = run_cacheman("demo", env={**os.environ, "CACHEMAN_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert not leftover.exists()


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cacheman("frobnicate", env={**os.environ, "CACHEMAN_DIR": str(tmp_path)})
    assert result.returncode == USAGE_ERROR == 2
    assert "usage: python -m cacheman" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("argv", [[], ["demo", "--bogus"], ["demo", "--step", "nonesuch"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == USAGE_ERROR
    assert "error" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
