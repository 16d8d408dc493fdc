"""The one entry point for status changes, and the operator actions built on it.

``transition`` checks the lifecycle table, then runs a guarded ``UPDATE … WHERE status = :from``
and writes the ``task_events`` row in the caller's transaction. Functions here take the session
first and never commit; a raised error means nothing was written by the call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app import lifecycle
from app.db import statements
from app.db.models import Task, TaskEvent
from app.errors import InvalidTransition, StaleClaim, TaskNotFound
from app.lifecycle import ACTIVE, ERROR, GATE_BY_NAME, GATE_BY_WAITING, Stage, TaskStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


async def current_status(session: AsyncSession, task_id: uuid.UUID) -> TaskStatus:
    """The task's status as committed now; raises ``TaskNotFound``."""
    status = await session.scalar(sa.select(Task.status).where(Task.id == task_id))
    if status is None:
        raise TaskNotFound(task_id)
    return status


def side_effects(current: TaskStatus, target: TaskStatus, *, note: str | None,
                 now: datetime) -> dict[str, Any]:
    """Columns that change with the move itself (pure: decided from the two statuses)."""
    values: dict[str, Any] = {"status": target, "updated_at": now}
    if current in ACTIVE and target not in ACTIVE:
        # The claim ends with the active state: gates, errors and waits hold no lease.
        values |= {"claimed_by": None, "claimed_at": None, "claim_token": None,
                   "lease_expires_at": None}
    if target in ERROR:
        line = f"{now:%Y-%m-%dT%H:%M:%SZ} {target.value} (from {current.value}): {note or '-'}"
        values["error_log"] = statements.append_error_line(line)
    if target is TaskStatus.published:
        values["published_at"] = now
    return values


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
    changes = side_effects(current, target, note=note, now=now) | (values or {})
    stmt = statements.guarded_update(task_id, expected=current, values=changes,
                                  claim_token=claim_token)
    task = (await session.execute(stmt)).scalar_one_or_none()
    if task is None:
        raise await _explain_miss(session, task_id, current, target, claim_token)
    await session.execute(sa.insert(TaskEvent).values(   # Core: no unit-of-work flush
        task_id=task_id, from_status=current, to_status=target, actor=actor, note=note,
        created_at=now))
    return task


async def _explain_miss(
    session: AsyncSession, task_id: uuid.UUID, expected: TaskStatus, target: TaskStatus,
    claim_token: uuid.UUID | None,
) -> InvalidTransition:
    """Why a guarded update matched no row: gone, moved on, or fenced out."""
    row = (await session.execute(
        sa.select(Task.status, Task.claim_token).where(Task.id == task_id))).one_or_none()
    return miss_error(task_id, expected, target, claim_token,
                      None if row is None else (row[0], row[1]))


def miss_error(
    task_id: uuid.UUID, expected: TaskStatus, target: TaskStatus,
    claim_token: uuid.UUID | None, found: tuple[TaskStatus, uuid.UUID | None] | None,
) -> InvalidTransition:
    """The error for a guarded write that matched no row, given the task's (status, token) as
    read afterwards; raises ``TaskNotFound`` when there is no such task."""
    if found is None:
        raise TaskNotFound(task_id)
    status, token = found
    if claim_token is not None and (status is not expected or token != claim_token):
        held = "lease lost" if status is expected else f"the task is {status.value} now"
        return StaleClaim(task_id, status, target,
                          reason=f"claim no longer held ({held}); write refused")
    return InvalidTransition(task_id, status, target,
                             reason=f"expected {expected.value}, found {status.value}")


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
class RequeuePlan:
    """What a requeue does to one task: the retry of ``stage`` from ``status``."""

    task_id: uuid.UUID
    title: str
    status: TaskStatus
    stage: Stage

    @property
    def resumes_at(self) -> TaskStatus:
        return self.stage.active


async def failed_stage(session: AsyncSession, task: Task) -> Stage:
    """The stage whose failure put ``task`` in its error state, read from its history."""
    from_status = await session.scalar(
        sa.select(TaskEvent.from_status)
        .where(TaskEvent.task_id == task.id, TaskEvent.to_status == task.status,
               TaskEvent.from_status != task.status)
        .order_by(TaskEvent.id.desc()).limit(1))
    stage = lifecycle.STAGE_BY_ACTIVE.get(from_status) if from_status else None
    if stage is None or stage.error is not task.status:
        # No usable history (e.g. set by raw SQL): retry the earliest stage of this error kind.
        stage = next(st for st in lifecycle.STAGES if st.error is task.status)
    return stage


async def plan_requeue(session: AsyncSession, task_id: uuid.UUID) -> RequeuePlan:
    """The requeue of one task, without changing anything; refuses tasks not in error."""
    task = await session.get(Task, task_id)
    if task is None:
        raise TaskNotFound(task_id)
    if task.status not in ERROR:
        raise InvalidTransition(task_id, task.status, task.status,
                                reason=f"is {task.status.value}, not in an error state")
    return RequeuePlan(task.id, task.title, task.status, await failed_stage(session, task))


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
    stmt = statements.guarded_update(task_id, expected=plan.status,
                                  values={"retry_at": now, "attempts": 0, "updated_at": now})
    if (await session.execute(stmt)).scalar_one_or_none() is None:
        raise await _explain_miss(session, task_id, plan.status, plan.status, None)
    note = f"requeue: retry {plan.stage.name} ({plan.resumes_at.value})"
    session.add(TaskEvent(task_id=task_id, from_status=plan.status, to_status=plan.status,
                          actor=actor, note=f"{note}; reason: {reason}" if reason else note,
                          created_at=now))
    return plan
