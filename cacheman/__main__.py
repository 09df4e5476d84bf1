"""``python -m cacheman demo``: show a cache surviving a restart (more commands later)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        from ._demo import run_demo

        return run_demo()
    print("usage: python -m cacheman demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
