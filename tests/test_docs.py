"""The README's lifecycle table is the one generated from ``app.lifecycle``."""

from __future__ import annotations

from pathlib import Path

from app import docs

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_lifecycle_table_is_generated() -> None:
    text = README.read_text()
    start, end = text.index(docs.BEGIN), text.index(docs.END) + len(docs.END)
    assert text[start:end] == docs.lifecycle_table(), "run `python -m app.docs` into README"
