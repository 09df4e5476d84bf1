"""``python -m cacheman`` (and the ``cacheman`` console script): the command line.

Commands: ``list``, ``show``, ``verify``, ``delete``, ``invalidate``, ``graph`` and ``path``
(see :mod:`cacheman._cli`), and ``demo``, a short tour in a throw-away directory.

Exit status, the same for every command:

- 0: success;
- 1: a problem: damage found (that ``verify`` did not fix, or that ``list`` or
  ``show`` cannot read past), the manager or a named cache has nothing saved, a
  ``delete`` was not confirmed;
- 2: usage error: an unknown command or option, an invalid name (as ``argparse``
  and most Unix tools do);
- 3: refused: a directory or file another user could write, a signature that
  does not match, ``delete`` without ``--yes`` when standard input is not a terminal;
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from ._cli import COMMANDS, USAGE_ERROR, add_commands, add_common_options, run

__all__ = ["USAGE_ERROR", "main"]


def _program_name() -> str:
    # The console script runs as `cacheman`; `python -m` sets argv[0] to this file.
    launched_as = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "cacheman" if launched_as.startswith("cacheman") else "python -m cacheman"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_program_name(),
        description="CacheMan: dict caches that persist between runs.",
        epilog="Exit status: 0 success; 1 a problem (damage found, nothing saved under "
        "that name, a delete not confirmed); 2 usage error; 3 refused (a "
        "directory others can write, a signature mismatch, delete without --yes when "
        "standard input is not a terminal).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_common_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_commands(commands)
    demo = commands.add_parser(
        "demo",
        help="show a cache surviving a restart, a builder and invalidation, then clean up",
        description="Run a short tour of CacheMan in a throw-away cache directory.",
    )
    # The demo runs its steps in fresh interpreters (`demo --step NAME`) to show a
    # real restart; users never need the option, so it stays out of --help.
    demo.add_argument("--step", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as error:  # argparse exits on --help (0) and on usage errors (2)
        return error.code if isinstance(error.code, int) else USAGE_ERROR
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(args.step)
    if args.command in COMMANDS:
        return run(args)
    parser.print_usage(sys.stderr)
    print(
        f"{parser.prog}: error: a command is required (one of: {', '.join(COMMANDS)}, demo)",
        file=sys.stderr,
    )
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
