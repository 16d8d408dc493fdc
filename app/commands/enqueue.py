"""``pipeline enqueue FILE``: import tasks from JSON or CSV, the offline twin of the sync.

Every row is judged on its own: a field that fails validation, a ``notion_page_id`` already on
an earlier row, a CSV field that is not UTF-8, a row the database refuses — each is a bad row,
reported by row number and field, and the good rows are imported (each in a savepoint, rows
committed in chunks). Idempotent on ``notion_page_id``. Exit 2 when any row was bad.

An import stopped midway (SIGINT, SIGTERM, the database gone) says which rows were committed
and which were not, and exits 128 + the signal's number (1 when the database failed).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.commands import rows, tables
from app.commands.batches import Stopped
from app.commands.context import Context, warn
from app.db import session_scope
from app.db.models import Channel
from app.errors import ChannelInactive, ChannelNotFound, InvalidTransition, PipelineError
from app.schemas import TaskCreate, field_errors, normalize_page_id
from app.services import tasks

CHUNK = 500
Good = tuple[int, TaskCreate]


@dataclass(frozen=True)
class RowError:
    row: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.field}: {self.message}"


@dataclass(frozen=True)
class StopReport:
    """Which rows an interrupted import committed: ``(first, last)`` row ranges."""

    reason: str
    committed: tuple[int, int] | None
    in_doubt: tuple[int, int] | None
    not_imported: tuple[int, int] | None
    bad_among_committed: bool

    def line(self) -> str:
        parts = []
        if self.committed:
            parts.append(f"{_rows(self.committed)} imported and committed"
                         + (", except the bad rows reported" if self.bad_among_committed
                            else ""))
        if self.in_doubt:
            parts.append(f"{_rows(self.in_doubt)} may or may not be committed (the connection "
                         "was lost during their commit)")
        if self.not_imported:
            parts.append(f"{_rows(self.not_imported)} not imported")
        return f"{self.reason}: {'; '.join(parts)}"


def validate(found: list[rows.Row], active: dict[str, bool]) -> tuple[
        list[Good], list[RowError]]:
    """Rows as ``TaskCreate`` (with a known, active channel, the first row of its page id),
    and the errors of the others."""
    good: list[Good] = []
    bad: list[RowError] = []
    first_rows = _first_rows(found)
    for row in found:
        key = _page_key(row)
        first = first_rows[key] if key is not None else row.number
        data, errors = _judge(row, first, active)
        if data is None:
            bad += errors
        else:
            good.append((row.number, data))
    return good, bad


def _judge(row: rows.Row, first: int, active: dict[str, bool]) -> tuple[
        TaskCreate | None, list[RowError]]:
    """The row's task, or why it is bad (every reason found)."""
    if row.problems:
        return None, [RowError(row.number, _shown(f), m) for f, m in row.problems]
    errors = []
    if first != row.number:
        errors.append(RowError(row.number, "notion_page_id",
                               f"duplicate notion_page_id: also on row {first}"))
    try:
        data = TaskCreate.model_validate(row.fields)
    except ValidationError as exc:
        return None, errors + [RowError(row.number, _shown(f), m) for f, m in field_errors(exc)]
    if data.channel not in active:
        errors.append(RowError(row.number, "channel", f"unknown channel {data.channel!r}"))
    elif not active[data.channel]:
        errors.append(RowError(row.number, "channel", f"channel {data.channel!r} is inactive"))
    return (None, errors) if errors else (data, [])


