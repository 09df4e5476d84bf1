"""The ``>>>`` examples of the docs pages and of the library's docstrings run and pass.

Each docs page (``docs/*.rst``) runs as one doctest session in a fresh
interpreter, with the current directory, ``CACHEMAN_DIR`` and ``TMPDIR`` set to
a temporary directory (so the examples' ``tempfile.mkdtemp()`` is cleaned up
with it), as a reader would type it: the session's names stay alive until the
interpreter exits, so the exit-time saves run as they would for a user (and a
traceback from one of them fails the test).  Each ``cacheman`` module's
docstrings run the same way through ``doctest.testmod``.
"""

from __future__ import annotations

import os
import pkgutil
import re
from pathlib import Path

import pytest
from helpers import run_python

import cacheman

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.rst"))
MODULES = sorted(
    [
        "cacheman",
        *(info.name for info in pkgutil.walk_packages(cacheman.__path__, "cacheman.")),
    ]
)

# Runs in the child.  It prints one "attempted=N failed=M" line last.
_RUN_PAGE = """
import doctest, sys
path = sys.argv[1]
with open(path, encoding="utf-8") as handle:
    text = handle.read()
test = doctest.DocTestParser().get_doctest(text, {"__name__": "__main__"}, path, path, 0)
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
# clear_globs=False: the caches stay referenced until exit, as in a user's session.
runner.run(test, clear_globs=False)
result = runner.summarize(verbose=False)
print(f"attempted={result.attempted} failed={result.failed}")
sys.exit(1 if result.failed else 0)
"""

_RUN_MODULE = """
import doctest, importlib, sys
module = importlib.import_module(sys.argv[1])
result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
print(f"attempted={result.attempted} failed={result.failed}")
sys.exit(1 if result.failed else 0)
"""

_SUMMARY = re.compile(r"attempted=(\d+) failed=(\d+)\s*$")


def run_doctests(script: str, target: str, directory: Path) -> int:
    """Run ``script`` on ``target`` in a fresh interpreter; return how many examples ran."""
    env = {**os.environ, "TMPDIR": str(directory)}
    result = run_python("-c", script, target, cache_dir=directory, cwd=directory, env=env)
    report = f"{target}:\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, report
    assert "Traceback" not in result.stderr, report
    summary = _SUMMARY.search(result.stdout)
    assert summary is not None, report
    return int(summary.group(1))


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_docs_page_examples(page: Path, tmp_path: Path) -> None:
    run_doctests(_RUN_PAGE, str(page), tmp_path)


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module: str, tmp_path: Path) -> None:
    run_doctests(_RUN_MODULE, module, tmp_path)


def test_the_feature_pages_have_examples(tmp_path: Path) -> None:
    # Guards the harness: a page whose examples silently stopped running would pass.
    for name in ("quickstart", "caches", "hooks", "dependencies", "directories"):
        assert run_doctests(_RUN_PAGE, str(DOCS / f"{name}.rst"), tmp_path) >= 3, name


def test_every_page_is_in_the_toctree() -> None:
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^   (\w+)$", index, flags=re.MULTILINE))
    assert {page.stem for page in PAGES} - {"index"} == listed
