"""Status changes through the service layer, and the operator actions built on them.

``transition`` checks the lifecycle table, then applies the move (``app.moves`` decides what it
writes) with a guarded ``UPDATE … WHERE status = :from`` and writes the ``task_events`` row in
the caller's transaction. Workers move their own tasks through ``app.execution.hotpath``, which
renders the same moves; the claim is the ``claim_task`` function. Functions here take the
session first and never commit; a raised error means nothing was written by the call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app import lifecycle, moves
from app.db import statements
from app.db.models import Task
from app.errors import InvalidTransition, TaskNotFound, miss_error
from app.lifecycle import ERROR, GATE_BY_NAME, GATE_BY_WAITING, Gate, Stage, TaskStatus
from app.moves import Move

utcnow = moves.utcnow


async def current_status(session: AsyncSession, task_id: uuid.UUID) -> TaskStatus:
    """The task's status as committed now; raises ``TaskNotFound``."""
    status = await session.scalar(sa.select(Task.status).where(Task.id == task_id))
    if status is None:
        raise TaskNotFound(task_id)
    return status


async def apply(
    session: AsyncSession, task_id: uuid.UUID, move: Move, *, actor: str,
    claim_token: uuid.UUID | None = None, now: datetime,
) -> Task:
    """Write ``move`` (guarded by its current status, and by ``claim_token`` when given) and its
    event; return the updated row. Raises ``StaleClaim``, ``InvalidTransition`` or
    ``TaskNotFound`` when the guard matches no row, and then nothing was written."""
    values = statements.core_values(move.changes, session.get_bind().dialect.name)
    stmt = statements.guarded_update(task_id, expected=move.current, values=values,
                                     claim_token=claim_token)
    task = (await session.execute(stmt)).scalar_one_or_none()
    if task is None:
        raise await _explain_miss(session, task_id, move.current, move.target, claim_token)
    await session.execute(statements.event(task_id, move, actor=actor, now=now))
    return task