def _page_key(row: rows.Row) -> str | None:
    """The row's page id as stored (dashes and case do not make two pages), if it has one."""
    value = row.fields.get("notion_page_id")
    try:
        return normalize_page_id(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _first_rows(found: list[rows.Row]) -> dict[str, int]:
    """Each page id's first row: that row is the page's, later ones are duplicates."""
    first: dict[str, int] = {}
    for row in found:
        key = _page_key(row)
        if key is not None:
            first.setdefault(key, row.number)
    return first


async def run(ctx: Context, args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            parsed = rows.parse("<stdin>", sys.stdin.buffer.read(),
                                ignore_extra=args.ignore_extra_columns)
        else:
            parsed = rows.read(Path(args.file), ignore_extra=args.ignore_extra_columns)
    except rows.BadFile as exc:
        raise rows.BadFile(f"{exc}; nothing imported") from None
    if parsed.ignored:
        warn(f"ignored column(s): {', '.join(parsed.ignored)}")
    found = parsed.rows
    async with session_scope(ctx.sessions) as session:
        active = dict((await session.execute(
            sa.select(Channel.channel_id, Channel.is_active))).tuples().all())
    good, bad = validate(found, active)

    async def step(session: AsyncSession, row: Good) -> tasks.EnqueueResult:
        return await tasks.enqueue(session, row[1], actor=ctx.actor)

    stopped: Stopped | None = None
    try:
        outcomes = await ctx.each(good, step, label="enqueue", chunk=CHUNK, contained=True)
    except Stopped as exc:
        outcomes, stopped = exc.outcomes, exc
    results: list[dict[str, object]] = []
    for (number, data), result in outcomes:
        if isinstance(result, PipelineError):      # e.g. the channel deactivated meanwhile
            bad.append(RowError(number, field_of(result), str(result)))
            continue
        results.append({"row": number, "task_id": str(result.task_id),
                        "notion_page_id": data.notion_page_id, "status": result.status.value,
                        "outcome": result.outcome.value, "queued_now": result.queued_now})
    await ctx.wake(sum(1 for r in results if r["queued_now"]))
    bad.sort(key=lambda e: e.row)
    stop = None if stopped is None else _stop_report(stopped, good, len(found), bad)
    _report(ctx, len(found), results, bad, stop)
    if stopped is not None:
        return stopped.exit_code
    return 2 if bad else 0


def field_of(error: PipelineError) -> str:
    """The field an item's refusal at write time is about."""
    if isinstance(error, ChannelNotFound | ChannelInactive):
        return "channel"
    return "status" if isinstance(error, InvalidTransition) else "row"


def _stop_report(stopped: Stopped, good: list[Good], total: int,
                 bad: list[RowError]) -> StopReport:
    """Rows by number: ``good[:committed]`` are in, then ``in_doubt`` good rows may be, and
    nothing after them is (the rows in between that were bad are reported as bad)."""
    committed = good[:stopped.committed]
    doubtful = good[stopped.committed:stopped.committed + stopped.in_doubt]
    last = committed[-1][0] if committed else 0
    doubt_last = doubtful[-1][0] if doubtful else last
    return StopReport(
        reason=str(stopped),
        committed=(1, last) if committed else None,
        in_doubt=(last + 1, doubt_last) if doubtful else None,
        not_imported=(doubt_last + 1, total) if doubt_last < total else None,
        bad_among_committed=any(error.row <= last for error in bad))


def _report(ctx: Context, total: int, results: list[dict[str, object]],
            bad: list[RowError], stop: StopReport | None) -> None:
    outcomes = Counter(str(r["outcome"]) for r in results)
    queued = sum(1 for r in results if r["queued_now"])
    bad_rows = len({e.row for e in bad})
    summary = {"rows": total, "created": outcomes["created"], "updated": outcomes["updated"],
               "unchanged": outcomes["unchanged"], "queued": queued, "bad": bad_rows}
    if ctx.as_json:
        stopped = None if stop is None else {
            "reason": stop.reason, "committed_rows": stop.committed,
            "in_doubt_rows": stop.in_doubt, "not_imported_rows": stop.not_imported}
        ctx.emit({**summary, "tasks": results,
                  "errors": [{"row": e.row, "field": e.field, "message": e.message}
                             for e in bad], "stopped": stopped}, "")
    else:
        for error in bad:
            print(f"pipeline: {error}", file=sys.stderr)
        ctx.emit(summary, tables.render(list(summary), [list(summary.values())]))
    if stop is not None:
        print(f"pipeline: {stop.line()}", file=sys.stderr)


def _rows(span: tuple[int, int]) -> str:
    first, last = span
    return f"row {first}" if first == last else f"rows {first}\N{EN DASH}{last}"


def _shown(field: str) -> str:
    """A field name fit for one line of output (a JSON key may hold anything)."""
    shown = field if field.isprintable() else ascii(field)
    return shown if len(shown) <= 60 else f"{shown[:57]}..."
