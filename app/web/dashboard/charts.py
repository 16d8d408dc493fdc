"""Per-stage duration (p50, p95) and throughput over the last hour, as SVG drawn on the server.

Display statistics, read from the audit log (``task_events``): a stage run is the event that
entered the stage's working state and the task's next event, when that one ended the stage
(its done or error state). Only the newest ``EVENT_WINDOW`` events are read, through the
primary key, so the page costs the same at any table size. PostgreSQL only (percentiles).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import moves
from app.db import session_scope
from app.db.models import TaskEvent
from app.lifecycle import STAGES, TaskStatus

HOUR = timedelta(hours=1)
#: The most recent events read for the charts.
EVENT_WINDOW = 200_000
BUCKET_S = 60
BUCKETS = int(HOUR.total_seconds()) // BUCKET_S
#: Chart geometry (SVG user units).
WIDTH, BAR_H, LABEL_W, SPARK_H = 560, 18, 110, 36


@dataclass(frozen=True)
class StageTimes:
    stage: str
    p50_s: float | None
    p95_s: float | None
    runs: int
    failed: int
    #: Stage runs ended successfully in each minute of the hour, oldest first.
    per_minute: list[int]

    @property
    def done(self) -> int:
        return sum(self.per_minute)


def _runs(since: datetime) -> sa.Subquery:
    """Each event of the window with the task's next event's time and status."""
    newest = sa.select(sa.func.coalesce(sa.func.max(TaskEvent.id), 0)).scalar_subquery()
    return (sa.select(TaskEvent.to_status.label("status"), TaskEvent.created_at.label("began"),
                      sa.func.lead(TaskEvent.created_at).over(
                          partition_by=TaskEvent.task_id, order_by=TaskEvent.id).label("ended"),
                      sa.func.lead(TaskEvent.to_status).over(
                          partition_by=TaskEvent.task_id, order_by=TaskEvent.id).label("next"))
            .where(TaskEvent.id > newest - EVENT_WINDOW, TaskEvent.created_at >= since)
            .subquery())


async def stage_times(session: AsyncSession, *, now: datetime) -> list[StageTimes]:
    """Every stage's figures over the hour before ``now``, in pipeline order: one pass over
    the window, grouped by stage (percentiles, runs, failures) and by stage and minute (runs
    finished well)."""
    since = now - HOUR
    runs = _runs(since)
    seconds = sa.extract("epoch", runs.c.ended - runs.c.began)
    minute = sa.func.floor(sa.extract("epoch", runs.c.ended - since) / BUCKET_S).label("minute")
    failed = runs.c.next.in_([s.error for s in STAGES])
    rows = await session.execute(
        sa.select(runs.c.status, minute, sa.func.percentile_cont(0.5).within_group(seconds),
                  sa.func.percentile_cont(0.95).within_group(seconds), sa.func.count(),
                  sa.func.count().filter(failed))
        .where(runs.c.status.in_([s.active for s in STAGES]), runs.c.ended.is_not(None),
               runs.c.next.in_([s.done for s in STAGES] + [s.error for s in STAGES]))
        .group_by(sa.func.grouping_sets(sa.tuple_(runs.c.status),
                                        sa.tuple_(runs.c.status, minute))))
    overall: dict[TaskStatus, tuple[float | None, float | None, int, int]] = {}
    per_minute: dict[TaskStatus, list[int]] = {s.active: [0] * BUCKETS for s in STAGES}
    for status, bucket, p50, p95, n, errors in rows:
        if bucket is None:
            overall[TaskStatus(status)] = (_float(p50), _float(p95), int(n), int(errors))
        elif 0 <= int(bucket) < BUCKETS:
            per_minute[TaskStatus(status)][int(bucket)] += int(n) - int(errors)
    return [StageTimes(st.name, *overall.get(st.active, (None, None, 0, 0)),
                       per_minute[st.active]) for st in STAGES]


def _float(value: object) -> float | None:
    return None if value is None else float(str(value))


@dataclass(frozen=True)
class Bar:
    label: str
    y: float
    p50_w: float
    p95_w: float
    text: str


def duration_bars(times: list[StageTimes]) -> list[Bar]:
    """One row per stage: the p95 bar behind the p50 bar, on a scale shared by all stages."""
    top = max((t.p95_s or 0.0 for t in times), default=0.0) or 1.0
    span = WIDTH - LABEL_W - 150
    bars = []
    for i, t in enumerate(times):
        text = ("no runs" if t.p50_s is None else
                f"p50 {seconds_text(t.p50_s)} · p95 {seconds_text(t.p95_s or 0.0)}")
        bars.append(Bar(t.stage, i * (BAR_H + 8), span * (t.p50_s or 0.0) / top,
                        span * (t.p95_s or 0.0) / top, text))
    return bars


def seconds_text(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def spark_points(per_minute: list[int]) -> list[tuple[float, float, float]]:
    """``(x, height, width)`` of each minute's bar of a throughput sparkline."""
    top = max(per_minute, default=0) or 1
    step = (WIDTH - LABEL_W - 150) / max(len(per_minute), 1)
    return [(i * step, SPARK_H * n / top, max(step - 1, 1)) for i, n in enumerate(per_minute)]


@dataclass(frozen=True)
class Charts:
    """The charts' figures and when they were read (None: the database is not PostgreSQL)."""

    at: datetime
    times: list[StageTimes] | None


def reader(sessions: async_sessionmaker[AsyncSession]) -> Callable[[], Awaitable[Charts]]:
    """A read of the charts' figures, for a ``SharedRead`` (they cover an hour: a reading a
    few seconds old is as good as a new one, and a page view need not cost one)."""
    async def read() -> Charts:
        now = moves.utcnow()
        async with session_scope(sessions) as session:
            if session.get_bind().dialect.name != "postgresql":
                return Charts(now, None)
            return Charts(now, await stage_times(session, now=now))

    return read
