"""Claims, leases, stage outcomes and the reaper through the service layer (PostgreSQL for
claims; the rest also on SQLite).

A claim goes through the ``claim_task`` database function (see ``app.db.ddl.claim_task``);
everything written afterwards carries the claim token, so a worker whose lease was reaped is
fenced out. What each outcome writes is ``app.moves``, the same rules the worker's hot path
(``app.execution.hotpath``) renders. Functions take the session first and never commit.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app import moves
from app.db.models import Channel, Task
from app.lifecycle import ACTIVE, AUTOMATIC, ERROR, GATES, STAGE_BY_ACTIVE, TaskStatus
from app.moves import Claim, Renewal
from app.services import quotas, transitions

__all__ = ["Claim", "Claimable", "Reaped", "advance_stranded", "claim_batch", "claim_next",
           "claimable",
           "fail_stage", "finish_stage", "hand_back", "reap_expired", "renew_lease",
           "runnable_count"]

CLAIM = sa.text("SELECT task_id, from_status, to_status, claim_token, attempt, run"
                " FROM claim_task(:worker, :lease_s, :now, :task_id, :start)")


async def claim_next(
    session: AsyncSession, *, worker_id: str, lease_s: float, now: datetime,
    task_id: uuid.UUID | None = None, start: bool = False,
) -> Claim | None:
    """Claim the next runnable task in fair order (or ``task_id`` only); None if nothing can
    be claimed now (no runnable task, or its channel is at capacity or held by a claimer).
    With ``start`` a queued task is claimed straight into its first stage."""
    row = (await session.execute(CLAIM, {"worker": worker_id, "lease_s": lease_s, "now": now,
                                         "task_id": task_id, "start": start})).one_or_none()
    if row is None:
        return None
    return Claim(row.task_id, TaskStatus(row.from_status), TaskStatus(row.to_status),
                 row.claim_token, row.attempt, row.run)


async def claim_batch(
    session: AsyncSession, *, worker_id: str, lease_s: float, now: datetime, limit: int,
) -> list[Claim]:
    """Claim up to ``limit`` tasks in one transaction, in the order single claims would take
    them; stops at the first miss. [] when nothing can be claimed now.

    Each claim is one ``claim_task`` call in the caller's transaction, so fairness and capacity
    are exactly those of a single claim: capacity is counted after the channel lock, the
    transaction sees its own earlier claims, and each pick-up takes its channel's next turn.
    The channel rows stay locked until the caller commits, which is what keeps a concurrent
    claimer out of those channels' capacity: commit promptly.
    """
    batch: list[Claim] = []
    for _ in range(limit):
        claim = await claim_next(session, worker_id=worker_id, lease_s=lease_s, now=now)
        if claim is None:
            break
        batch.append(claim)
    return batch


async def renew_lease(
    session: AsyncSession, claim: Claim, *, lease_s: float, now: datetime,
) -> Renewal:
    """Extend the lease while the token still matches: the claim kept, lost, or kept on a task
    an operator has put on hold (its stage is to be handed back)."""
    stmt = (sa.update(Task)
            .where(Task.id == claim.task_id, Task.claim_token == claim.token,
                   Task.status == claim.status)
            .values(lease_expires_at=now + timedelta(seconds=lease_s))
            .returning(Task.hold_since.is_not(None)))
    return Renewal.found((await session.execute(stmt)).scalar_one_or_none())


async def finish_stage(session: AsyncSession, claim: Claim, *, artefacts: dict[str, Any],
                       actor: str, now: datetime) -> Task:
    """The stage succeeded: its done state, its output stored, the claim ended."""
    return await transitions.apply(session, claim.task_id,
                                   moves.finish(claim, artefacts=artefacts, now=now),
                                   actor=actor, claim_token=claim.token, now=now)


async def fail_stage(
    session: AsyncSession, claim: Claim, *, actor: str, message: str, now: datetime,
    max_attempts: int, backoff_s: float, due_now: bool = False,
) -> Task:
    """Active state → its stage's error state, the attempt spent; the automatic retry is
    scheduled while attempts remain (``due_now``: at once)."""
    move = moves.fail(claim, message=message, max_attempts=max_attempts, backoff_s=backoff_s,
                      now=now, due_now=due_now)
    return await transitions.apply(session, claim.task_id, move, actor=actor,
                                   claim_token=claim.token, now=now)


async def hand_back(session: AsyncSession, claim: Claim, *, actor: str, reason: str,
                    now: datetime) -> Task:
    """Give an unfinished stage back without spending its attempt (``moves.hand_back``)."""
    return await transitions.apply(session, claim.task_id,
                                   moves.hand_back(claim, reason=reason, now=now),
                                   actor=actor, claim_token=claim.token, now=now)


@dataclass(frozen=True)
class Reaped:
    """A task taken back from a worker whose lease expired: from ``status`` to ``to``."""

    task_id: uuid.UUID
    status: TaskStatus
    to: TaskStatus


async def reap_expired(
    session: AsyncSession, *, now: datetime, actor: str, max_attempts: int, backoff_s: float,
    limit: int = 100,
) -> list[Reaped]:
    """Take back tasks whose lease expired: ``claimed`` → ``queued``; an active state → its
    error state. The attempt counts (a stage that kills its worker must not loop forever), and
    while attempts remain the retry is due at once: the worker died, not the stage."""
    rows = (await session.execute(
        sa.select(Task.id, Task.status, Task.claim_token, Task.claimed_by, Task.attempts,
                  Task.stage_runs)
        .where(Task.status.in_(ACTIVE), Task.lease_expires_at < now)
        .order_by(Task.lease_expires_at).limit(limit)
        .with_for_update(skip_locked=True))).all()
    reaped = []
    for row in rows:
        claim = Claim(row.id, row.status, row.status, row.claim_token, row.attempts,
                      row.stage_runs)
        note = f"lease expired (held by {row.claimed_by})"
        if row.status is TaskStatus.claimed:
            await transitions.transition(session, row.id, TaskStatus.queued, actor=actor,
                                         expected=row.status, claim_token=row.claim_token,
                                         note=note, now=now)
            reaped.append(Reaped(row.id, row.status, TaskStatus.queued))
            continue
        task = await fail_stage(session, claim, actor=actor, message=note, now=now,
                                max_attempts=max_attempts, backoff_s=backoff_s, due_now=True)
        reaped.append(Reaped(row.id, row.status, task.status))
    return reaped


async def advance_stranded(session: AsyncSession, *, now: datetime, auto_approved: frozenset[str],
                           stranded_s: float, actor: str, limit: int = 100) -> int:
    """Move on tasks left at an automatic step or an auto-approved gate for ``stranded_s``:
    their runner stopped between recording a stage and moving on (killed, or the database went
    away). The steps are the runner's (``moves.automatic_step``). Returns how many tasks moved."""
    waiting = set(AUTOMATIC) | {gate.waiting for gate in GATES if gate.name in auto_approved}
    rows = (await session.execute(
        sa.select(Task.id, Task.status)
        .where(Task.status.in_(waiting), Task.updated_at < now - timedelta(seconds=stranded_s))
        .order_by(Task.updated_at).limit(limit)
        .with_for_update(skip_locked=True))).all()
    for row in rows:
        status = row.status
        while (step := moves.automatic_step(status, auto_approved)):
            await transitions.transition(session, row.id, step.target, expected=status,
                                         actor=moves.AUTO_APPROVER if step.approval else actor,
                                         note=step.note, now=now)
            status = step.target
    return len(rows)


