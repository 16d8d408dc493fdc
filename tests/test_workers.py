"""Real ``pipeline worker`` processes on real PostgreSQL and Redis: many tasks through every
stage with capacity limits, and recovery after a worker is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import demo, lifecycle, wakeups
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.lifecycle import STAGE_BY_ACTIVE, PriorityLevel, TaskStatus
from app.models import Channel, Task, TaskEvent
from tests import dbtools

Sessions = async_sessionmaker[AsyncSession]
Spawn = Callable[..., subprocess.Popen[bytes]]
FAST = {"AUTO_APPROVE_GATES": "all", "SIMULATED_STAGE_SECONDS": "0", "SWEEP_INTERVAL_SECONDS": "1",
        "RETRY_BACKOFF_SECONDS": "0", "WORKER_CONCURRENCY": "8"}


@pytest.fixture
async def db(pg_server_url: str, settings: Settings) -> AsyncIterator[tuple[str, Sessions]]:
    """An empty migrated database of its own: the workers claim from every channel in it."""
    async with dbtools.scratch_database(pg_server_url, migrate=True) as url:
        engine = make_engine(settings, url)
        yield url, make_sessionmaker(engine)
        await engine.dispose()


@pytest.fixture
def spawn(db: tuple[str, Sessions], redis_url: str) -> Iterator[Spawn]:
    url = db[0]
    queue = f"test:{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> subprocess.Popen[bytes]:
        full = os.environ | FAST | env | {"DATABASE_URL": url, "REDIS_URL": redis_url,
                                         "QUEUE_NAME": queue}
        proc = subprocess.Popen([sys.executable, "-m", "app", "worker"], env=full,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    start.queue = queue  # type: ignore[attr-defined]
    yield start
    demo.stop_workers(procs)


async def _seed(sessions: Sessions, limits: list[int | None], per_channel: int,
                title: str = "Video") -> list[uuid.UUID]:
    priorities = list(PriorityLevel)
    async with sessions() as session, session.begin():
        channels = [Channel(channel_id=f"UC{i}-{uuid.uuid4().hex[:6]}", channel_name=f"c{i}",
                            max_concurrent=limit) for i, limit in enumerate(limits)]
        session.add_all(channels)
        await session.flush()
        rows = [{"id": uuid.uuid4(), "channel_id": c.id, "notion_page_id": uuid.uuid4().hex,
                 "title": title, "status": TaskStatus.queued,
                 "priority": priorities[n % 3]}
                for c in channels for n in range(per_channel)]
        await session.execute(sa.insert(Task), rows)
    return [r["id"] for r in rows]


async def _wait_until_published(sessions: Sessions, count: int, *, timeout_s: float) -> None:
    """Wait for the observable end state (the database), polling it; fail after timeout."""
    async with asyncio.timeout(timeout_s):
        while True:
            async with sessions() as session:
                done = await session.scalar(sa.select(sa.func.count())
                                            .where(Task.status == TaskStatus.published))
            if done == count:
                return
            await asyncio.sleep(0.25)


async def test_four_workers_thousand_tasks_capacity_and_no_double_starts(
    db: tuple[str, Sessions], spawn: Spawn, redis_url: str,
) -> None:
    _, sessions = db
    limits: list[int | None] = [2, 2, None, None, None]
    await _seed(sessions, limits, per_channel=200)
    for _ in range(4):
        spawn()
    await wakeups.wake_url(redis_url, 32, queue_name=spawn.queue)  # type: ignore[attr-defined]
    await _wait_until_published(sessions, 1000, timeout_s=240)

    async with sessions() as session:
        events = (await session.execute(
            sa.select(TaskEvent.task_id, TaskEvent.from_status, TaskEvent.to_status,
                      Task.channel_id, Channel.max_concurrent)
            .join(Task, Task.id == TaskEvent.task_id).join(Channel, Channel.id == Task.channel_id)
            .order_by(TaskEvent.id))).all()
    entries = Counter((e.task_id, e.to_status) for e in events if e.to_status in STAGE_BY_ACTIVE)
    assert set(entries.values()) == {1}, "a stage was started twice in one attempt"
    assert len(entries) == 1000 * len(lifecycle.STAGES)
    active: dict[uuid.UUID, int] = defaultdict(int)
    peak: dict[uuid.UUID, int] = defaultdict(int)
    for e in events:       # replay in event order: active tasks per channel at every moment
        was = e.from_status in lifecycle.ACTIVE
        now = e.to_status in lifecycle.ACTIVE
        active[e.channel_id] += int(now) - int(was)
        peak[e.channel_id] = max(peak[e.channel_id], active[e.channel_id])
        if e.max_concurrent is not None:
            assert active[e.channel_id] <= e.max_concurrent
    limited = [p for c, p in peak.items() if c in {e.channel_id for e in events
                                                    if e.max_concurrent == 2}]
    assert limited and max(limited) == 2          # the limit was reached, never passed


async def test_sigkill_mid_stage_recovered_after_lease(
    db: tuple[str, Sessions], spawn: Spawn, redis_url: str,
) -> None:
    _, sessions = db
    [task_id] = await _seed(sessions, [None], per_channel=1)
    slow = spawn(SIMULATED_STAGE_SECONDS="60", LEASE_SECONDS="2")
    await wakeups.wake_url(redis_url, 1, queue_name=spawn.queue)  # type: ignore[attr-defined]
    async with asyncio.timeout(60):
        while True:
            async with sessions() as session:
                status = await session.scalar(sa.select(Task.status).where(Task.id == task_id))
            if status is TaskStatus.generating_assets:
                break
            await asyncio.sleep(0.1)
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    spawn(LEASE_SECONDS="2")
    await _wait_until_published(sessions, 1, timeout_s=90)
    async with sessions() as session:
        events = (await session.execute(
            sa.select(TaskEvent.from_status, TaskEvent.to_status, TaskEvent.note, TaskEvent.actor)
            .where(TaskEvent.task_id == task_id).order_by(TaskEvent.id))).all()
    path = [(e.from_status, e.to_status) for e in events]
    assert (TaskStatus.generating_assets, TaskStatus.asset_error) in path
    reaped = next(e for e in events if e.to_status is TaskStatus.asset_error)
    assert "lease expired" in (reaped.note or "") and reaped.actor.startswith("reaper:")
    assert path[-1] == (TaskStatus.uploading, TaskStatus.published)