async def transition(
    session: AsyncSession, task_id: uuid.UUID, target: TaskStatus, *, actor: str,
    note: str | None = None, expected: TaskStatus | None = None,
    claim_token: uuid.UUID | None = None, values: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Task:
    """Move a task to ``target`` and record it; return the updated row.

    ``expected`` pins the status the caller believes the task is in (workers always pass it,
    with their ``claim_token``); without it the current status is read first. Raises
    ``TaskNotFound``, ``InvalidTransition`` (illegal edge, or the task moved meanwhile) or
    ``StaleClaim`` (the token no longer matches), and then nothing was written.
    """
    now = now or utcnow()
    current = expected if expected is not None else await current_status(session, task_id)
    if not lifecycle.is_allowed(current, target):
        raise InvalidTransition(task_id, current, target)
    changes = moves.side_effects(current, target, note=note, now=now) | (values or {})
    return await apply(session, task_id, Move(current, target, changes, note), actor=actor,
                       claim_token=claim_token, now=now)


async def _explain_miss(
    session: AsyncSession, task_id: uuid.UUID, expected: TaskStatus, target: TaskStatus,
    claim_token: uuid.UUID | None,
) -> InvalidTransition:
    """Why a guarded update matched no row: gone, moved on, or fenced out."""
    row = (await session.execute(
        sa.select(Task.status, Task.claim_token).where(Task.id == task_id))).one_or_none()
    return miss_error(task_id, expected, target, claim_token,
                      None if row is None else (row[0], row[1]))


async def approve(
    session: AsyncSession, task_id: uuid.UUID, *, actor: str, gate: str | None = None,
    note: str | None = None,
) -> Task:
    """Pass the human gate the task waits at (``gate`` optionally names which one)."""
    status = await current_status(session, task_id)
    waiting_at = GATE_BY_WAITING.get(status)
    if waiting_at is None or (gate is not None and waiting_at.name != gate):
        wanted = GATE_BY_NAME[gate].waiting.value if gate in GATE_BY_NAME else "a review gate"
        raise InvalidTransition(task_id, status, waiting_at.approved if waiting_at else status,
                                reason=f"is {status.value}, not waiting at {wanted}")
    return await transition(session, task_id, waiting_at.approved, actor=actor,
                            note=note or f"{waiting_at.name} approved", expected=status)


@dataclass(frozen=True)
class ApprovalPlan:
    """What approving one task does: pass ``gate``, or nothing when it is already past it."""

    task_id: uuid.UUID
    title: str
    status: TaskStatus
    gate: Gate
    already: bool


async def plan_approval(session: AsyncSession, task_id: uuid.UUID, *,
                        gate: str | None = None) -> ApprovalPlan:
    """The approval of one task, without changing anything: the gate it waits at (``gate``
    optionally names which one), or, when ``gate`` is given and the task is past it, a plan
    that does nothing (scripts can re-run). Refuses a task short of the gate."""
    task = await session.get(Task, task_id, populate_existing=True)
    if task is None:
        raise TaskNotFound(task_id)
    waiting_at = GATE_BY_WAITING.get(task.status)
    if waiting_at is not None and (gate is None or waiting_at.name == gate):
        return ApprovalPlan(task.id, task.title, task.status, waiting_at, already=False)
    named = GATE_BY_NAME.get(gate or "")
    if named is not None and moves.past_gate(task.status, task.failed_stage, named):
        return ApprovalPlan(task.id, task.title, task.status, named, already=True)
    wanted = named.waiting.value if named else "a review gate"
    raise InvalidTransition(task_id, task.status,
                            waiting_at.approved if waiting_at else task.status,
                            reason=f"is {task.status.value}, not waiting at {wanted}")


async def waiting_at_gate(session: AsyncSession, gate: str,
                          channel_id: uuid.UUID | None = None) -> list[uuid.UUID]:
    """The tasks waiting at ``gate`` (of one channel), oldest first."""
    stmt = (sa.select(Task.id).where(Task.status == GATE_BY_NAME[gate].waiting)
            .order_by(Task.created_at, Task.id))
    if channel_id is not None:
        stmt = stmt.where(Task.channel_id == channel_id)
    return list(await session.scalars(stmt))


@dataclass(frozen=True)
class RequeuePlan:
    """What a requeue does to one task: the retry of ``stage`` from ``status``."""

    task_id: uuid.UUID
    title: str
    status: TaskStatus
    stage: Stage

    @property
    def resumes_at(self) -> TaskStatus:
        return self.stage.active


async def plan_requeue(session: AsyncSession, task_id: uuid.UUID) -> RequeuePlan:
    """The requeue of one task, without changing anything; refuses tasks not in error. The
    stage it resumes at is the row's (``moves.resume_stage``), as the claim will take it."""
    task = await session.get(Task, task_id, populate_existing=True)
    if task is None:
        raise TaskNotFound(task_id)
    if task.status not in ERROR:
        raise InvalidTransition(task_id, task.status, task.status,
                                reason=f"is {task.status.value}, not in an error state")
    return RequeuePlan(task.id, task.title, task.status,
                       moves.resume_stage(task.status, task.failed_stage))


async def requeue(
    session: AsyncSession, task_id: uuid.UUID, *, actor: str, reason: str | None = None,
    now: datetime | None = None,
) -> RequeuePlan:
    """Make an errored task's retry due now with a fresh attempt budget; record who and why.

    The task stays in its error state (a ``task_events`` row with ``from = to``) until a
    worker's claim takes the retry edge to the stage that failed.
    """
    now = now or utcnow()
    plan = await plan_requeue(session, task_id)
    note = f"requeue: retry {plan.stage.name} ({plan.resumes_at.value})"
    move = Move(plan.status, plan.status, moves.requeue(now),
                f"{note}; reason: {reason}" if reason else note)
    await apply(session, task_id, move, actor=actor, now=now)
    return plan

