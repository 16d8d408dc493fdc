"""Reading ``pipeline enqueue`` files: a JSON array of objects, or a CSV with a header row.

Rows are numbered from 1 in file order (for a CSV, row N is on line N + 1). Problems with the
file as a whole raise ``BadFile`` (one line, nothing imported); problems with one row are
reported by the caller per row. Hostile input is judged, never a traceback: a CSV field may be
as long as the file (the columns' own limits are checked per row), an invalid UTF-8 byte makes
only its CSV row bad (a JSON file must be UTF-8 as a whole), and JSON nested deeper than the
parser can follow is refused.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import PipelineError
from app.schemas import TaskCreate

COLUMNS = frozenset(TaskCreate.model_fields)
REQUIRED = frozenset(name for name, field in TaskCreate.model_fields.items()
                     if field.is_required())
_EXTRA = "\0extra"
# What ``surrogateescape`` decodes an invalid UTF-8 byte to: U+DC80..U+DCFF (byte 0x80..0xFF).
_UNDECODABLE = re.compile(r"[\udc80-\udcff]")


class BadFile(PipelineError):
    """The file cannot be read as tasks."""


@dataclass(frozen=True)
class Row:
    number: int
    fields: dict[str, Any]
    #: ``(field, message)`` pairs that make the row unusable before validation (not an
    #: object, too many CSV cells, a field that is not UTF-8); field ``row`` for the whole row.
    problems: tuple[tuple[str, str], ...] = ()


def read(path: Path) -> list[Row]:
    """The file's rows as dictionaries; JSON by content (``[`` or ``{``), else CSV."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadFile(f"{path}: {exc.strerror or exc}") from None
    # Undecodable bytes are kept as lone surrogates, so a CSV can name the rows they are on.
    text = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8", "surrogateescape")
    if text.lstrip().startswith(("[", "{")):
        return _json_rows(path, text)
    return _csv_rows(path, text)


def _undecodable(value: str) -> str | None:
    """Why ``value`` (decoded with ``surrogateescape``) is not UTF-8 text, or None when it is."""
    found = _UNDECODABLE.search(value)
    if found is None:
        return None
    return (f"not valid UTF-8 (byte 0x{ord(found.group()) - 0xDC00:02X} "
            f"at character {found.start() + 1})")


def _json_rows(path: Path, text: str) -> list[Row]:
    if found := _UNDECODABLE.search(text):
        line = text.count("\n", 0, found.start()) + 1
        raise BadFile(f"{path}: not UTF-8 text (line {line}: byte "
                      f"0x{ord(found.group()) - 0xDC00:02X})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadFile(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        raise BadFile(f"{path}: JSON nested too deeply (a task is one flat object)") from None
    except ValueError as exc:           # e.g. an integer of more than 4300 digits
        raise BadFile(f"{path}: invalid JSON: {str(exc).split(':')[0]}") from None
    if not isinstance(data, list):
        raise BadFile(f"{path}: expected a JSON array of task objects")
    return [Row(n, item) if isinstance(item, dict)
            else Row(n, {}, (("row", f"expected an object, got {type(item).__name__}"),))
            for n, item in enumerate(data, start=1)]


def _csv_rows(path: Path, text: str) -> list[Row]:
    with _field_size_limit(len(text) + 1):
        reader = csv.DictReader(io.StringIO(text, newline=""), restkey=_EXTRA)
        try:
            header = _header(path, list(reader.fieldnames or []))
            reader.fieldnames = header
            return [_csv_row(n, raw, header) for n, raw in enumerate(reader, start=1)]
        except csv.Error as exc:
            raise BadFile(f"{path}: line {reader.line_num}: {exc}") from None


def _header(path: Path, names: list[str]) -> list[str]:
    header = [name.strip() for name in names]
    if not header:
        raise BadFile(f"{path}: empty file (expected a CSV header or a JSON array)")
    for name in header:
        if why := _undecodable(name):
            raise BadFile(f"{path}: CSV header: {why}")
    unknown = [name if name.isprintable() else repr(name)
               for name in header if name not in COLUMNS]
    if unknown:
        raise BadFile(f"{path}: unknown CSV column(s) {', '.join(unknown)}; "
                      f"known: {', '.join(sorted(COLUMNS))}")
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise BadFile(f"{path}: CSV header names {', '.join(twice)} more than once")
    missing = sorted(REQUIRED - set(header))
    if missing:
        raise BadFile(f"{path}: CSV header lacks {', '.join(missing)}")
    return header


def _csv_row(number: int, raw: dict[str, Any], header: list[str]) -> Row:
    extra = raw.pop(_EXTRA, None)
    if extra:
        cells = f"{len(header) + len(extra)} cells for {len(header)} columns"
        return Row(number, {}, (("row", cells),))
    fields = {k: v for k, v in raw.items() if v not in (None, "")}
    problems = tuple((name, why) for name, value in fields.items()
                     if (why := _undecodable(value)))
    return Row(number, fields, problems)


@contextlib.contextmanager
def _field_size_limit(limit: int) -> Iterator[None]:
    """Let a field be as long as the file: the columns' own limits are checked per row, so an
    over-long field is one bad row, not a file the reader gives up on."""
    previous = csv.field_size_limit(max(limit, csv.field_size_limit()))
    try:
        yield
    finally:
        csv.field_size_limit(previous)
