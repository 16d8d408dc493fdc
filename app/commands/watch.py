"""The live view of the pipeline at work: ``pipeline stats --watch``, and the screen of
``pipeline demo`` around it.

Per stage: tasks waiting to start it, running it, and past it; per channel: tasks active
against its cap; tasks waiting at each review gate; errors being retried apart from those out
of attempts. It fits 80 columns. On a terminal a ``Screen`` redraws it in place (rich's
``Live``); elsewhere (a pipe, a log file) each change prints one plain line instead, and the
last view is printed whole at the end.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import sqlalchemy as sa
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import moves
from app.db import session_scope
from app.db.models import Channel, Task
from app.lifecycle import ACTIVE, ERROR, GATES, STAGES, TaskStatus
from app.services import stats

#: The view's width: it must fit a standard terminal.
WIDTH = 80
#: How a view is stopped on purpose (Ctrl-C), which leaves the last view printed.
STOPS = (KeyboardInterrupt, asyncio.CancelledError)


@dataclass(frozen=True)
class Board:
    at: datetime
    #: ``(stage, waiting, running, past)`` in pipeline order.
    stages: list[tuple[str, int, int, int]]
    #: ``(channel id, active, cap or None, channel active?)``.
    channels: list[tuple[str, int, int | None, bool]]
    #: ``(gate, tasks waiting there)`` in pipeline order.
    gates: list[tuple[str, int]]
    found: stats.Stats

    @property
    def published(self) -> int:
        return self.found.by_status().get(TaskStatus.published, 0)


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
    gates = [(gate.name, by_status.get(gate.waiting, 0)) for gate in GATES]
    return Board(now, rows, channels, gates, found)


def render(board: Board, *, limit: int = 8) -> Group:
    """The view: two tables and three lines, at most 80 columns wide."""
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
    lines = [f"… and {more} more channel(s)"] if more > 0 else []
    lines.append(f"runnable {found.runnable}   blocked {blocked or 0}   "
                 f"published {board.published}")
    lines.append("at gates: " + "  ".join(f"{name} {n}" for name, n in board.gates)
                 + "  (pipeline approve)")
    lines.append(f"errors: {found.retrying} retrying, {found.out_of_attempts} out of "
                 "attempts (pipeline requeue)")
    return Group(stages, Text(""), channels, Text(""), *map(one_line, lines))


def one_line(text: str) -> Text:
    """A line of the view: cut short with an ellipsis rather than wrapped, so the view keeps
    its height."""
    return Text(text, no_wrap=True, overflow="ellipsis")


def line(board: Board) -> str:
    """The view's numbers in one plain line, for output that is not a terminal."""
    found = board.found
    running = " ".join(f"{name}:{n}" for name, _, n, _ in board.stages if n) or "-"
    gated = " ".join(f"{name}:{n}" for name, n in board.gates if n) or "-"
    return (f"queued {found.queued}  running {running}  at gates {gated}  "
            f"published {board.published}  errors {found.retrying} retrying, "
            f"{found.out_of_attempts} out of attempts")


def console() -> Console:
    """The console every view is drawn on: stdout, 80 columns."""
    return Console(width=WIDTH)


class Screen:
    """Where views are drawn. On a terminal: one view redrawn in place, with notes printed
    above it; elsewhere: a plain line per change, notes as lines, the last view at the end."""

    def __init__(self, out: Console) -> None:
        self.console = out
        self.redraws = out.is_terminal and not out.is_dumb_terminal
        self._live: Live | None = None
        self._view: RenderableType | None = None
        self._line: str | None = None

    def __enter__(self) -> Screen:
        if self.redraws:
            self._live = Live(console=self.console, auto_refresh=False, screen=False,
                              transient=False)
            self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()        # leaves the last view on the screen
        elif self._view is not None and (kind is None or issubclass(kind, STOPS)):
            self.console.print(self._view)

    def draw(self, view: RenderableType, plain: str, *, stamp: str = "") -> None:
        """Show ``view`` on a terminal; elsewhere print ``stamp`` and ``plain`` when ``plain``
        differs from the last one (so an idle pipeline prints nothing)."""
        self._view = view
        if self._live is not None:
            self._live.update(view, refresh=True)
        elif plain != self._line:
            self.note(stamp + plain, wrap=False)
        self._line = plain

    def note(self, text: str, *, wrap: bool = True) -> None:
        """A line that stays: above the view on a terminal, in sequence elsewhere. Wrapped at
        80 columns between words unless ``wrap`` is false (a command to copy)."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=not wrap)


async def run(sessions: async_sessionmaker[AsyncSession], *, interval_s: float,
              out: Console | None = None) -> None:
    """Redraw until interrupted (Ctrl-C leaves the last view)."""
    with Screen(out or console()) as screen:
        while True:
            async with session_scope(sessions) as session:
                board = await collect(session, now=moves.utcnow())
            screen.draw(render(board), line(board), stamp=f"{board.at:%H:%M:%S}  ")
            await asyncio.sleep(interval_s)
