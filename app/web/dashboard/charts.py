"""Per-stage duration (p50, p95) and throughput over the last hour, as SVG drawn on the server.

Display statistics, read from the audit log (``task_events``): a stage run is the event that
entered the stage's working state and the task's next event, when that one ended the stage
(its done or error state). Only the newest ``EVENT_WINDOW`` events are read, through the
primary key, so the page costs the same at any table size. PostgreSQL only (percentiles).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

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
    """Every stage's figures over the hour before ``now``, in pipeline order."""
    since = now - HOUR
    runs = _runs(since)
    seconds = sa.extract("epoch", runs.c.ended - runs.c.began)
    ends = [s.done for s in STAGES] + [s.error for s in STAGES]
    finished = sa.and_(runs.c.next.in_(ends), runs.c.ended.is_not(None))
    by_status = {TaskStatus(r[0]): r for r in await session.execute(
        sa.select(runs.c.status, sa.func.percentile_cont(0.5).within_group(seconds),
                  sa.func.percentile_cont(0.95).within_group(seconds), sa.func.count(),
                  sa.func.count().filter(runs.c.next.in_([s.error for s in STAGES])))
        .where(runs.c.status.in_([s.active for s in STAGES]), finished)
        .group_by(runs.c.status))}
    minute = sa.func.floor(sa.extract("epoch", runs.c.ended - since) / BUCKET_S)
    per_minute: dict[TaskStatus, list[int]] = {s.active: [0] * BUCKETS for s in STAGES}
    for status, bucket, n in await session.execute(
            sa.select(runs.c.status, minute, sa.func.count())
            .where(runs.c.status.in_([s.active for s in STAGES]),
                   runs.c.next.in_([s.done for s in STAGES]), runs.c.ended.is_not(None))
            .group_by(runs.c.status, minute)):
        if 0 <= int(bucket) < BUCKETS:
            per_minute[TaskStatus(status)][int(bucket)] += int(n)
    found = []
    for stage in STAGES:
        row = by_status.get(stage.active)
        found.append(StageTimes(stage.name, _float(row[1]) if row else None,
                                _float(row[2]) if row else None, int(row[3]) if row else 0,
                                int(row[4]) if row else 0, per_minute[stage.active]))
    return found


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
