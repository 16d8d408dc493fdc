"""What the board shows: per stage, tasks waiting, running and past it, in total (the
terminal's live view, ``app.commands.watch``) and per channel with its cap and holds; and what
needs a person's attention. Every fact is read from the ``tasks`` and ``channels`` rows, in a
few aggregate queries over the status index."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.ext.asyncio import AsyncSession

from app import moves
from app.commands import watch
from app.db.models import Channel, Task
from app.lifecycle import ACTIVE, ERROR, GATE_STATES, STAGES, TaskStatus
from app.services import claims

#: Rows shown in each list of "needs attention".
LIST_LIMIT = 8
#: A lease with less than this share of its length left has missed a heartbeat (a heartbeat
#: renews it every third of its length).
LEASE_WARNING_SHARE = 1 / 3

Counts = dict[tuple[TaskStatus, str | None], int]


@dataclass(frozen=True)
class Cell:
    waiting: int
    running: int
    past: int


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


async def channel_rows(session: AsyncSession) -> list[ChannelRow]:
    """Every channel with its stage cells, its tasks against its cap and its holds."""
    rows = (await session.execute(
        sa.select(Task.channel_id, Task.status, Task.failed_stage, sa.func.count(),
                  sa.func.count(Task.hold_since))
        .group_by(Task.channel_id, Task.status, Task.failed_stage))).all()
    counts: dict[uuid.UUID, Counts] = defaultdict(dict)
    held: dict[uuid.UUID, int] = defaultdict(int)
    for channel, status, failed, n, on_hold in rows:
        key = (TaskStatus(status), failed)
        counts[channel][key] = counts[channel].get(key, 0) + int(n)
        held[channel] += int(on_hold)
    found = []
    for c in await session.scalars(sa.select(Channel).order_by(Channel.channel_id)):
        mine = counts.get(c.id, {})
        busy = sum(n for (status, _), n in mine.items() if status in ACTIVE)
        found.append(ChannelRow(c.channel_id, c.channel_name, c.is_active, c.max_concurrent,
                                busy, held.get(c.id, 0), stage_cells(mine)))
    return found


async def _list(session: AsyncSession, since: orm.InstrumentedAttribute[Any],
                *where: sa.ColumnElement[bool]) -> list[Flagged]:
    stmt = (sa.select(Task.id, Task.title, Task.status, Channel.channel_id, since)
            .join(Channel, Channel.id == Task.channel_id).where(*where)
            .order_by(since, Task.id).limit(LIST_LIMIT))
    return [Flagged(r[0], r[1], TaskStatus(r[2]), r[3], r[4])
            for r in await session.execute(stmt)]


async def attention(session: AsyncSession, found: watch.Board, *, now: datetime,
                    lease_s: float) -> Attention:
    """Errors out of attempts (oldest first), the longest waits at gates, leases close to
    expiry (their worker missed a heartbeat), the task runnable longest, blocked tasks."""
    unheld = Task.hold_since.is_(None)
    runnable = sa.or_(Task.status.in_(claims.WAITING),
                      sa.and_(Task.status.in_(ERROR), Task.retry_at <= now))
    expiring = await _list(session, Task.lease_expires_at, Task.status.in_(ACTIVE),
                           Task.lease_expires_at < now + timedelta(
                               seconds=lease_s * LEASE_WARNING_SHARE))
    oldest = await _list(session, Task.updated_at, runnable, unheld)
    return Attention(
        out_of_attempts=await _list(session, Task.updated_at, Task.status.in_(ERROR),
                                    Task.retry_at.is_(None)),
        at_gates=await _list(session, Task.updated_at, Task.status.in_(GATE_STATES)),
        leases_expiring=expiring,
        oldest_runnable=oldest[0] if oldest else None,
        blocked={reason: found.found.blocked[reason] for reason in claims.BLOCKED_REASONS
                 if found.found.blocked[reason]},
        out_of_attempts_total=found.found.out_of_attempts)


async def collect(session: AsyncSession, *, now: datetime, lease_s: float) -> BoardView:
    """The whole board from one snapshot of the database (call it first in its transaction):
    its counts, lists and totals agree with each other even while workers move tasks."""
    await one_snapshot(session)
    summary = await watch.collect(session, now=now)
    return BoardView(summary, await channel_rows(session),
                     await attention(session, summary, now=now, lease_s=lease_s))
