"""The demo behind ``python -m cacheman demo`` (placeholder, replaced by the README/demo work)."""

from __future__ import annotations


def run_demo() -> int:
    """Run the demo; return the process exit status."""
    return 0
