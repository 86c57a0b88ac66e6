"""Plain-text tables for terminal output (no dependency, aligned columns)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                 right: Sequence[int] = ()) -> str:
    """Align ``rows`` under ``headers``; columns listed in ``right`` are right-aligned.

    Examples
    --------
    >>> print(format_table(["a", "n"], [["x", 1], ["yy", 10]], right=[1]))
    a    n
    x    1
    yy  10
    """
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
