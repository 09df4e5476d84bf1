"""The layout the design card fixes: metadata once, in setup.cfg; every test run somewhere in CI.

Building and installing the packages is .ci/run's job (it installs the sdist in a
fresh venv and runs this suite from the unpacked tree); these tests read the
files a maintainer edits, so a slip shows in the default lane.
"""

from __future__ import annotations

import configparser
import itertools
import re
import shlex
from pathlib import Path

import cacheman

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    assert config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def test_metadata_lives_in_setup_cfg_only() -> None:
    tables = re.findall(r"^\[([^\]]+)\]", PYPROJECT, re.M)
    assert tables[0] == "build-system"
    # No [project] (setuptools would then ignore setup.cfg's metadata) and no setuptools options.
    assert all(table.startswith("tool.") for table in tables[1:]), tables
    assert not any(table.startswith("tool.setuptools") for table in tables), tables
    stub = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert "setup()" in stub
    assert "name=" not in stub

    config = setup_cfg()
    assert config["metadata"]["name"] == "cacheman"
    # One source for the version: the package's __version__.
    assert config["metadata"]["version"] == "attr: cacheman.__version__"
    assert cacheman.__version__
    assert config["options"]["packages"] == "find:"
    assert "py.typed" in config["options.package_data"]["cacheman"]


def test_the_sdist_holds_what_its_own_tests_read() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8").split()
    for directory in (".ci", "benchmarks", "docs", "tests"):
        assert directory in manifest, directory
    for name in ("CHANGELOG.md", "LICENSE", "README.rst"):
        assert name in manifest, name


def _marker_names() -> list[str]:
    block = re.search(r"^markers = \[(.*?)^\]", PYPROJECT, re.M | re.S)
    assert block is not None, "pyproject.toml registers the markers"
    return re.findall(r'^\s*"(\w+):', block.group(1), re.M)


def _default_lane() -> str:
    addopts = re.search(r"^addopts = '(.*)'$", PYPROJECT, re.M)
    assert addopts is not None
    words = shlex.split(addopts.group(1))
    return words[words.index("-m") + 1]


def _ci_lanes() -> list[str]:
    """The ``-m`` expressions of the ``python -m pytest`` lines of .ci/run ("" for none)."""
    lanes = []
    for line in CI.splitlines():
        if line.startswith("python -m pytest"):
            words = shlex.split(line.split("||")[0])[3:]
            lanes.append(words[words.index("-m") + 1] if "-m" in words else "")
    return lanes


def selects(expression: str, markers: set[str]) -> bool:
    # -m expressions are `and`/`or`/`not` over marker names: Python reads them the same way.
    names = dict.fromkeys(_marker_names(), False) | dict.fromkeys(markers, True)
    return bool(eval(expression, {"__builtins__": {}}, names))


def test_ci_runs_the_default_lane_then_lanes_that_cover_every_marked_test() -> None:
    markers = _marker_names()
    assert {"slow", "bench"} <= set(markers)
    default = _default_lane()
    assert not selects(default, {"slow"})
    assert not selects(default, {"bench"})

    lanes = _ci_lanes()
    assert lanes[0] == "", "CI first runs the README's command as it is: the default lane"
    effective = [default, *lanes[1:]]  # a later -m replaces the one in addopts
    for size in range(len(markers) + 1):
        for chosen in itertools.combinations(markers, size):
            runs = [lane for lane in effective if selects(lane, set(chosen))]
            assert len(runs) == 1, f"a test marked {chosen or 'with nothing'} runs in {runs}"


def test_ci_fails_when_pytest_runs_no_test() -> None:
    # pytest exits 5 when nothing was collected or -m deselected everything.
    assert re.search(r'if \[ "\$1" -eq 5 \]; then\n.*\n\s+exit 1', CI)
    runs = CI.count("\npython -m pytest") + CI.count("-m pytest) || status=$?")
    assert CI.count('passed_or_exit "$status"') == runs
