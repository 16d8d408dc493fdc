"""Claims, leases and the reaper: how workers take, keep and lose tasks (PostgreSQL only).

A claim goes through the ``claim_task`` database function (see ``app.db.ddl.claim_task``);
everything a worker writes afterwards carries its claim token, so a worker whose lease was reaped
is fenced out. Functions take the session first and never commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Task
from app.lifecycle import ACTIVE, ERROR, RUNNABLE, STAGE_BY_ACTIVE, TaskStatus
from app.services import transitions


@dataclass(frozen=True)
class Claim:
    """A task a worker now holds: it may write it while ``token`` matches."""

    task_id: uuid.UUID
    from_status: TaskStatus
    status: TaskStatus
    token: uuid.UUID


CLAIM = sa.text("SELECT task_id, from_status, to_status, claim_token"
                " FROM claim_task(:worker, :lease_s, :now, :task_id)")


async def claim_next(
    session: AsyncSession, *, worker_id: str, lease_s: float, now: datetime,
    task_id: uuid.UUID | None = None,
) -> Claim | None:
    """Claim the next runnable task in fair order (or ``task_id`` only); None if nothing can
    be claimed now (no runnable task, or its channel is at capacity or held by a claimer)."""
    row = (await session.execute(CLAIM, {"worker": worker_id, "lease_s": lease_s, "now": now,
                                         "task_id": task_id})).one_or_none()
    if row is None:
        return None
    return Claim(row.task_id, TaskStatus(row.from_status), TaskStatus(row.to_status),
                 row.claim_token)


async def claim_batch(
    session: AsyncSession, *, worker_id: str, lease_s: float, now: datetime, limit: int,
) -> list[Claim]:
    """Claim up to ``limit`` tasks in one transaction, in the order single claims would take
    them; stops at the first miss. [] when nothing can be claimed now.

    Each claim is one ``claim_task`` call in the caller's transaction, so fairness and capacity
    are exactly those of a single claim: capacity is counted after the channel lock, and the
    transaction sees its own earlier claims. The i-th claim runs at ``now`` plus i
    microseconds so that each claim's channel turn is later than the last and the batch
    rotates through channels as successive single claims would (with one ``now`` every
    channel's turn would tie). The channel rows stay locked until the caller commits, which is
    what keeps a concurrent claimer out of those channels' capacity: commit promptly.
    """
    batch: list[Claim] = []
    for i in range(limit):
        claim = await claim_next(session, worker_id=worker_id, lease_s=lease_s,
                                 now=now + timedelta(microseconds=i))
        if claim is None:
            break
        batch.append(claim)
    return batch


async def renew_lease(
    session: AsyncSession, claim: Claim, *, lease_s: float, now: datetime,
) -> bool:
    """Extend the lease while the token still matches; False means the claim was lost."""
    stmt = (sa.update(Task)
            .where(Task.id == claim.task_id, Task.claim_token == claim.token,
                   Task.status == claim.status)
            .values(lease_expires_at=now + timedelta(seconds=lease_s))
            .returning(Task.id))
    return (await session.execute(stmt)).first() is not None


def retry_delay_s(attempts: int, *, max_attempts: int, backoff_s: float) -> float | None:
    """Exponential backoff between attempts of a stage; None once the budget is spent."""
    if attempts >= max_attempts:
        return None
    return float(backoff_s * 2 ** max(attempts - 1, 0))


async def fail_stage(
    session: AsyncSession, claim: Claim, *, actor: str, note: str, now: datetime,
    attempts: int, max_attempts: int, backoff_s: float, count_attempt: bool = True,
) -> Task:
    """Active state → its stage's error state; schedule the automatic retry while attempts
    remain (``count_attempt=False`` for interruptions that are not the stage's fault)."""
    stage = STAGE_BY_ACTIVE[claim.status]
    used = attempts if count_attempt else max(attempts - 1, 0)
    delay = retry_delay_s(used, max_attempts=max_attempts, backoff_s=backoff_s)
    values = {"attempts": used,
              "retry_at": now + timedelta(seconds=delay) if delay is not None else None}
    suffix = f"; retry in {delay:g}s" if delay is not None else "; no attempts left"
    return await transitions.transition(
        session, claim.task_id, stage.error, actor=actor, expected=claim.status,
        claim_token=claim.token, note=f"{note} (attempt {used}/{max_attempts}{suffix})",
        values=values, now=now)


@dataclass(frozen=True)
class Reaped:
    task_id: uuid.UUID
    status: TaskStatus
    to: TaskStatus


async def reap_expired(
    session: AsyncSession, *, now: datetime, actor: str, max_attempts: int, backoff_s: float,
    limit: int = 100,
) -> list[Reaped]:
    """Take back tasks whose lease expired: ``claimed`` → ``queued``; an active state → its
    error state with a note, retried automatically while attempts remain."""
    rows = (await session.execute(
        sa.select(Task.id, Task.status, Task.claim_token, Task.claimed_by, Task.attempts)
        .where(Task.status.in_(ACTIVE), Task.lease_expires_at < now)
        .order_by(Task.lease_expires_at).limit(limit)
        .with_for_update(skip_locked=True))).all()
    reaped = []
    for row in rows:
        claim = Claim(row.id, row.status, row.status, row.claim_token)
        note = f"lease expired (held by {row.claimed_by})"
        if row.status is TaskStatus.claimed:
            await transitions.transition(session, row.id, TaskStatus.queued, actor=actor,
                                         expected=row.status, claim_token=row.claim_token,
                                         note=note, now=now)
            reaped.append(Reaped(row.id, row.status, TaskStatus.queued))
            continue
        task = await fail_stage(session, claim, actor=actor, note=note, now=now,
                                attempts=row.attempts, max_attempts=max_attempts,
                                backoff_s=backoff_s)
        reaped.append(Reaped(row.id, row.status, task.status))
    return reaped


async def runnable_count(session: AsyncSession, *, now: datetime) -> int:
    """Tasks waiting for a claim now (queued, other runnable states, errors with a due retry)."""
    count = await session.scalar(
        sa.select(sa.func.count()).select_from(Task).where(sa.or_(
            Task.status.in_(RUNNABLE),
            sa.and_(Task.status.in_(ERROR), Task.retry_at <= now))))
    return int(count or 0)
