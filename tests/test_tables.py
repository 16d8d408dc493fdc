"""Human tables never break: control characters are escaped and wide characters measured in
terminal cells."""

from __future__ import annotations

from rich.cells import cell_len

from app.commands import tables


def test_wide_and_control_characters_keep_the_columns_aligned() -> None:
    out = tables.render(("id", "title", "runs"), [
        (1, "日本語のタイトル", 5), (22, "a\nb\x1b[31mred\tx", 7), (3, "plain", 10)])
    lines = out.splitlines()
    assert len(lines) == 5                         # header, rule, one line per row
    assert "\x1b" not in out and "a\\nb\\x1b[31mred\\tx" in out
    assert len({cell_len(line) for line in lines}) == 1, out   # the last column lines up
