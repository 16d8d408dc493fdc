"""The operator's verbs: approve, requeue, hold and release, each with a dry run.

Tasks are named (``ids``: ids, id prefixes or Notion page ids, as the CLI finds them) or
selected (a gate or statuses, within a channel). A name that finds no task refuses the whole
request (404/422) before anything is planned. The plans and the writes are the service
layer's (``transitions.plan_approval``, ``plan_requeue``, ``holds``), in chunked transactions
as ``pipeline approve`` runs them; a dry run returns the plan and changes nothing.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from app import moves
from app.commands import holds as hold_command
from app.commands import operations
from app.commands.context import Context
from app.db import session_scope
from app.errors import CannotHold, PipelineError
from app.lifecycle import TaskStatus
from app.services import holds, tasks, transitions
from app.services.holds import HoldState
from app.services.transitions import ApprovalPlan, RequeuePlan
from app.web.api.context import Ctx
from app.web.errors import Refused
from app.web.models import (
    ApprovalItem,
    ApproveBody,
    ApproveResult,
    HoldBody,
    HoldResult,
    PlannedTask,
    ReleaseBody,
    RequeueBody,
    RequeueItem,
    RequeueResult,
)

router = APIRouter(tags=["operations"])
T = TypeVar("T")
R = TypeVar("R")
Select = Callable[[uuid.UUID | None], Awaitable[list[uuid.UUID]]]


async def _chosen(session: AsyncSession, refs: list[str], channel: str | None,
                  select: Select) -> list[uuid.UUID]:
    """``operations.chosen_tasks`` after every name was found (``find_task``'s typed error
    for the first that is not: the request is refused whole)."""
    found = [str(await tasks.find_task(session, ref)) for ref in refs]
    refused: list[str] = []
    chosen = await operations.chosen_tasks(
        session, argparse.Namespace(task_ids=found, channel=channel), refused, select)
    assert not refused      # every name was found above
    return chosen


def _split(outcomes: Sequence[tuple[T, R | PipelineError]]) -> tuple[list[R], list[str]]:
    """Results, and the lines of the items skipped because they moved meanwhile."""
    return ([r for _, r in outcomes if not isinstance(r, PipelineError)],
            [str(r) for _, r in outcomes if isinstance(r, PipelineError)])


@router.post("/approve", response_model=ApproveResult)
async def approve(ctx: Ctx, body: ApproveBody) -> ApproveResult:
    """Pass the gate each task waits at: the ``ids`` given, or every task at ``gate`` (of
    ``channel``). A task already past the named gate is reported, not refused; one short of
    it is refused and the others go on (one task named alone: 409)."""
    plans: list[ApprovalPlan] = []
    refused: list[PipelineError] = []
    async with session_scope(ctx.sessions) as session:
        for task_id in await _chosen(session, body.ids, body.channel, lambda channel: (
                transitions.waiting_at_gate(session, str(body.gate), channel))):
            try:
                plans.append(await transitions.plan_approval(session, task_id, gate=body.gate))
            except PipelineError as exc:
                refused.append(exc)
    single = len(body.ids) == 1
    if single and refused:
        raise refused[0]
    passed = [p for p in plans if not p.already]
    skipped: list[str] = []
    if not body.dry_run and passed:
        outcomes = await operations.approve_plans(ctx, passed, note=body.note)
        if single and outcomes and isinstance(outcomes[0][1], PipelineError):
            raise outcomes[0][1]
        passed, skipped = _split(outcomes)
        await ctx.wake(len(passed))
    return ApproveResult(dry_run=body.dry_run, approved=[_approval(p) for p in passed],
                         already_approved=[_approval(p) for p in plans if p.already],
                         refused=[str(e) for e in refused] + [f"skipped: {m}" for m in skipped])


def _approval(plan: ApprovalPlan) -> ApprovalItem:
    return ApprovalItem(task_id=plan.task_id, title=plan.title, status=plan.status,
                        gate=plan.gate.name)


@router.post("/requeue", response_model=RequeueResult)
async def requeue(ctx: Ctx, body: RequeueBody) -> RequeueResult:
    """Retry errored tasks at the stage that failed, with a fresh attempt budget: the ``ids``
    given, or every task in ``statuses`` (of ``channel``). Any task not in error refuses the
    request (409) and nothing is requeued; a task moved meanwhile is skipped."""
    plans: list[RequeuePlan] = []
    refused: list[PipelineError] = []
    async with session_scope(ctx.sessions) as session:
        async def in_statuses(_: uuid.UUID | None) -> list[uuid.UUID]:
            return [t.id for t in await tasks.list_tasks(session, statuses=body.statuses,
                                                         channel_id=body.channel)]

        for task_id in await _chosen(session, body.ids, body.channel, in_statuses):
            try:
                plans.append(await transitions.plan_requeue(session, task_id))
            except PipelineError as exc:
                refused.append(exc)
    if refused:
        if len(body.ids) == 1:
            raise refused[0]
        raise Refused(f"{len(refused)} task(s) refused, nothing requeued",
                      [str(e) for e in refused])
    skipped: list[str] = []
    if not body.dry_run and plans:
        async def step(session: AsyncSession, plan: RequeuePlan) -> RequeuePlan:
            return await transitions.requeue(session, plan.task_id, actor=ctx.actor,
                                             reason=body.reason)

        plans, skipped = _split(await ctx.each(plans, step, label="requeue",
                                               chunk=operations.CHUNK))
        await ctx.wake(len(plans))
    return RequeueResult(dry_run=body.dry_run, count=len(plans), skipped=skipped, tasks=[
        RequeueItem(task_id=p.task_id, title=p.title, status=p.status, stage=p.stage.name,
                    resumes_at=p.resumes_at) for p in plans])


@router.post("/hold", response_model=HoldResult)
async def hold(ctx: Ctx, body: HoldBody) -> HoldResult:
    """Stop tasks from being claimed (a running stage is handed back at its next heartbeat):
    the ``ids`` given, or every task in ``statuses`` (of ``channel``) not on hold. A finished
    task refuses the request (409) and nothing is held."""
    return await _act(ctx, body, body.statuses, holding=True)


@router.post("/release", response_model=HoldResult)
async def release(ctx: Ctx, body: ReleaseBody) -> HoldResult:
    """Make held tasks claimable again where they wait, and wake the workers."""
    return await _act(ctx, body, body.statuses, holding=False)


async def _act(ctx: Context, body: HoldBody | ReleaseBody, statuses: list[TaskStatus], *,
               holding: bool) -> HoldResult:
    async with session_scope(ctx.sessions) as session:
        ids = await _chosen(session, body.ids, body.channel, lambda channel: holds.select(
            session, statuses, channel=channel, on_hold=not holding))
        chosen = await holds.states(session, ids)
    refused = [CannotHold(s.task_id, s.status) for s in chosen
               if holding and not moves.can_hold(s.status)]
    if refused:
        if len(body.ids) == 1:
            raise refused[0]
        raise Refused(f"{len(refused)} task(s) refused; nothing was held",
                      [str(e) for e in refused])
    to_change = [s for s in chosen if s.on_hold is not holding]
    unchanged = [s for s in chosen if s.on_hold is holding]
    if not body.dry_run and to_change:
        done = set(await _write(ctx, [s.task_id for s in to_change], holding=holding,
                                reason=body.reason))
        if not holding:
            await ctx.wake(len(done))
        # A task another operator changed meanwhile is not reported as changed by this call.
        unchanged += [s for s in to_change if s.task_id not in done]
        to_change = [s for s in to_change if s.task_id in done]
    return HoldResult(dry_run=body.dry_run, changed=[_planned(s) for s in to_change],
                      unchanged=[_planned(s) for s in unchanged], reason=body.reason)


async def _write(ctx: Context, task_ids: list[uuid.UUID], *, holding: bool,
                 reason: str | None) -> list[uuid.UUID]:
    """``holds.hold`` / ``release`` in transactions of the CLI's chunk size."""
    write = holds.hold if holding else holds.release
    changed: list[uuid.UUID] = []
    for start in range(0, len(task_ids), hold_command.CHUNK):
        async with session_scope(ctx.sessions) as session:
            changed += await write(session, task_ids[start:start + hold_command.CHUNK],
                                   actor=ctx.actor, reason=reason, now=moves.utcnow())
    return changed


def _planned(state: HoldState) -> PlannedTask:
    return PlannedTask(task_id=state.task_id, title=state.title, status=state.status)
