"""``pipeline prune``: remove published tasks and old history, in bounded batches."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.commands.context import Context
from app.commands.progress import Progress
from app.db import session_scope
from app.errors import PipelineError
from app.services import retention, transitions
from app.services.retention import PruneCounts

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}

Batch = Callable[[AsyncSession], Awaitable[PruneCounts]]


class BadDuration(PipelineError):
    """Not a duration."""


def duration(text: str) -> timedelta:
    """``30s``, ``10m``, ``1h``, ``24h``, ``7d`` or ``2w`` (at least one second)."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None or int(found.group(1)) == 0:
        raise BadDuration(f"--older-than {text!r}: expected a positive number and a unit"
                          " (30s, 10m, 1h, 24h, 7d, 2w)")
    return timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])


async def prune(ctx: Context, args: argparse.Namespace) -> int:
    before = transitions.utcnow() - duration(args.older_than)
    async with session_scope(ctx.sessions) as session:
        planned = await retention.plan(session, before=before,
                                       published_only=args.published_only)
    if args.dry_run:
        _report(ctx, planned, before, dry_run=True)
        return 0
    done = PruneCounts()
    batches = 0
    progress = Progress("prune", planned.rows)
    steps: list[Batch] = [lambda s: retention.prune_tasks(s, before=before)]
    if not args.published_only:
        steps.append(lambda s: retention.prune_events(s, before=before))
    try:
        for step in steps:
            while True:
                async with session_scope(ctx.sessions) as session:
                    batch = await step(session)
                if not batch.rows:
                    break
                done += batch
                batches += 1
                progress.advance(batch.rows)
    except (asyncio.CancelledError, PipelineError, OSError) as exc:
        progress.close()
        print(f"pipeline: prune stopped ({type(exc).__name__}); already removed (committed): "
              f"{_summary(done)} in {batches} batch(es)", file=sys.stderr)
        raise
    progress.close()
    _report(ctx, done, before, dry_run=False, batches=batches)
    return 0


def _summary(counts: PruneCounts) -> str:
    return (f"{counts.tasks} published task(s) with their {counts.task_events} event(s), and "
            f"{counts.older_events} older event(s) of other tasks")


def _report(ctx: Context, counts: PruneCounts, before: datetime, *, dry_run: bool,
            batches: int = 0) -> None:
    """What went (or would go); ``batches``: the transactions it took, each committed."""
    data = {"dry_run": dry_run, "before": before.isoformat(), "tasks": counts.tasks,
            "task_events": counts.task_events, "older_events": counts.older_events}
    if not dry_run:
        data["batches"] = batches
    verb = "would remove" if dry_run else "removed"
    ctx.emit(data, f"{verb} {_summary(counts)}, before {before:%Y-%m-%d %H:%M:%S} UTC"
             + ("; nothing changed" if dry_run else f", in {batches} batch(es)"))
