"""Holding tasks and releasing them: an operator's stop, a fact on the task row.

A held task keeps its status (the 26 states stay as they are) and is never claimed; a stage
running when the hold lands is handed back at the runner's next heartbeat, with no attempt
spent and no error state. Releasing makes it claimable again wherever it waits. Both are
audited (``task_events``: actor, reason, ``from_status = to_status``). What a hold writes is
``app.moves.hold`` / ``release``; functions take the session first and never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app import moves
from app.db import statements
from app.db.models import Task
from app.errors import CannotHold, TaskNotFound
from app.lifecycle import TaskStatus

HOLD = "hold"
RELEASE = "release"


@dataclass(frozen=True)
class HoldState:
    """A task as a hold or a release sees it."""

    task_id: uuid.UUID
    title: str
    status: TaskStatus
    hold_since: datetime | None
    hold_by: str | None
    hold_reason: str | None

    @property
    def on_hold(self) -> bool:
        return self.hold_since is not None


async def states(session: AsyncSession, task_ids: Sequence[uuid.UUID]) -> list[HoldState]:
    """The hold state of each task, in the order given; raises ``TaskNotFound``."""
    rows = {row.id: row for row in await session.execute(
        sa.select(Task.id, Task.title, Task.status, Task.hold_since, Task.hold_by,
                  Task.hold_reason).where(Task.id.in_(task_ids)))}
    missing = [task_id for task_id in task_ids if task_id not in rows]
    if missing:
        raise TaskNotFound(missing[0])
    return [HoldState(r.id, r.title, r.status, r.hold_since, r.hold_by, r.hold_reason)
            for r in (rows[task_id] for task_id in task_ids)]


async def select(session: AsyncSession, statuses: Sequence[TaskStatus], *,
                 channel: uuid.UUID | None = None, on_hold: bool) -> list[uuid.UUID]:
    """Tasks in ``statuses`` (of ``channel``) that are held (``on_hold``) or not, oldest
    first: what ``hold --status`` / ``release --status`` act on."""
    stmt = (sa.select(Task.id).where(Task.status.in_(statuses),
                                     Task.hold_since.is_not(None) if on_hold
                                     else Task.hold_since.is_(None))
            .order_by(Task.created_at, Task.id))
    if channel is not None:
        stmt = stmt.where(Task.channel_id == channel)
    return list(await session.scalars(stmt))


async def hold(session: AsyncSession, task_ids: Sequence[uuid.UUID], *, actor: str,
               reason: str | None, now: datetime) -> list[uuid.UUID]:
    """Put the tasks on hold; returns those this call held (one already on hold is left as it
    is). Raises ``CannotHold`` for a finished task, and then nothing was written."""
    for state in await states(session, task_ids):
        if not moves.can_hold(state.status):
            raise CannotHold(state.task_id, state.status)
    return await _write(session, task_ids, moves.hold(actor=actor, reason=reason, now=now),
                        on_hold=False, note=moves.hold_note(HOLD, reason), actor=actor, now=now)


async def release(session: AsyncSession, task_ids: Sequence[uuid.UUID], *, actor: str,
                  reason: str | None, now: datetime) -> list[uuid.UUID]:
    """Lift the tasks' holds; returns those this call released (one not on hold is left as
    it is). The caller wakes the workers after the commit."""
    await states(session, task_ids)          # every id names a task
    return await _write(session, task_ids, moves.release(now), on_hold=True,
                        note=moves.hold_note(RELEASE, reason), actor=actor, now=now)


async def _write(session: AsyncSession, task_ids: Sequence[uuid.UUID], changes: moves.Changes,
                 *, on_hold: bool, note: str, actor: str, now: datetime) -> list[uuid.UUID]:
    if not task_ids:
        return []
    written = (await session.execute(
        statements.set_hold(list(task_ids), changes, on_hold=on_hold))).all()
    if written:
        insert, rows = statements.notes([(r[0], r[1]) for r in written], note=note, actor=actor,
                                        now=now)
        await session.execute(insert, rows)
    order = {task_id: i for i, task_id in enumerate(task_ids)}
    return sorted((row[0] for row in written), key=order.__getitem__)
