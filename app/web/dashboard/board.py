"""What the board shows: per stage, tasks waiting, running and past it, per channel with its
cap and holds and in total (the figures of the terminal's live view, ``watch.Board``); and what
needs a person's attention. Every fact is read from the ``tasks`` and ``channels`` rows. The
per-channel counts come from the ``(channel_id, status)`` index alone and the totals are summed
from them, so a board costs one pass over that index, ``claims.claimable`` and a few short
lists, read in one snapshot: about a third of reading ``watch.collect`` and the channels
apart at 100k tasks."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.ext.asyncio import AsyncSession

from app import moves
from app.commands import watch
from app.db.models import Channel, Task
from app.lifecycle import ACTIVE, ERROR, GATE_STATES, GATES, STAGES, TERMINAL, TaskStatus
from app.services import claims, stats

#: Rows shown in each list of "needs attention".
LIST_LIMIT = 8
#: A lease with less than this share of its length left has missed a heartbeat (a heartbeat
#: renews it every third of its length).
LEASE_WARNING_SHARE = 1 / 3

Counts = dict[tuple[TaskStatus, str | None], int]
#: Where a hold can be: every status but the finished ones.
HOLDABLE = frozenset(TaskStatus) - TERMINAL


@dataclass(frozen=True)
class Cell:
    waiting: int
    running: int
    past: int

    def as_tuple(self) -> tuple[int, int, int]:
        return self.waiting, self.running, self.past

    def __iter__(self) -> Iterator[int]:
        return iter(self.as_tuple())


@dataclass(frozen=True)
class ChannelRow:
    channel_id: str
    name: str
    active: bool
    cap: int | None
    #: Tasks in active states now (against the cap), and tasks on hold.
    busy: int
    held: int
    cells: list[Cell]
    counts: Counts


@dataclass(frozen=True)
class Flagged:
    """A task in a list of "needs attention", with the time its fact is measured from."""

    task_id: uuid.UUID
    title: str
    status: TaskStatus
    channel_id: str
    since: datetime | None
    detail: str = ""


@dataclass(frozen=True)
class Attention:
    out_of_attempts: list[Flagged]
    at_gates: list[Flagged]
    leases_expiring: list[Flagged]
    oldest_runnable: Flagged | None
    blocked: dict[str, int]
    out_of_attempts_total: int


@dataclass(frozen=True)
class BoardView:
    summary: watch.Board
    channels: list[ChannelRow]
    attention: Attention


async def one_snapshot(session: AsyncSession) -> None:
    """Make the session's transaction read one snapshot (PostgreSQL's repeatable read): under
    read committed each statement would see a later moment than the one before."""
    if session.get_bind().dialect.name == "postgresql":
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def stage_cells(counts: Counts) -> list[Cell]:
    """Per stage, in pipeline order: tasks waiting to start it (an errored task waits for the
    stage its retry runs), running it, and past it."""
    cells = []
    for index, stage in enumerate(STAGES):
        waiting = running = past = 0
        for (status, failed), n in counts.items():
            if status in ERROR:
                waiting += n if moves.resume_stage(status, failed) is stage else 0
                continue
            if status is stage.start or (index == 0 and status is TaskStatus.queued):
                waiting += n
            elif status is stage.active:
                running += n
            elif moves.stages_done(status, failed) > index:
                past += n
        cells.append(Cell(waiting, running, past))
    return cells


async def _counts(session: AsyncSession) -> dict[uuid.UUID, Counts]:
    """``(status, failed stage) → tasks`` per channel. The counts by status come from the
    ``(channel_id, status)`` index alone (no table read); only errored rows, few, are read for
    the stage their retry runs."""
    counts: dict[uuid.UUID, Counts] = defaultdict(dict)
    for channel, status, n in await session.execute(
            sa.select(Task.channel_id, Task.status, sa.func.count())
            .group_by(Task.channel_id, Task.status)):
        if TaskStatus(status) not in ERROR:
            counts[channel][(TaskStatus(status), None)] = int(n)
    for channel, status, failed, n in await session.execute(
            sa.select(Task.channel_id, Task.status, Task.failed_stage, sa.func.count())
            .where(Task.status.in_(ERROR))
            .group_by(Task.channel_id, Task.status, Task.failed_stage)):
        counts[channel][(TaskStatus(status), failed)] = int(n)
    return counts


async def _held(session: AsyncSession) -> dict[uuid.UUID, int]:
    """Tasks on hold per channel (only unfinished tasks can be held)."""
    rows = await session.execute(
        sa.select(Task.channel_id, sa.func.count())
        .where(Task.status.in_(HOLDABLE), Task.hold_since.is_not(None))
        .group_by(Task.channel_id))
    return {channel: int(n) for channel, n in rows}


async def channel_rows(session: AsyncSession) -> list[ChannelRow]:
    """Every channel with its stage cells, its tasks against its cap and its holds."""
    counts, held = await _counts(session), await _held(session)
    found = []
    for c in await session.scalars(sa.select(Channel).order_by(Channel.channel_id)):
        mine = counts.get(c.id, {})
        busy = sum(n for (status, _), n in mine.items() if status in ACTIVE)
        found.append(ChannelRow(c.channel_id, c.channel_name, c.is_active, c.max_concurrent,
                                busy, held.get(c.id, 0), stage_cells(mine), mine))
    return found


async def summary(session: AsyncSession, channels: list[ChannelRow], *,
                  now: datetime) -> watch.Board:
    """The terminal live view's figures (``watch.Board``), summed from the channels' rows
    rather than read again: what can be claimed and what is blocked is ``claims.claimable``;
    the errors' retries are read from the errored rows only."""
    by_status: dict[TaskStatus, int] = defaultdict(int)
    for row in channels:
        for (status, _), n in row.counts.items():
            by_status[status] += n
    totals = [Cell(*map(sum, zip(*(c.cells[i] for c in channels), strict=True)))
              if channels else Cell(0, 0, 0) for i in range(len(STAGES))]
    retries = (await session.execute(
        sa.select(sa.func.count(Task.retry_at), sa.func.min(Task.retry_at),
                  sa.func.count().filter(Task.retry_at.is_(None)))
        .where(Task.status.in_(ERROR)))).one()
    found = await claims.claimable(session, now=now)
    figures = stats.Stats(
        counts={(row.channel_id, status): n for row in channels
                for (status, _), n in row.counts.items()},
        runnable=found.runnable, blocked=found.blocked,
        queued=by_status.get(TaskStatus.queued, 0), oldest_queued_at=None,
        retrying=int(retries[0]), next_retry_at=retries[1], out_of_attempts=int(retries[2]))
    return watch.Board(
        now, [(st.name, *totals[i].as_tuple()) for i, st in enumerate(STAGES)],
        [(c.channel_id, c.busy, c.cap, c.active) for c in channels],
        [(gate.name, by_status.get(gate.waiting, 0)) for gate in GATES], figures)


