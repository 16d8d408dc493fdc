"""``pipeline hold`` and ``pipeline release``: stop tasks from being claimed, and let them go.

Tasks are named (TASK…) or chosen by ``--status`` (and ``--channel``). Names that find no task
and finished tasks are refused up front, and then nothing changes (exit 2). A task already on
hold (or, for a release, not on hold) is reported, not an error, so scripts can re-run. The
writes go in short transactions of ``CHUNK`` tasks with a progress bar; the workers are woken
after a release commits.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence

from app import moves
from app.commands import tables
from app.commands.context import Context
from app.commands.operations import chosen_tasks
from app.commands.progress import Progress
from app.db import session_scope
from app.errors import PipelineError
from app.lifecycle import TaskStatus
from app.services import holds
from app.services.holds import HoldState

CHUNK = 500
HEADERS = ("id", "status", "outcome", "title")


class HoldRefused(PipelineError):
    """Some tasks cannot be held or released; nothing was changed."""


async def hold(ctx: Context, args: argparse.Namespace) -> int:
    return await _act(ctx, args, holding=True)


async def release(ctx: Context, args: argparse.Namespace) -> int:
    return await _act(ctx, args, holding=False)


async def _act(ctx: Context, args: argparse.Namespace, *, holding: bool) -> int:
    verb = holds.HOLD if holding else holds.RELEASE
    chosen, refused = await _chosen(ctx, args, holding=holding)
    if refused:
        for message in refused:
            print(f"pipeline: {message}", file=sys.stderr)
        raise HoldRefused(f"{len(refused)} task(s) refused; nothing was {_past(verb)}")
    to_change = [s for s in chosen if s.on_hold is not holding]
    unchanged = [s for s in chosen if s.on_hold is holding]
    changed: list[uuid.UUID] = []
    if not args.dry_run and to_change:
        changed = await _write(ctx, [s.task_id for s in to_change], holding=holding,
                               reason=args.reason)
        if not holding:
            await ctx.wake(len(changed))
    done = set(changed)
    # A task another operator changed meanwhile is neither written nor reported as written.
    raced = [s for s in to_change if s.task_id not in done] if not args.dry_run else []
    written = to_change if args.dry_run else [s for s in to_change if s.task_id in done]
    _report(ctx, verb, written, unchanged + raced, dry_run=args.dry_run, reason=args.reason)
    return 0


async def _chosen(ctx: Context, args: argparse.Namespace, *, holding: bool) -> tuple[
        list[HoldState], list[str]]:
    refused: list[str] = []
    async with session_scope(ctx.sessions) as session:
        ids = await chosen_tasks(session, args, refused, lambda channel: holds.select(
            session, [TaskStatus(s) for s in args.status], channel=channel,
            on_hold=not holding))
        chosen = await holds.states(session, ids)
    if holding:
        refused += [f"task {s.task_id} is {s.status.value}: a finished task cannot be held"
                    for s in chosen if not moves.can_hold(s.status)]
    return chosen, refused


async def _write(ctx: Context, task_ids: Sequence[uuid.UUID], *, holding: bool,
                 reason: str | None) -> list[uuid.UUID]:
    verb = holds.HOLD if holding else holds.RELEASE
    write = holds.hold if holding else holds.release
    progress = Progress(verb, len(task_ids))
    changed: list[uuid.UUID] = []
    try:
        for start in range(0, len(task_ids), CHUNK):
            part = task_ids[start:start + CHUNK]
            async with session_scope(ctx.sessions) as session:
                changed += await write(session, part, actor=ctx.actor, reason=reason,
                                       now=moves.utcnow())
            progress.advance(len(part))
    except BaseException:
        if changed:
            print(f"pipeline: stopped after {len(changed)} task(s) {_past(verb)}"
                  " (committed); the rest unchanged", file=sys.stderr)
        raise
    finally:
        progress.close()
    return changed


def _past(verb: str) -> str:
    return "held" if verb == holds.HOLD else "released"


def _report(ctx: Context, verb: str, written: list[HoldState], unchanged: list[HoldState],
            *, dry_run: bool, reason: str | None) -> None:
    past = _past(verb)
    already = "already on hold" if verb == holds.HOLD else "not on hold"

    def item(s: HoldState) -> dict[str, str]:
        return {"task_id": str(s.task_id), "title": s.title, "status": s.status.value}

    data = {"dry_run": dry_run, past: [item(s) for s in written],
            already.replace(" ", "_"): [item(s) for s in unchanged], "reason": reason}
    rows = [(s.task_id, s.status.value, f"would be {past}" if dry_run else past,
             s.title) for s in written]
    rows += [(s.task_id, s.status.value, already, s.title) for s in unchanged]
    verdict = (f"{len(written)} task(s) {'would be ' if dry_run else ''}{past},"
               f" {len(unchanged)} {already}" + ("; nothing changed" if dry_run else ""))
    if verb == holds.HOLD and written and not dry_run:
        verdict += "; a running stage stops at its next heartbeat"
    ctx.emit(data, (tables.render(HEADERS, rows) + "\n" if rows else "") + verdict)
