"""Aligned plain-text tables for human output (``--json`` output bypasses this).

A cell never breaks its table: control characters (a newline or an escape sequence in a title)
are shown escaped, and widths are measured in terminal cells, so wide characters (CJK, emoji)
stay aligned.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from rich.cells import cell_len


def render(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers (and blanks among them) right-aligned."""
    cells = [[_text(value) for value in row] for row in rows]
    widths = [max([cell_len(h), *(cell_len(row[i]) for row in cells)])
              for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) or row[i] is None for row in rows)
               and any(_is_number(row[i]) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [_pad(v, w, right=num) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(row) for row in cells)])


def _pad(value: str, width: int, *, right: bool) -> str:
    fill = " " * (width - cell_len(value))
    return fill + value if right else value + fill


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return printable(str(value))


def printable(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``): one line, no
    terminal sequences."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or unicodedata.category(c) == "Zs"
                   else c.encode("unicode_escape").decode("ascii") for c in text)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