async def _list(session: AsyncSession, since: orm.InstrumentedAttribute[Any],
                *where: sa.ColumnElement[bool], limit: int = LIST_LIMIT) -> list[Flagged]:
    stmt = (sa.select(Task.id, Task.title, Task.status, Channel.channel_id, since)
            .join(Channel, Channel.id == Task.channel_id).where(*where)
            .order_by(since, Task.id).limit(limit))
    return [Flagged(r[0], r[1], TaskStatus(r[2]), r[3], r[4])
            for r in await session.execute(stmt)]


async def _oldest_runnable(session: AsyncSession, *, now: datetime) -> Flagged | None:
    """The task waiting longest for a worker, not on hold: the oldest queued one (by creation,
    through the claim index) or one waiting after a stage, a gate or a due retry (few, by the
    time it got there)."""
    unheld = Task.hold_since.is_(None)
    queued = await _list(session, Task.created_at, Task.status == TaskStatus.queued, unheld,
                         limit=1)
    later = await _list(session, Task.updated_at, unheld, sa.or_(
        Task.status.in_(claims.WAITING - {TaskStatus.queued}),
        sa.and_(Task.status.in_(ERROR), Task.retry_at <= now)), limit=1)
    found = [f for f in (*queued, *later) if f.since is not None]
    return min(found, key=lambda f: f.since or now) if found else None


async def attention(session: AsyncSession, found: watch.Board, *, now: datetime,
                    lease_s: float) -> Attention:
    """Errors out of attempts (oldest first), the longest waits at gates, leases close to
    expiry (their worker missed a heartbeat), the task runnable longest, blocked tasks."""
    expiring = await _list(session, Task.lease_expires_at, Task.status.in_(ACTIVE),
                           Task.lease_expires_at < now + timedelta(
                               seconds=lease_s * LEASE_WARNING_SHARE))
    oldest = await _oldest_runnable(session, now=now)
    return Attention(
        out_of_attempts=await _list(session, Task.updated_at, Task.status.in_(ERROR),
                                    Task.retry_at.is_(None)),
        at_gates=await _list(session, Task.updated_at, Task.status.in_(GATE_STATES)),
        leases_expiring=expiring,
        oldest_runnable=oldest,
        blocked={reason: found.found.blocked[reason] for reason in claims.BLOCKED_REASONS
                 if found.found.blocked[reason]},
        out_of_attempts_total=found.found.out_of_attempts)


async def collect(session: AsyncSession, *, now: datetime, lease_s: float) -> BoardView:
    """The whole board from one snapshot of the database (call it first in its transaction):
    its counts, lists and totals agree with each other even while workers move tasks."""
    await one_snapshot(session)
    channels = await channel_rows(session)
    totals = await summary(session, channels, now=now)
    return BoardView(totals, channels, await attention(session, totals, now=now,
                                                       lease_s=lease_s))
