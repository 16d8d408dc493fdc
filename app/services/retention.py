"""Retention: published tasks and old history removed in bounded batches. Never commits.

``task_events`` is an audit log that no runtime decision reads, so history past a horizon can
go without changing what any worker or claim does. Each batch is one short statement the
caller commits on its own: no long transaction holds locks while a large prune runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Task, TaskEvent
from app.lifecycle import TaskStatus

#: Rows a batch removes at most: a few milliseconds of work, never a long lock.
BATCH = 1000


@dataclass(frozen=True)
class PruneCounts:
    """What a prune removes (or would): published tasks with their events, and the events of
    other tasks older than the horizon."""

    tasks: int = 0
    task_events: int = 0
    older_events: int = 0

    def __add__(self, other: PruneCounts) -> PruneCounts:
        return PruneCounts(self.tasks + other.tasks, self.task_events + other.task_events,
                           self.older_events + other.older_events)

    @property
    def rows(self) -> int:
        return self.tasks + self.task_events + self.older_events


def _published_before(before: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(Task.status == TaskStatus.published,
                   sa.func.coalesce(Task.published_at, Task.updated_at) < before)


async def plan(session: AsyncSession, *, before: datetime, published_only: bool) -> PruneCounts:
    """Count what ``prune_tasks`` and ``prune_events`` would remove, changing nothing."""
    tasks = await session.scalar(sa.select(sa.func.count()).select_from(Task)
                                 .where(_published_before(before))) or 0
    events = await session.scalar(
        sa.select(sa.func.count()).select_from(TaskEvent).join(Task)
        .where(_published_before(before))) or 0
    older = 0
    if not published_only:
        older = await session.scalar(
            sa.select(sa.func.count()).select_from(TaskEvent).join(Task)
            .where(TaskEvent.created_at < before, sa.not_(_published_before(before)))) or 0
    return PruneCounts(tasks, events, older)


async def prune_tasks(session: AsyncSession, *, before: datetime,
                      limit: int = BATCH) -> PruneCounts:
    """Delete up to ``limit`` tasks published before ``before``, their events with them (the
    foreign key cascades); what went."""
    ids: list[uuid.UUID] = list(await session.scalars(
        sa.select(Task.id).where(_published_before(before)).order_by(Task.id).limit(limit)))
    if not ids:
        return PruneCounts()
    events = await session.scalar(sa.select(sa.func.count()).select_from(TaskEvent)
                                  .where(TaskEvent.task_id.in_(ids))) or 0
    await session.execute(sa.delete(Task).where(Task.id.in_(ids)))
    return PruneCounts(tasks=len(ids), task_events=events)


async def prune_events(session: AsyncSession, *, before: datetime,
                       limit: int = BATCH) -> PruneCounts:
    """Delete up to ``limit`` events recorded before ``before`` (oldest first); what went."""
    oldest = (sa.select(TaskEvent.id).where(TaskEvent.created_at < before)
              .order_by(TaskEvent.id).limit(limit).scalar_subquery())
    done = await session.execute(
        sa.delete(TaskEvent).where(TaskEvent.id.in_(oldest)).returning(TaskEvent.id))
    return PruneCounts(older_events=len(done.all()))
