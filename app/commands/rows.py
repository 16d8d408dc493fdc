"""Reading ``pipeline enqueue`` files: a JSON array of objects, or a CSV with a header row.

Rows are numbered from 1 in file order (for a CSV, row N is on line N + 1). Problems with the
file as a whole raise ``BadFile``; problems with one row are reported by the caller per row.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import PipelineError
from app.schemas import TaskCreate

COLUMNS = frozenset(TaskCreate.model_fields)
REQUIRED = frozenset(name for name, field in TaskCreate.model_fields.items()
                     if field.is_required())


class BadFile(PipelineError):
    """The file cannot be read as tasks."""


@dataclass(frozen=True)
class Row:
    number: int
    fields: dict[str, Any]
    #: Set when the row is unusable before validation (not an object, too many CSV cells).
    problem: str | None = None


def read(path: Path) -> list[Row]:
    """The file's rows as dictionaries; JSON by content (``[``), else CSV."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise BadFile(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadFile(f"{path}: not UTF-8 text") from None
    if text.lstrip().startswith(("[", "{")):
        return _json_rows(path, text)
    return _csv_rows(path, text)


def _json_rows(path: Path, text: str) -> list[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadFile(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise BadFile(f"{path}: expected a JSON array of task objects")
    return [Row(n, item) if isinstance(item, dict)
            else Row(n, {}, f"expected an object, got {type(item).__name__}")
            for n, item in enumerate(data, start=1)]


def _csv_rows(path: Path, text: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey="\0extra")
    header = [name.strip() for name in reader.fieldnames or []]
    if not header:
        raise BadFile(f"{path}: empty file (expected a CSV header or a JSON array)")
    unknown = [name for name in header if name not in COLUMNS]
    if unknown:
        raise BadFile(f"{path}: unknown CSV column(s) {', '.join(unknown)}; "
                      f"known: {', '.join(sorted(COLUMNS))}")
    missing = sorted(REQUIRED - set(header))
    if missing:
        raise BadFile(f"{path}: CSV header lacks {', '.join(missing)}")
    reader.fieldnames = header
    rows = []
    for n, raw in enumerate(reader, start=1):
        extra = raw.pop("\0extra", None)
        fields = {k: v for k, v in raw.items() if v not in (None, "")}
        problem = f"{len(header) + len(extra)} cells for {len(header)} columns" if extra else None
        rows.append(Row(n, fields, problem))
    return rows
