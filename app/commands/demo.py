"""``pipeline demo``: the whole pipeline on the embedded default, with real worker processes.

Migrates, creates three channels (one capped at two active tasks), enqueues tasks of mixed
priority (two of them fail their video stage until an operator requeues them), starts real
``pipeline worker`` processes, shows live progress per stage and channel, requeues the errored
tasks through the admin path, and ends with a summary table once every task is published.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import lifecycle
from app.commands import tables
from app.config import get_settings
from app.db import migrate
from app.db.models import Channel, Task, TaskEvent
from app.errors import ChannelExists
from app.execution import wakeups
from app.lifecycle import ERROR, STAGE_BY_ACTIVE, PriorityLevel, TaskStatus
from app.schemas import ChannelCreate, TaskCreate
from app.services import channels, tasks, transitions

Sessions = async_sessionmaker[AsyncSession]

CHANNELS = (
    ChannelCreate(channel_id="UCdemo-science", channel_name="Science Shorts", max_concurrent=2),
    ChannelCreate(channel_id="UCdemo-history", channel_name="History Hour"),
    ChannelCreate(channel_id="UCdemo-nature", channel_name="Nature Notes"),
)
#: The demo's worker environment: fast stages, every gate auto-approved, two attempts a stage.
WORKER_ENV = {"AUTO_APPROVE_GATES": "all", "SIMULATED_STAGE_SECONDS": "0.05",
              "STAGE_MAX_ATTEMPTS": "2", "RETRY_BACKOFF_SECONDS": "0.2",
              "SWEEP_INTERVAL_SECONDS": "1", "LEASE_SECONDS": "10", "WORKER_CONCURRENCY": "4"}
FAILING = 2   # tasks whose video stage fails both automatic attempts
DEADLINE_S = 300


async def run(sessions: Sessions, *, url: str, redis_url: str, workers: int, tasks: int) -> int:
    started = time.monotonic()
    await migrate.upgrade(url)
    print(f"migrated to head in {time.monotonic() - started:.2f}s")
    await _ensure_channels(sessions)
    task_ids = await _enqueue(sessions, tasks)
    queue = get_settings().queue_name
    await wakeups.wake_url(redis_url, len(task_ids), queue_name=queue)
    procs = _start_workers(workers, url, redis_url)
    try:
        began = time.monotonic()
        await asyncio.wait_for(_watch(sessions, task_ids, redis_url), DEADLINE_S)
        elapsed = time.monotonic() - began
    finally:
        stop_workers(procs)
    await _summary(sessions, task_ids, elapsed)
    return 0


async def _ensure_channels(sessions: Sessions) -> None:
    for data in CHANNELS:
        try:
            async with sessions() as session, session.begin():
                await channels.create_channel(session, data)
        except ChannelExists:
            pass
    print("channels: " + ", ".join(
        f"{c.channel_id} (max {c.max_concurrent or '∞'})" for c in CHANNELS))


async def _enqueue(sessions: Sessions, count: int) -> list[uuid.UUID]:
    priorities = [PriorityLevel.normal, PriorityLevel.high, PriorityLevel.normal,
                  PriorityLevel.low]
    ids = []
    async with sessions() as session, session.begin():
        for i in range(count):
            marker = " [fail:video:2]" if i < FAILING else ""
            data = TaskCreate(notion_page_id=uuid.uuid4().hex, title=f"Video {i + 1}{marker}",
                              channel=CHANNELS[i % len(CHANNELS)].channel_id,
                              priority=priorities[i % len(priorities)])
            ids.append((await tasks.enqueue(session, data, actor="demo")).task_id)
    print(f"enqueued {len(ids)} tasks ({FAILING} will fail their video stage)")
    return ids


def _start_workers(count: int, url: str, redis_url: str) -> list[subprocess.Popen[bytes]]:
    env = os.environ | WORKER_ENV | {"DATABASE_URL": url, "REDIS_URL": redis_url}
    procs = [subprocess.Popen([sys.executable, "-m", "app", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(count)]
    print(f"started {count} worker processes (pids {', '.join(str(p.pid) for p in procs)})")
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every live worker (they finish or hand back their stages), then wait; kill one
    that outlives arq's grace period."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _watch(sessions: Sessions, task_ids: list[uuid.UUID], redis_url: str) -> None:
    """Print progress every half second; requeue errored tasks that wait for an operator."""
    requeued: set[uuid.UUID] = set()
    while True:
        rows = await _snapshot(sessions, task_ids)
        by_status = Counter(status for _, status, _ in rows)
        active = Counter(channel for channel, status, _ in rows if status in lifecycle.ACTIVE)
        stages = " ".join(f"{STAGE_BY_ACTIVE[s].name}:{n}" for s, n in sorted(
            by_status.items(), key=lambda kv: list(TaskStatus).index(kv[0]))
            if s in STAGE_BY_ACTIVE)
        print(f"  published {by_status[TaskStatus.published]:>3}/{len(task_ids)}"
              f"  queued {by_status[TaskStatus.queued]:>3}  running [{stages or '-'}]"
              f"  active per channel {dict(active) or '{}'}"
              f"  errors {sum(n for s, n in by_status.items() if s in ERROR)}", flush=True)
        if by_status[TaskStatus.published] == len(task_ids):
            return
        waiting = [tid for _, status, tid in rows if status in ERROR and tid not in requeued]
        if await _requeue_exhausted(sessions, waiting, requeued):
            await wakeups.wake_url(redis_url, 1, queue_name=get_settings().queue_name)
        await asyncio.sleep(0.5)


async def _snapshot(sessions: Sessions,
                    task_ids: list[uuid.UUID]) -> list[tuple[str, TaskStatus, uuid.UUID]]:
    async with sessions() as session:
        result = await session.execute(
            sa.select(Channel.channel_id, Task.status, Task.id)
            .join(Channel, Channel.id == Task.channel_id).where(Task.id.in_(task_ids)))
        return [(c, s, i) for c, s, i in result]


async def _requeue_exhausted(sessions: Sessions, candidates: list[uuid.UUID],
                             requeued: set[uuid.UUID]) -> bool:
    """Errored tasks with no automatic retry left: the operator's requeue (admin path)."""
    before = len(requeued)
    for task_id in candidates:
        async with sessions() as session, session.begin():
            task = await session.get(Task, task_id)
            if task is None or task.status not in ERROR or task.retry_at is not None:
                continue
            plan = await transitions.requeue(session, task_id, actor="demo-operator",
                                             reason="fixed the video renderer")
        requeued.add(task_id)
        print(f"  requeued {task.title!r}: {plan.status.value} → retry {plan.stage.name}")
    return len(requeued) > before


