"""What every benchmark script prints: a table with aligned columns, then its verdict.

The verdict line ("all targets met" / "TARGET MISSED: ...") and the exit status
(0 / 1) are what tests/test_benchmarks.py checks.
"""

from __future__ import annotations

from collections.abc import Sequence


def print_columns(header: Sequence[str], lines: Sequence[Sequence[str]]) -> None:
    """Print ``header``, a rule, then ``lines``, each column as wide as its widest cell."""
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for line in [header, tuple("-" * width for width in widths), *lines]:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())


def verdict(missed: Sequence[str]) -> int:
    """Print the verdict for the targets ``missed``; return the script's exit status."""
    if missed:
        print(f"TARGET MISSED: {', '.join(missed)}")
        return 1
    print("all targets met")
    return 0
