"""The mutation suite of memoize's fingerprints: edits that must reset, edits that must not.

A small package (``proj``, two modules) holds a memoized-to-be function,
``proj.main.target``, that reaches a callee, a callee of a callee, a helper
in another module, module constants, a constant dict, a class attribute, a
method called on an instance, a static method, a closure cell, a default
argument, a decorated helper and a lambda.  Each *meaningful* edit changes
what ``target`` computes; each *cosmetic* edit (comments, blank lines,
docstrings, renamed locals, spacing, annotations, unused imports, moved
code) does not.

Each edit is judged in a fresh interpreter (``python -c``, its own hash
seed): the fingerprint of the edited package is compared with the original
one's.  Used by ``tests/test_fingerprint.py`` (a sample in the default run,
all of it in the slow lane) and by ``bench_fingerprint.py`` (with joblib).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

UTIL = """\
import functools

OFFSET = 7
TABLE = {"a": 1, "b": 2}


def deep(x):
    return x * 3 + 1


def helper(x):
    return deep(x) + 2


class Shape:
    SIDES = 4

    def area(self, n):
        return n * self.SIDES + 5


def tag(fn):
    @functools.wraps(fn)
    def inner(*args):
        return fn(*args)

    return inner


@tag
def decorated(x):
    return x - 4
"""

MAIN = """\
from proj import util
from proj.util import Shape, decorated, helper

SCALE = 3
square = lambda v: v * v + 0


def make(k):
    def inner(x):
        return x + k

    return inner


adder = make(10)


class Local:
    RATE = 2

    @staticmethod
    def bump(x):
        return x + 6


def target(x, shape, pad=5):
    \"\"\"Add up everything.\"\"\"
    total = helper(x) * SCALE
    total += util.OFFSET + util.TABLE["b"]
    total += shape.area(x)
    total += decorated(x) + square(x) + adder(x)
    total += Local.RATE + Local.bump(x)
    return total + pad


def run(x):
    return target(x, Shape())
"""

FILES = {"proj/__init__.py": "", "proj/util.py": UTIL, "proj/main.py": MAIN}


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (which must occur once) by ``new`` in ``path``."""

    what: str
    path: str
    old: str
    new: str
    count: int = 1  # how many occurrences to replace (-1: all, for a renamed local)


#: (what is edited, file, the text holding a number ``{n}``, the number it holds).
_SITES = [
    ("callee of a callee", "proj/util.py", "return x * 3 + {n}", 1),
    ("callee body", "proj/util.py", "return deep(x) + {n}", 2),
    ("constant of another module", "proj/util.py", "OFFSET = {n}", 7),
    ("constant dict", "proj/util.py", '"b": {n}}}', 2),
    ("class attribute", "proj/util.py", "SIDES = {n}", 4),
    ("method called on an instance", "proj/util.py", "self.SIDES + {n}", 5),
    ("decorated helper", "proj/util.py", "return x - {n}", 4),
    ("module constant", "proj/main.py", "SCALE = {n}", 3),
    ("lambda", "proj/main.py", "v * v + {n}", 0),
    ("closure cell", "proj/main.py", "adder = make({n})", 10),
    ("default argument", "proj/main.py", "pad={n}", 5),
    ("class attribute read on the class", "proj/main.py", "RATE = {n}", 2),
    ("static method", "proj/main.py", "return x + {n}\n\n\ndef target", 6),
    ("the function itself", "proj/main.py", "return total + pad{n}", ""),
]

_OPERATOR_EDITS = [
    ("callee of a callee", "proj/util.py", "x * 3 + 1", ["x + 3 + 1", "x - 3 + 1", "x * 3 - 1"]),
    ("callee body", "proj/util.py", "deep(x) + 2", ["deep(x) * 2", "deep(x + 1) + 2", "-deep(x)"]),
    ("the function itself", "proj/main.py", "helper(x) * SCALE", ["helper(x) + SCALE"]),
    ("the function itself", "proj/main.py", "total + pad", ["total - pad", "total * pad"]),
    ("closure body", "proj/main.py", "return x + k", ["return x - k", "return x * k"]),
    ("wrapper", "proj/util.py", "return fn(*args)", ["return fn(*args) + 1"]),
]


def meaningful_edits(per_site: int = 16) -> list[Edit]:
    """Edits that change what ``target`` returns: each must reset the memo."""
    edits = []
    for what, path, text, base in _SITES:
        if base == "":  # "the function itself": append arithmetic
            variants = [f" + {n}" for n in range(1, per_site + 1)]
            old = text.format(n="")
            edits += [Edit(what, path, old, text.format(n=v)) for v in variants]
            continue
        assert isinstance(base, int)
        old = text.format(n=base)
        numbers = [n for n in range(base + 1, base + per_site + 2) if n != base][:per_site]
        edits += [Edit(what, path, old, text.format(n=n)) for n in numbers]
    for what, path, old, news in _OPERATOR_EDITS:
        edits += [Edit(what, path, old, new) for new in news]
    return edits


