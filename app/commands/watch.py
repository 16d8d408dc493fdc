"""``pipeline stats --watch``: one screen, redrawn in place, of the pipeline at work.

Per stage: tasks waiting to start it, running it, and past it; per channel: tasks active
against its cap; errors being retried apart from those out of attempts. It fits 80 columns.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import moves
from app.db import session_scope
from app.db.models import Channel, Task
from app.lifecycle import ACTIVE, ERROR, STAGES, TaskStatus
from app.services import stats


@dataclass(frozen=True)
class Board:
    at: datetime
    #: ``(stage, waiting, running, past)`` in pipeline order.
    stages: list[tuple[str, int, int, int]]
    #: ``(channel id, active, cap or None, channel active?)``.
    channels: list[tuple[str, int, int | None, bool]]
    found: stats.Stats


async def collect(session: AsyncSession, *, now: datetime) -> Board:
    found = await stats.collect(session, now=now)
    by_status = found.by_status()
    rows = []
    for index, stage in enumerate(STAGES):
        waiting = by_status.get(stage.start, 0) + (by_status.get(TaskStatus.queued, 0)
                                                   if index == 0 else 0)
        waiting += sum(n for s, n in by_status.items()
                       if s in ERROR and moves.resume_stage(s, None) is stage)
        past = sum(n for s, n in by_status.items()
                   if s not in ERROR and moves.stages_done(s, None) > index)
        rows.append((stage.name, waiting, by_status.get(stage.active, 0), past))
    active = dict((await session.execute(
        sa.select(Task.channel_id, sa.func.count()).where(Task.status.in_(ACTIVE))
        .group_by(Task.channel_id))).tuples().all())
    channels = [(c.channel_id, active.get(c.id, 0), c.max_concurrent, c.is_active)
                for c in await session.scalars(sa.select(Channel).order_by(Channel.channel_id))]
    return Board(now, rows, channels, found)


def render(board: Board, *, limit: int = 8) -> Group:
    """The screen: two tables and two lines, at most 80 columns wide."""
    stages = Table(title=f"pipeline at {board.at:%H:%M:%S} UTC", title_justify="left",
                   width=60, box=None, pad_edge=False)
    for header in ("stage", "waiting", "running", "past it"):
        stages.add_column(header, justify="left" if header == "stage" else "right")
    for name, waiting, running, past in board.stages:
        stages.add_row(name, str(waiting), str(running), str(past))
    channels = Table(width=60, box=None, pad_edge=False)
    for header in ("channel", "active", "cap", "state"):
        channels.add_column(header, justify="left" if header in ("channel", "state")
                            else "right", overflow="ellipsis", no_wrap=True)
    for channel_id, active, cap, on in board.channels[:limit]:
        channels.add_row(channel_id[:28], str(active), "-" if cap is None else str(cap),
                         "active" if on else "inactive")
    more = len(board.channels) - limit
    found = board.found
    blocked = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in found.blocked.items())
    lines = [Text(f"… and {more} more channel(s)")] if more > 0 else []
    lines.append(Text(f"runnable {found.runnable}   blocked {blocked or 0}   "
                      f"published {found.by_status().get(TaskStatus.published, 0)}"))
    lines.append(Text(f"errors: {found.retrying} retrying, {found.out_of_attempts} out of "
                      "attempts (pipeline requeue)"))
    return Group(stages, Text(""), channels, Text(""), *lines)


async def run(sessions: async_sessionmaker[AsyncSession], *, interval_s: float,
              console: Console | None = None) -> None:
    """Redraw until interrupted (Ctrl-C leaves the last screen)."""
    out = console or Console(width=80)
    with Live(console=out, auto_refresh=False, screen=False, transient=False) as live:
        while True:
            async with session_scope(sessions) as session:
                board = await collect(session, now=moves.utcnow())
            live.update(render(board), refresh=True)
            await asyncio.sleep(interval_s)
