"""Every example in README.rst runs, and prints what the README says it prints.

The convention, which README.rst follows:

- each ``.. code-block:: python`` block is a complete program, run in a fresh
  interpreter (``sys.executable``) with the current directory and
  ``CACHEMAN_DIR`` set to one temporary directory shared by all the blocks, in
  README order, as if a reader ran them one after another (so a later block
  sees what an earlier one saved: that is how the README shows persistence);
- every line that is a ``print(...)`` call ends with a comment holding the exact
  line it prints, ``print(squares[4])  # 16``; the program's standard output
  must be exactly those lines, in order.
"""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import run_python

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"

_DIRECTIVE = re.compile(r"^\.\. code-block:: *(\S+)\s*$")


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # 1-based line of the directive in README.rst
    code: str

    @property
    def expected_output(self) -> list[str]:
        """The trailing comments of the ``print(...)`` lines, in order."""
        expected = []
        tokens = tokenize.generate_tokens(io.StringIO(self.code).readline)
        lines = self.code.splitlines()
        for token in tokens:
            if token.type != tokenize.COMMENT:
                continue
            row, col = token.start
            code_part = lines[row - 1][:col].strip()
            if code_part.startswith("print("):
                expected.append(token.string[1:].strip())
        return expected


def readme_blocks(text: str) -> list[Block]:
    """The ``.. code-block::`` blocks of an reStructuredText document, dedented."""
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        match = _DIRECTIVE.match(lines[index])
        index += 1
        if not match:
            continue
        start = index
        while index < len(lines) and lines[index].startswith(":"):  # directive options
            index += 1
        body: list[str] = []
        while index < len(lines) and (not lines[index].strip() or lines[index][0] == " "):
            body.append(lines[index])
            index += 1
        indent = min(len(each) - len(each.lstrip()) for each in body if each.strip())
        code = "\n".join(each[indent:] for each in body).strip("\n") + "\n"
        blocks.append(Block(match.group(1), start, code))
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
PYTHON_BLOCKS = [block for block in BLOCKS if block.language == "python"]
DEPENDENT_EXAMPLE = next(
    block for block in PYTHON_BLOCKS if "root_cache.invalidate()" in block.code
)


def run_block(block: Block, directory: Path) -> subprocess.CompletedProcess[str]:
    return run_python("-c", block.code, cache_dir=directory, cwd=directory)


def assert_prints_as_documented(block: Block, directory: Path) -> None:
    result = run_block(block, directory)
    where = f"README.rst block at line {block.line}"
    assert result.returncode == 0, f"{where} failed:\n{result.stderr}"
    assert result.stdout.splitlines() == block.expected_output, where


def test_readme_has_the_documented_sections() -> None:
    assert len(PYTHON_BLOCKS) >= 7
    every_line = "".join(block.code for block in PYTHON_BLOCKS)
    for needle in (
        "register_cache(",
        "persistent=False",
        "saver=",
        "loader=",
        "builder=",
        "validator=",
        "register_dependent_cache('root', 'edge')",
        "base_cache_directory=",
    ):
        assert needle in every_line, needle
    for block in PYTHON_BLOCKS:
        assert block.expected_output, f"block at line {block.line} shows no output"


def test_readme_examples_print_what_they_say(tmp_path: Path) -> None:
    for block in PYTHON_BLOCKS:
        assert_prints_as_documented(block, tmp_path)


def test_dependent_cache_example_prints_empty_on_every_run(tmp_path: Path) -> None:
    assert DEPENDENT_EXAMPLE.expected_output == ["{}"]
    for _ in range(3):  # the first run, and the runs after it find saved state
        assert_prints_as_documented(DEPENDENT_EXAMPLE, tmp_path)


def test_readme_set_up_commands_are_exactly_two_and_match_ci() -> None:
    text = README.read_text(encoding="utf-8")
    first = BLOCKS[0]
    assert first.language == "sh"
    assert text.index(".. code-block:: sh") < 1000, "the commands belong near the top"
    install_and_demo, install_and_test = first.code.splitlines()
    assert install_and_demo == "python3 -m pip install . && python3 -m cacheman demo"
    assert install_and_test == "python3 -m pip install -e '.[test]' && python3 -m pytest"

    # .ci/run installs the test extras (and docs) and runs the same test command.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ci_commands = [shlex.split(line) for line in ci if line and not line.lstrip().startswith("#")]
    assert any(
        words[:4] == ["python", "-m", "pip", "install"]
        and "-e" in words
        and any(word.startswith(".[") and "test" in word for word in words)
        for words in ci_commands
    )
    assert any(line.startswith("python -m pytest") for line in ci)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("print(1)  # 1\n", ["1"]),
        ("x = 1  # not output\nprint(x, '#')  # 1 #\n", ["1 #"]),
        ("if True:\n    print({})  # {}\n", ["{}"]),
    ],
)
def test_output_convention(code: str, expected: list[str]) -> None:
    assert Block("python", 1, code).expected_output == expected
