"""``python -m cacheman``: the command line (``demo`` now, more commands later).

Exit status: 0 on success, 2 for a usage error (an unknown command or option),
as ``argparse`` and most Unix tools do.
"""

from __future__ import annotations

import argparse
import sys

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cacheman",
        description="CacheMan: dict caches that persist between runs.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    parser.print_usage(sys.stderr)
    print("python -m cacheman: error: a command is required (try: demo)", file=sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