def cosmetic_edits() -> list[Edit]:
    """Edits that leave what ``target`` computes unchanged: each must keep the results."""
    edits = []
    for path in ("proj/util.py", "proj/main.py"):
        lines = FILES[path].splitlines(keepends=True)
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            indent = line[: len(line) - len(line.lstrip())]
            before = "".join(lines[:index])
            # A unique anchor: the text up to and including this line.
            anchor = before + line
            edits.append(Edit("comment", path, anchor, before + f"{indent}# note {index}\n" + line))
            edits.append(Edit("blank line", path, anchor, before + "\n" + line))
    edits += [
        Edit("docstring", "proj/main.py", '"""Add up everything."""', '"""Sum it all up."""'),
        Edit("docstring removed", "proj/main.py", '    """Add up everything."""\n', ""),
        Edit("new docstring", "proj/util.py", "def deep(x):\n", 'def deep(x):\n    """Deep."""\n'),
        Edit("renamed local", "proj/main.py", "total", "acc", -1),
        Edit("renamed local", "proj/main.py", "total", "result_so_far", -1),
        Edit("spacing", "proj/util.py", "x * 3 + 1", "x*3+1"),
        Edit("spacing", "proj/util.py", "x * 3 + 1", "(x * 3) + 1"),
        Edit("annotation", "proj/util.py", "def deep(x):", "def deep(x: int) -> int:"),
        Edit(
            "annotation",
            "proj/main.py",
            "def target(x, shape, pad=5):",
            "def target(x: int, shape: Shape, pad: int = 5) -> int:",
        ),
        Edit("unused import", "proj/main.py", "from proj import", "import os\nfrom proj import"),
        Edit("quotes", "proj/main.py", 'util.TABLE["b"]', "util.TABLE['b']"),
        Edit(
            "unrelated function",
            "proj/util.py",
            "def helper(x):",
            "def unused(y):\n    return y\n\n\ndef helper(x):",
        ),
        Edit("unrelated constant", "proj/main.py", "SCALE = 3\n", "SCALE = 3\nUNUSED = 99\n"),
        Edit("moved code", "proj/main.py", "SCALE = 3\n", "\n\n\n\nSCALE = 3\n"),
        Edit(
            "renamed inner local",
            "proj/main.py",
            "def inner(x):\n        return x + k",
            "def inner(y):\n        return y + k",
        ),
        Edit("trailing comment", "proj/util.py", "return deep(x) + 2", "return deep(x) + 2  # why"),
    ]
    return edits


def write_package(directory: Path, edit: Edit | None = None) -> None:
    """Write ``proj`` into ``directory``, with ``edit`` applied."""
    for path, text in FILES.items():
        if edit is not None and edit.path == path:
            assert edit.old in text, edit
            written = text.replace(edit.old, edit.new, edit.count)
        else:
            written = text
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(written)


FINGERPRINT_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from cacheman._memo.fingerprint import fingerprint_parts
from cacheman._memo.memoize import _combined
from proj.main import target
print(_combined(fingerprint_parts(target)))
"""


def cacheman_fingerprint(directory: Path) -> str:
    """The fingerprint of ``proj.main.target`` in ``directory``, computed in a fresh interpreter."""
    env = {**os.environ, "PYTHONHASHSEED": "random", "PYTHONDONTWRITEBYTECODE": "1"}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", FINGERPRINT_SCRIPT, str(directory)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return done.stdout.strip()


@dataclass
class Outcome:
    """How a tool judged one edit: whether it reset (recomputed)."""

    edit: Edit
    reset: bool


def judge(
    edits: list[Edit],
    workdir: Path,
    digest: Callable[[Path], str] = cacheman_fingerprint,
    workers: int = 2,
) -> list[Outcome]:
    """Whether each edit changes ``digest`` (each in a fresh interpreter), against the original."""
    base_dir = workdir / "base"
    write_package(base_dir)
    base = digest(base_dir)

    def one(numbered: tuple[int, Edit]) -> Outcome:
        number, edit = numbered
        directory = workdir / f"edit-{number}"
        write_package(directory, edit)
        return Outcome(edit, digest(directory) != base)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, enumerate(edits)))


def inprocess_fingerprint(directory: Path) -> str:
    """:func:`cacheman_fingerprint`, in this process (fast: for the default test run)."""
    from cacheman._memo.fingerprint import fingerprint_parts
    from cacheman._memo.memoize import _combined

    for name in [n for n in sys.modules if n == "proj" or n.startswith("proj.")]:
        del sys.modules[name]
    sys.path.insert(0, str(directory))
    try:
        from proj.main import target  # type: ignore[import-not-found]

        return _combined(fingerprint_parts(target))
    finally:
        sys.path.remove(str(directory))
        for name in [n for n in sys.modules if n == "proj" or n.startswith("proj.")]:
            del sys.modules[name]


JOBLIB_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[1])
from joblib import Memory
from proj.main import target
from proj.util import Shape

location = sys.argv[2]

def outputs():
    found = {}
    for folder, _dirs, files in os.walk(location):
        for name in files:
            if name == "output.pkl":
                path = os.path.join(folder, name)
                found[path] = os.stat(path).st_mtime_ns
    return found

before = outputs()
Memory(location, verbose=0).cache(target)(3, Shape())
print("recomputed" if outputs() != before else "kept")
"""


def joblib_recomputes(directory: Path, location: Path) -> bool:
    """Whether ``joblib.Memory`` recomputes ``target`` for the package in ``directory``."""
    done = subprocess.run(
        [sys.executable, "-c", JOBLIB_SCRIPT, str(directory), str(location)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return done.stdout.strip() == "recomputed"


def judge_joblib(edits: list[Edit], workdir: Path, workers: int = 2) -> list[Outcome]:
    """:func:`judge` for ``joblib.Memory``: each edit against a copy of the original's cache."""
    import shutil

    base_dir, base_cache = workdir / "base", workdir / "base-cache"
    write_package(base_dir)
    joblib_recomputes(base_dir, base_cache)  # fills the cache from the original code

    def one(numbered: tuple[int, Edit]) -> Outcome:
        number, edit = numbered
        directory = workdir / f"edit-{number}"
        write_package(directory, edit)
        cache = workdir / f"cache-{number}"
        shutil.copytree(base_cache, cache)
        return Outcome(edit, joblib_recomputes(directory, cache))

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, enumerate(edits)))
