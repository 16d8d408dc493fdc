"""Queue statistics for operators: counts by status and channel, what can be claimed now and
what is blocked (by reason), queue depth, oldest queued age, and the errors still retrying
apart from those out of attempts (which need a person)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Channel, Task
from app.lifecycle import ERROR, TaskStatus
from app.services import claims


@dataclass(frozen=True)
class Stats:
    #: ``(channel_id, status) → count`` for every pair that has tasks.
    counts: dict[tuple[str, TaskStatus], int]
    #: Tasks a worker could claim now (``claims.claimable``).
    runnable: int
    #: Tasks waiting that cannot be claimed now, by reason (inactive channel, channel at cap).
    blocked: Counter[str]
    queued: int
    oldest_queued_at: datetime | None
    #: Errored tasks with a retry scheduled, and the earliest of those retries.
    retrying: int = 0
    next_retry_at: datetime | None = None
    #: Errored tasks out of attempts: they wait for a person (``pipeline requeue``).
    out_of_attempts: int = 0
    #: When the first task waiting for a quota or a provider's pause can go.
    next_slot_at: datetime | None = None

    def by_status(self) -> dict[TaskStatus, int]:
        totals: dict[TaskStatus, int] = {}
        for (_, status), count in self.counts.items():
            totals[status] = totals.get(status, 0) + count
        return totals

    def channels(self) -> list[str]:
        return sorted({channel for channel, _ in self.counts})


async def counts(session: AsyncSession) -> dict[tuple[str, TaskStatus], int]:
    """``(YouTube channel id, status) → tasks`` for every pair that has tasks. Grouped on the
    (channel_id, status) index alone (an index-only scan), then named: joining first would
    hash every task row (2.5x the time at 100k tasks)."""
    groups = (sa.select(Task.channel_id, Task.status, sa.func.count().label("n"))
              .group_by(Task.channel_id, Task.status).subquery())
    rows = (await session.execute(
        sa.select(Channel.channel_id, groups.c.status, groups.c.n)
        .join(Channel, Channel.id == groups.c.channel_id))).all()
    return {(row[0], TaskStatus(row[1])): int(row[2]) for row in rows}


async def collect(session: AsyncSession, *, now: datetime) -> Stats:
    by_pair = await counts(session)
    queued = (await session.execute(
        sa.select(sa.func.count(), sa.func.min(Task.created_at))
        .where(Task.status == TaskStatus.queued))).one()
    errors = (await session.execute(
        sa.select(sa.func.count(Task.retry_at), sa.func.min(Task.retry_at),
                  sa.func.count().filter(Task.retry_at.is_(None)))
        .where(Task.status.in_(ERROR)))).one()
    found = await claims.claimable(session, now=now)
    return Stats(counts=by_pair,
                 runnable=found.runnable, blocked=found.blocked,
                 queued=int(queued[0]), oldest_queued_at=_utc(queued[1]),
                 retrying=int(errors[0]), next_retry_at=_utc(errors[1]),
                 out_of_attempts=int(errors[2]), next_slot_at=found.next_slot)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite keeps UTC without an offset."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value