#: Statuses a claim takes without further condition (errors need a due retry; a stage must
#: have been handed back). ``assembly_ready`` is not among them: a worker moves it on itself.
WAITING = frozenset({TaskStatus.queued, *moves.STARTS})
#: Why a waiting task cannot be claimed now.
BLOCKED_INACTIVE = "inactive_channel"
BLOCKED_CAP = "channel_at_cap"
BLOCKED_HOLD = "on_hold"
BLOCKED_QUOTA = "quota"
BLOCKED_RATE_LIMITED = "rate_limited"
#: The reasons in the order they are shown.
BLOCKED_REASONS = (BLOCKED_HOLD, BLOCKED_INACTIVE, BLOCKED_QUOTA, BLOCKED_RATE_LIMITED,
                   BLOCKED_CAP)


@dataclass(frozen=True)
class Claimable:
    """What workers could claim now, and what waits but cannot be claimed, by reason."""

    runnable: int
    blocked: Counter[str] = field(default_factory=Counter)
    #: Since when the longest-waiting task of a channel with a free slot has been claimable
    #: (None: nothing is runnable). In a channel with fewer free slots than waiting tasks the
    #: oldest waiting one stands for the channel.
    oldest_since: datetime | None = None
    #: When the first task waiting for a quota (or a provider's pause) can go (None: none
    #: waits).
    next_slot: datetime | None = None