async def _summary(sessions: Sessions, task_ids: list[uuid.UUID], elapsed: float) -> None:
    async with sessions() as session:
        statuses = Counter((await session.scalars(
            sa.select(Task.status).where(Task.id.in_(task_ids)))).all())
        events = (await session.execute(
            sa.select(TaskEvent.task_id, TaskEvent.from_status, TaskEvent.to_status,
                      TaskEvent.created_at)
            .where(TaskEvent.task_id.in_(task_ids)).order_by(TaskEvent.id))).all()
    print()
    print(tables.render(["status", "tasks"], [(s.value, n) for s, n in statuses.items()]))
    print()
    print(tables.render(["stage", "runs", "mean s", "max s"], _stage_times(events)))
    print()
    print(f"{len(task_ids)} tasks through {len(lifecycle.STAGES)} stages in {elapsed:.1f}s: "
          f"{len(task_ids) / elapsed:.1f} tasks/s")


def _stage_times(events: Sequence[Any]) -> list[tuple[str, int, float, float]]:
    """Per stage: time from entering its active state to leaving it, from the event history."""
    entered: dict[tuple[uuid.UUID, TaskStatus], datetime] = {}
    spans: dict[str, list[float]] = {st.name: [] for st in lifecycle.STAGES}
    for task_id, src, dst, at in events:
        if dst in STAGE_BY_ACTIVE:
            entered[(task_id, dst)] = at
        if src in STAGE_BY_ACTIVE and (task_id, src) in entered:
            span = (at - entered.pop((task_id, src))).total_seconds()
            spans[STAGE_BY_ACTIVE[src].name].append(span)
    return [(name, len(v), sum(v) / len(v) if v else 0.0, max(v, default=0.0))
            for name, v in spans.items()]
