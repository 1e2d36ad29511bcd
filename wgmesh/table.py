"""The plain-text table every command prints (`nodes list`, `lab status`, `agent status`, the benches):
columns two spaces apart, each as wide as its widest cell, no trailing blanks; None shows as "-"."""

from __future__ import annotations

from collections.abc import Sequence


def table(headers: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[("-" if c is None else str(c)) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )
