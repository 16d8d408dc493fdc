"""``pipeline approve`` and ``pipeline requeue``: the operator's audited actions."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.commands import tables
from app.commands.context import Context
from app.db import session_scope
from app.db.models import Task
from app.errors import PipelineError
from app.lifecycle import TaskStatus
from app.services import channels, tasks, transitions
from app.services.transitions import ApprovalPlan, RequeuePlan

CHUNK = 200
PLAN_HEADERS = ("id", "status", "failed stage", "resumes at", "title")
APPROVAL_HEADERS = ("id", "status", "gate", "outcome", "title")


class RequeueRefused(PipelineError):
    """Some tasks cannot be requeued."""


class ApprovalRefused(PipelineError):
    """The task cannot be approved."""


async def approve(ctx: Context, args: argparse.Namespace) -> int:
    """One task (its JSON: ``task_id``, ``from``, ``to``), or many: the TASKs given or every
    task at ``--gate`` (of ``--channel``). A task already past the gate is reported, not an
    error; one short of it is refused and the others go on (exit 2)."""
    plans, refused = await _approval_plans(ctx, args)
    single = len(args.task_ids) == 1 and not args.dry_run
    if single and not refused and not plans[0].already:
        plan = plans[0]
        async with session_scope(ctx.sessions) as session:
            task = await transitions.approve(session, plan.task_id, actor=ctx.actor,
                                             gate=args.gate, note=args.note)
        await ctx.wake(1)
        ctx.emit({"task_id": str(task.id), "from": plan.status.value, "to": task.status.value},
                 f"task {task.id}: {plan.status.value} → {task.status.value}")
        return 0
    if single and refused:
        raise ApprovalRefused(refused[0])
    to_pass = [p for p in plans if not p.already]
    done: list[ApprovalPlan] = []
    skipped: list[str] = []
    if not args.dry_run and to_pass:
        outcomes = await approve_plans(ctx, to_pass, note=args.note)
        done = [p for _, p in outcomes if not isinstance(p, PipelineError)]
        skipped = [str(e) for _, e in outcomes if isinstance(e, PipelineError)]
        await ctx.wake(len(done))
    for message in [*refused, *(f"skipped: {m}" for m in skipped)]:
        print(f"pipeline: {message}", file=sys.stderr)
    _print_approvals(ctx, to_pass if args.dry_run else done,
                     [p for p in plans if p.already], refused + skipped, dry_run=args.dry_run)
    return 2 if refused or skipped else 0


async def _approval_plans(ctx: Context, args: argparse.Namespace) -> tuple[
        list[ApprovalPlan], list[str]]:
    plans: list[ApprovalPlan] = []
    refused: list[str] = []
    async with session_scope(ctx.sessions) as session:
        ids = await chosen_tasks(session, args, refused, lambda channel: (
            transitions.waiting_at_gate(session, args.gate, channel)))
        for task_id in ids:
            try:
                plans.append(await transitions.plan_approval(session, task_id, gate=args.gate))
            except PipelineError as exc:
                refused.append(str(exc))
    return plans, refused


def _print_approvals(ctx: Context, passed: list[ApprovalPlan], already: list[ApprovalPlan],
                     refused: list[str], *, dry_run: bool) -> None:
    def item(p: ApprovalPlan) -> dict[str, str]:
        return {"task_id": str(p.task_id), "title": p.title, "status": p.status.value,
                "gate": p.gate.name}

    data = {"dry_run": dry_run, "approved": [item(p) for p in passed],
            "already_approved": [item(p) for p in already], "refused": refused}
    rows = [(p.task_id, p.status.value, p.gate.name,
             "already past it" if p.already else ("would pass" if dry_run else "passed"),
             p.title) for p in [*passed, *already]]
    verb = "would be approved" if dry_run else "approved"
    verdict = (f"{len(passed)} task(s) {verb}, {len(already)} already past their gate, "
               f"{len(refused)} refused" + ("; nothing changed" if dry_run else ""))
    table = tables.render(APPROVAL_HEADERS, rows) + "\n" if rows else ""
    ctx.emit(data, table + verdict)


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


async def found_tasks(session: AsyncSession, refs: list[str],
                      refused: list[str]) -> list[uuid.UUID]:
    """The tasks ``refs`` name; a ref that names none (or several) goes to ``refused``."""
    ids = []
    for ref in refs:
        try:
            ids.append(await tasks.find_task(session, ref))
        except PipelineError as exc:
            refused.append(str(exc))
    return ids


async def _plan(ctx: Context, args: argparse.Namespace) -> tuple[list[RequeuePlan], list[str]]:
    """Every task's plan, or the reasons some cannot be requeued (nothing is changed)."""
    plans: list[RequeuePlan] = []
    refused: list[str] = []
    async with session_scope(ctx.sessions) as session:
        ids = await chosen_tasks(session, args, refused, lambda channel: (
            _ids_by_status(session, args.status, channel)))
        for task_id in ids:
            try:
                plans.append(await transitions.plan_requeue(session, task_id))
            except PipelineError as exc:
                refused.append(str(exc))
    return plans, refused


async def chosen_tasks(
    session: AsyncSession, args: argparse.Namespace, refused: list[str],
    select: Callable[[uuid.UUID | None], Awaitable[list[uuid.UUID]]],
) -> list[uuid.UUID]:
    """The tasks a bulk verb acts on, each once: the TASKs named (a name that finds none goes
    to ``refused``), or what ``select`` picks, within ``--channel`` when given."""
    if args.task_ids:
        return list(dict.fromkeys(await found_tasks(session, args.task_ids, refused)))
    channel = (await channels.get_channel(session, args.channel)).id if args.channel else None
    return list(dict.fromkeys(await select(channel)))


async def _ids_by_status(session: AsyncSession, statuses: list[str],
                         channel: uuid.UUID | None) -> list[uuid.UUID]:
    stmt = (sa.select(Task.id).where(Task.status.in_([TaskStatus(s) for s in statuses]))
            .order_by(Task.created_at, Task.id))
    if channel is not None:
        stmt = stmt.where(Task.channel_id == channel)
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


async def approve_plans(ctx: Context, plans: list[ApprovalPlan], *, note: str | None,
                        ) -> list[tuple[ApprovalPlan, ApprovalPlan | PipelineError]]:
    """Pass each planned task's gate, a short transaction per chunk (``Context.each``); a task
    moved meanwhile comes back as its error."""
    async def step(session: AsyncSession, plan: ApprovalPlan) -> ApprovalPlan:
        await transitions.approve(session, plan.task_id, actor=ctx.actor, gate=plan.gate.name,
                                  note=note)
        return plan

    return await ctx.each(plans, step, label="approve", chunk=CHUNK)
