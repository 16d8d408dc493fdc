"""``pipeline approve`` and ``pipeline requeue``: the operator's audited actions."""

from __future__ import annotations

import argparse
import sys
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.commands import tables
from app.commands.context import Context
from app.db import session_scope
from app.db.models import Task
from app.errors import PipelineError
from app.lifecycle import TaskStatus
from app.services import channels, tasks, transitions
from app.services.transitions import RequeuePlan

CHUNK = 200
PLAN_HEADERS = ("id", "status", "failed stage", "resumes at", "title")


class RequeueRefused(PipelineError):
    """Some tasks cannot be requeued."""


async def approve(ctx: Context, args: argparse.Namespace) -> int:
    async with session_scope(ctx.sessions) as session:
        task_id = await tasks.find_task(session, args.task_id)
        before = await transitions.current_status(session, task_id)
        task = await transitions.approve(session, task_id, actor=ctx.actor, gate=args.gate,
                                         note=args.note)
    await ctx.wake(1)
    ctx.emit({"task_id": str(task.id), "from": before.value, "to": task.status.value},
             f"task {task.id}: {before.value} → {task.status.value}")
    return 0


async def requeue(ctx: Context, args: argparse.Namespace) -> int:
    plans, refused = await _plan(ctx, args)
    if refused:
        for message in refused:
            print(f"pipeline: {message}", file=sys.stderr)
        raise RequeueRefused(f"{len(refused)} task(s) refused, nothing requeued")
    if args.dry_run or not plans:
        _print_plans(ctx, plans, done=False)
        return 0
    done, skipped = await _apply(ctx, plans, reason=args.reason)
    await ctx.wake(len(done))
    for message in skipped:
        print(f"pipeline: skipped: {message}", file=sys.stderr)
    _print_plans(ctx, done, done=True)
    return 2 if skipped else 0


async def _plan(ctx: Context, args: argparse.Namespace) -> tuple[list[RequeuePlan], list[str]]:
    """Every task's plan, or the reasons some cannot be requeued (nothing is changed)."""
    plans: list[RequeuePlan] = []
    refused: list[str] = []
    async with session_scope(ctx.sessions) as session:
        if args.task_ids:
            ids = []
            for ref in args.task_ids:
                try:
                    ids.append(await tasks.find_task(session, ref))
                except PipelineError as exc:
                    refused.append(str(exc))
        else:
            ids = await _ids_by_status(session, args.status, args.channel)
        for task_id in dict.fromkeys(ids):
            try:
                plans.append(await transitions.plan_requeue(session, task_id))
            except PipelineError as exc:
                refused.append(str(exc))
    return plans, refused


async def _ids_by_status(session: AsyncSession, statuses: list[str],
                         channel: str | None) -> list[uuid.UUID]:
    stmt = (sa.select(Task.id).where(Task.status.in_([TaskStatus(s) for s in statuses]))
            .order_by(Task.created_at, Task.id))
    if channel is not None:
        stmt = stmt.where(Task.channel_id == (await channels.get_channel(session, channel)).id)
    return list(await session.scalars(stmt))


async def _apply(ctx: Context, plans: list[RequeuePlan], *, reason: str | None) -> tuple[
        list[RequeuePlan], list[str]]:
    """Requeue in short transactions; a task a worker took meanwhile is skipped, not forced."""
    async def step(session: AsyncSession, plan: RequeuePlan) -> RequeuePlan:
        return await transitions.requeue(session, plan.task_id, actor=ctx.actor, reason=reason)

    outcomes = await ctx.each(plans, step, label="requeue", chunk=CHUNK)
    return ([done for _, done in outcomes if not isinstance(done, PipelineError)],
            [str(exc) for _, exc in outcomes if isinstance(exc, PipelineError)])


def _print_plans(ctx: Context, plans: list[RequeuePlan], *, done: bool) -> None:
    data = {"dry_run": not done, "count": len(plans),
            "tasks": [{"task_id": str(p.task_id), "title": p.title, "status": p.status.value,
                       "stage": p.stage.name, "resumes_at": p.resumes_at.value}
                      for p in plans]}
    if not plans:
        ctx.emit(data, "no tasks to requeue")
        return
    rows = [(p.task_id, p.status.value, p.stage.name, p.resumes_at.value, p.title)
            for p in plans]
    verdict = (f"requeued {len(plans)} task(s): each retries when a worker takes it" if done
               else f"dry run: {len(plans)} task(s) would be requeued; nothing changed")
    ctx.emit(data, f"{tables.render(PLAN_HEADERS, rows)}\n{verdict}")
