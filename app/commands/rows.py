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


def read(path: Path, *, ignore_extra: bool = False) -> Parsed:
    """The file's rows as dictionaries (see ``parse``)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadFile(f"{path}: {exc.strerror or exc}") from None
    return parse(str(path), raw, ignore_extra=ignore_extra)


@dataclass(frozen=True)
class Parsed:
    rows: list[Row]
    #: Columns (CSV) or keys (JSON) that are not task fields, dropped by ``ignore_extra``.
    ignored: tuple[str, ...] = ()


def parse(name: str, raw: bytes, *, ignore_extra: bool = False) -> Parsed:
    """Rows from a file's bytes (``name`` in messages): JSON by content (``[`` or ``{``), else
    CSV. A null JSON value counts as absent (its default applies). ``ignore_extra`` drops
    columns and keys that are not task fields (a CSV exported from Notion or a spreadsheet)
    instead of refusing them."""
    # Undecodable bytes are kept as lone surrogates, so a CSV can name the rows they are on.
    text = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8", "surrogateescape")
    if text.lstrip().startswith(("[", "{")):
        return _json_rows(name, text, ignore_extra)
    return _csv_rows(name, text, ignore_extra)


def _undecodable(value: str) -> str | None:
    """Why ``value`` (decoded with ``surrogateescape``) is not UTF-8 text, or None when it is."""
    found = _UNDECODABLE.search(value)
    if found is None:
        return None
    return (f"not valid UTF-8 (byte 0x{ord(found.group()) - 0xDC00:02X} "
            f"at character {found.start() + 1})")


def _json_rows(path: str, text: str, ignore_extra: bool) -> Parsed:
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
    ignored = ({key for item in data if isinstance(item, dict) for key in item} - COLUMNS
               if ignore_extra else set())
    return Parsed([Row(n, {k: v for k, v in item.items() if v is not None and k not in ignored})
                   if isinstance(item, dict)
                   else Row(n, {}, (("row", f"expected an object, got {type(item).__name__}"),))
                   for n, item in enumerate(data, start=1)], tuple(sorted(ignored)))


def _csv_rows(path: str, text: str, ignore_extra: bool) -> Parsed:
    with _field_size_limit(len(text) + 1):
        reader = csv.DictReader(io.StringIO(text, newline=""), restkey=_EXTRA)
        try:
            header = _header(path, list(reader.fieldnames or []), ignore_extra)
            reader.fieldnames = header
            ignored = tuple(dict.fromkeys(name for name in header if name not in COLUMNS))
            return Parsed([_csv_row(n, raw, header) for n, raw in enumerate(reader, start=1)],
                          ignored)
        except csv.Error as exc:
            raise BadFile(f"{path}: line {reader.line_num}: {exc}") from None


def _header(path: str, names: list[str], ignore_extra: bool) -> list[str]:
    header = [name.strip() for name in names]
    if not header:
        raise BadFile(f"{path}: empty file (expected a CSV header or a JSON array)")
    for name in header:
        if why := _undecodable(name):
            raise BadFile(f"{path}: CSV header: {why}")
    unknown = [name if name.isprintable() else repr(name)
               for name in header if name not in COLUMNS]
    if unknown and not ignore_extra:
        raise BadFile(f"{path}: unknown CSV column(s) {', '.join(unknown)}; "
                      f"known: {', '.join(sorted(COLUMNS))} (--ignore-extra-columns drops"
                      " the others)")
    twice = sorted({name for name in header if header.count(name) > 1 and name in COLUMNS})
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
    fields = {k: v for k, v in raw.items() if v not in (None, "") and k in COLUMNS}
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