def _flag(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.sum(sa.case((condition, 1), else_=0))


def stage_of(status: TaskStatus, failed_stage: str | None) -> str:
    """The stage a claim of a task in ``status`` starts (the rule the claim renders)."""
    return STAGE_BY_ACTIVE[moves.claim_target(status, failed_stage, start=True)].name


def quota_wait(spent: quotas.Spent, task: Task) -> datetime | None:
    """When the task's next stage can start, if a spent quota (or a provider's pause) holds it
    back now; None otherwise, or when the task does not wait for a claim."""
    waiting = task.status in WAITING or task.status in ERROR or (
        task.status in ACTIVE and task.claimed_by is None)
    if not waiting:
        return None
    return spent.next_slot(task.channel_id, stage_of(task.status, task.failed_stage))


async def quota_slot(session: AsyncSession, task: Task) -> datetime | None:
    """When the task's next stage can start, if a quota holds it back now (``quota_wait``)."""
    return quota_wait(await quotas.spent(session), task)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


async def claimable(session: AsyncSession, *, now: datetime) -> Claimable:
    """Tasks a claim could take now: waiting ones in active channels with a free slot and their
    stage's quota not spent, and handed-back stages (which keep their slot) whose time has come.
    Tasks on hold, of inactive channels, waiting for a quota or a provider's pause, and those
    beyond their channel's cap are blocked, not runnable: they wake nobody. A stage handed
    back for a hold keeps its slot too."""
    not_held = Task.hold_since.is_(None)
    waiting = sa.or_(Task.status.in_(WAITING),
                     sa.and_(Task.status.in_(ERROR), Task.retry_at <= now))
    unheld = sa.and_(Task.status.in_(ACTIVE), Task.claim_token.is_(None))
    due = sa.or_(Task.retry_at.is_(None), Task.retry_at <= now)
    later = sa.and_(unheld, Task.retry_at > now)          # handed back to wait (rate limited)
    # Claimable since the move that made it so: a due retry since it fell due.
    since = sa.case((Task.status.in_(ERROR), Task.retry_at), else_=Task.updated_at)
    rows = (await session.execute(
        sa.select(Channel.id, Channel.is_active, Channel.max_concurrent, Task.status,
                  Task.failed_stage,
                  _flag(Task.status.in_(ACTIVE)).label("slots"),
                  _flag(sa.and_(unheld, due, not_held)).label("unheld"),
                  _flag(sa.and_(later, not_held)).label("later"),
                  sa.func.min(sa.case((sa.and_(later, not_held), Task.retry_at)))
                  .label("later_at"),
                  _flag(sa.and_(waiting, not_held)).label("waiting"),
                  _flag(sa.and_(sa.or_(waiting, unheld), ~not_held)).label("on_hold"),
                  sa.func.min(sa.case((sa.and_(sa.or_(waiting, unheld), not_held), since)))
                  .label("since"))
        .join(Channel, Channel.id == Task.channel_id)
        .where(Task.status.in_(WAITING | ERROR | ACTIVE))
        .group_by(Channel.id, Channel.is_active, Channel.max_concurrent, Task.status,
                  Task.failed_stage)
        .order_by(Channel.id))).all()
    spent = await quotas.spent(session)
    tally = _Tally()
    for _, group in itertools.groupby(rows, key=lambda row: row.id):
        tally.channel(list(group), spent)
    return Claimable(tally.runnable,
                     Counter({reason: tally.blocked[reason] for reason in BLOCKED_REASONS
                              if tally.blocked[reason]}), tally.oldest, tally.next_slot)


@dataclass
class _Tally:
    runnable: int = 0
    blocked: Counter[str] = field(default_factory=Counter)
    oldest: datetime | None = None
    next_slot: datetime | None = None

    def channel(self, rows: list[Any], spent: quotas.Spent) -> None:
        """Add one channel's groups (one row per status and failed stage)."""
        head = rows[0]
        self.blocked[BLOCKED_HOLD] += sum(row.on_hold for row in rows)
        self.blocked[BLOCKED_RATE_LIMITED] += sum(row.later for row in rows)
        for row in rows:
            self.next_slot = _earliest(self.next_slot, row.later_at)
        if not head.is_active:
            self.blocked[BLOCKED_INACTIVE] += sum(row.waiting + row.unheld for row in rows)
            return
        slots = sum(row.slots for row in rows)
        free = (math.inf if head.max_concurrent is None
                else max(head.max_concurrent - slots, 0))
        waiting = unheld = 0
        since: datetime | None = None
        for row in rows:
            if not row.waiting and not row.unheld:
                continue
            slot = spent.next_slot(head.id, stage_of(row.status, row.failed_stage))
            if slot is not None:
                self.blocked[BLOCKED_QUOTA] += row.waiting + row.unheld
                self.next_slot = _earliest(self.next_slot, slot)
                continue
            waiting += row.waiting
            unheld += row.unheld
            since = _earliest(since, row.since)
        taken = int(min(waiting, free))
        self.runnable += unheld + taken
        self.blocked[BLOCKED_CAP] += waiting - taken
        if (unheld or taken) and since is not None:
            self.oldest = _earliest(self.oldest, since)


async def runnable_count(session: AsyncSession, *, now: datetime) -> int:
    """Tasks a claim could take now (see ``claimable``)."""
    return (await claimable(session, now=now)).runnable
