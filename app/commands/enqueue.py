"""``pipeline enqueue FILE``: import tasks from JSON or CSV, the offline twin of the sync.

Every row is validated on its own; bad rows are reported by row number and field and the good
ones are imported (each row in a savepoint, rows committed in chunks). Idempotent on
``notion_page_id``. Exit 2 when any row was bad.
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
from app.commands.context import Context
from app.db import session_scope
from app.db.models import Channel
from app.errors import PipelineError
from app.schemas import TaskCreate, field_errors
from app.services import tasks

CHUNK = 500


@dataclass(frozen=True)
class RowError:
    row: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.field}: {self.message}"


def validate(found: list[rows.Row], active: dict[str, bool]) -> tuple[
        list[tuple[int, TaskCreate]], list[RowError]]:
    """Rows as ``TaskCreate`` (with a known, active channel), and the errors of the others."""
    good, bad = [], []
    for row in found:
        if row.problem:
            bad.append(RowError(row.number, "row", row.problem))
            continue
        try:
            data = TaskCreate.model_validate(row.fields)
        except ValidationError as exc:
            bad += [RowError(row.number, f, m) for f, m in field_errors(exc)]
            continue
        if data.channel not in active:
            bad.append(RowError(row.number, "channel", f"unknown channel {data.channel!r}"))
        elif not active[data.channel]:
            bad.append(RowError(row.number, "channel", f"channel {data.channel!r} is inactive"))
        else:
            good.append((row.number, data))
    return good, bad


async def run(ctx: Context, args: argparse.Namespace) -> int:
    found = rows.read(Path(args.file))
    async with session_scope(ctx.sessions) as session:
        active = dict((await session.execute(
            sa.select(Channel.channel_id, Channel.is_active))).tuples().all())
    good, bad = validate(found, active)
    results: list[dict[str, object]] = []

    async def step(session: AsyncSession, row: tuple[int, TaskCreate]) -> tasks.EnqueueResult:
        return await tasks.enqueue(session, row[1], actor=ctx.actor)

    for (number, data), result in await ctx.each(good, step, label="enqueue", chunk=CHUNK):
        if isinstance(result, PipelineError):      # e.g. the channel deactivated meanwhile
            bad.append(RowError(number, "channel", str(result)))
            continue
        results.append({"row": number, "task_id": str(result.task_id),
                        "notion_page_id": data.notion_page_id, "status": result.status.value,
                        "outcome": result.outcome.value, "queued_now": result.queued_now})
    await ctx.wake(sum(1 for r in results if r["queued_now"]))
    bad.sort(key=lambda e: e.row)
    _report(ctx, len(found), results, bad)
    return 2 if bad else 0


def _report(ctx: Context, total: int, results: list[dict[str, object]],
            bad: list[RowError]) -> None:
    outcomes = Counter(str(r["outcome"]) for r in results)
    queued = sum(1 for r in results if r["queued_now"])
    bad_rows = len({e.row for e in bad})
    summary = {"rows": total, "created": outcomes["created"], "updated": outcomes["updated"],
               "unchanged": outcomes["unchanged"], "queued": queued, "bad": bad_rows}
    if ctx.as_json:
        ctx.emit({**summary, "tasks": results,
                  "errors": [{"row": e.row, "field": e.field, "message": e.message}
                             for e in bad]}, "")
        return
    for error in bad:
        print(f"pipeline: {error}", file=sys.stderr)
    ctx.emit(summary, tables.render(list(summary), [list(summary.values())]))
