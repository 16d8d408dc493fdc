"""Real ``pipeline worker`` processes: pickup latency, rescue after SIGKILL, pipeline throughput.

Workers are started exactly as ``pipeline demo`` starts them (``python -m app worker`` with the
settings in the environment) and stopped with ``demo.stop_workers``. Times come from the
database: a claim is timed by its ``task_events`` row (the claim's ``now``), a publish by
``published_at``; the benchmark's own timestamps are taken right after its commits.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg  # type: ignore[import-untyped]  # ships no type information
from arq.connections import ArqRedis, create_pool

from app.commands import demo
from app.execution import wakeups
from bench import data

#: Every run: no stage time, no human gates, retries due at once.
BASE_ENV = {"AUTO_APPROVE_GATES": "all", "SIMULATED_STAGE_SECONDS": "0",
            "RETRY_BACKOFF_SECONDS": "0"}
READY_TIMEOUT_S = 60.0
T = TypeVar("T")


@dataclass(frozen=True)
class Env:
    """Where the workers connect, and the benchmark's own connections."""

    url: str
    redis_url: str
    conn: asyncpg.Connection
    redis: ArqRedis
    channels: list[uuid.UUID]


@asynccontextmanager
async def environment(url: str, redis_url: str) -> AsyncIterator[Env]:
    conn = await data.connect(url)
    redis = await create_pool(wakeups.redis_settings(redis_url))
    try:
        # Several channels: claims of one channel take turns on its row, and a worker's
        # continuation claim that finds the row taken leaves the task to the next wake-up.
        rows = await conn.fetch("INSERT INTO channels (channel_id, channel_name)"
                                " SELECT 'UCbench-workers-' || g, 'Workers ' || g"
                                " FROM generate_series(1, $1) g RETURNING id", data.CHANNELS)
        yield Env(url, redis_url, conn, redis, [r["id"] for r in rows])
    finally:
        await redis.aclose()
        await conn.close()


def start(env: Env, queue: str, **settings: str) -> subprocess.Popen[bytes]:
    full = os.environ | BASE_ENV | settings | {"DATABASE_URL": env.url,
                                               "REDIS_URL": env.redis_url, "QUEUE_NAME": queue}
    return subprocess.Popen([sys.executable, "-m", "app", "worker"], env=full,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def poll(check: Callable[[], Awaitable[T | None]], *, timeout_s: float = 60.0,
               every_s: float = 0.005) -> T:
    """Call ``check`` until it returns something; TimeoutError after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            found = await check()
            if found is not None:
                return found
            await asyncio.sleep(every_s)


async def ready(env: Env, workers: int) -> None:
    """Each worker's start-up sweep leaves a pooled connection named ``pipeline``."""
    async def count() -> bool | None:
        n = await env.conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'pipeline'")
        return True if n >= workers else None
    await poll(count, timeout_s=READY_TIMEOUT_S, every_s=0.1)


async def queue_tasks(env: Env, count: int) -> tuple[list[uuid.UUID], datetime]:
    """Insert ``count`` queued tasks in one committed statement; their ids and the time."""
    rows = await env.conn.fetch(
        "INSERT INTO tasks (channel_id, notion_page_id, title, status)"
        " SELECT ($1::uuid[])[1 + g % cardinality($1::uuid[])], md5(random()::text || g),"
        " 'Bench video ' || g, 'queued' FROM generate_series(1, $2) g RETURNING id",
        env.channels, count)
    return [r["id"] for r in rows], datetime.now(UTC)


async def claimed_at(env: Env, task_id: uuid.UUID, *, after: datetime | None = None,
                     to_status: str = "claimed", timeout_s: float = 60.0) -> datetime:
    async def event() -> datetime | None:
        at: datetime | None = await env.conn.fetchval(
            "SELECT min(created_at) FROM task_events WHERE task_id = $1"
            " AND to_status = $2::taskstatus AND ($3::timestamptz IS NULL OR created_at > $3)",
            task_id, to_status, after)
        return at
    return await poll(event, timeout_s=timeout_s)


async def published(env: Env, task_ids: list[uuid.UUID], *, timeout_s: float) -> datetime:
    """The last ``published_at`` once every task is published."""
    async def last() -> datetime | None:
        row = await env.conn.fetchrow(
            "SELECT count(*) AS n, max(published_at) AS at FROM tasks"
            " WHERE id = ANY($1::uuid[]) AND status = 'published'", task_ids)
        return row["at"] if row["n"] == len(task_ids) else None
    return await poll(last, timeout_s=timeout_s, every_s=0.05)


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000


async def pickup(env: Env, tasks: int, *, wake: bool, sweep_s: float) -> list[float]:
    """Queue one task at a time for an idle worker; ms from the commit to its claim. Without
    ``wake`` only the periodic sweep notices it; enqueues are spread over the sweep period."""
    queue = f"bench:{uuid.uuid4().hex[:8]}"
    proc = start(env, queue, SWEEP_INTERVAL_SECONDS=f"{sweep_s:g}")
    try:
        await ready(env, 1)
        samples = []
        for _ in range(tasks):
            await asyncio.sleep(random.uniform(0.05, 0.25) if wake else random.uniform(0, sweep_s))
            [task_id], queued = await queue_tasks(env, 1)
            if wake:
                await wakeups.wake(env.redis, 1, queue_name=queue)
            samples.append(_ms(await claimed_at(env, task_id, timeout_s=sweep_s + 30), queued))
            await published(env, [task_id], timeout_s=60)
        return samples
    finally:
        demo.stop_workers([proc])


@dataclass(frozen=True)
class Rescue:
    rescue_ms: float      # SIGKILL → the task's stage claimed again by another worker
    reaped_ms: float      # SIGKILL → the reaper moved it to its error state


async def rescue(env: Env, trials: int, *, lease_s: float, sweep_s: float) -> list[Rescue]:
    """Kill a worker with SIGKILL in the middle of a (60 s) stage; a second, idle worker's
    sweep reaps the expired lease and its claim takes the retry."""
    settings = {"LEASE_SECONDS": f"{lease_s:g}", "SWEEP_INTERVAL_SECONDS": f"{sweep_s:g}"}
    results = []
    for _ in range(trials):
        doomed_queue, rescuer_queue = (f"bench:{uuid.uuid4().hex[:8]}" for _ in range(2))
        doomed = start(env, doomed_queue, **settings, SIMULATED_STAGE_SECONDS="60")
        procs = [doomed]
        try:
            await ready(env, 1)
            [task_id], _ = await queue_tasks(env, 1)
            await wakeups.wake(env.redis, 1, queue_name=doomed_queue)
            await claimed_at(env, task_id, to_status="generating_assets")
            # The rescuer has its own queue: nothing wakes it but its own sweep.
            procs.append(start(env, rescuer_queue, **settings))
            await poll(functools.partial(_health, env, rescuer_queue),
                       timeout_s=READY_TIMEOUT_S, every_s=0.1)
            await asyncio.sleep(random.uniform(0, sweep_s))   # any phase of the lease
            doomed.kill()
            doomed.wait()
            killed = datetime.now(UTC)
            reaped = await claimed_at(env, task_id, to_status="asset_error", after=killed)
            again = await claimed_at(env, task_id, to_status="generating_assets", after=killed)
            results.append(Rescue(_ms(again, killed), _ms(reaped, killed)))
            await published(env, [task_id], timeout_s=60)
        finally:
            demo.stop_workers(procs)
    return results


async def _health(env: Env, queue: str) -> bool | None:
    """arq records a worker's health key on its first poll: the worker is running."""
    return True if await env.redis.exists(f"{queue}:health-check") else None


async def pipeline(env: Env, tasks: int, workers: int) -> float:
    """Tasks per second through every stage, from the commit that queues them to the last
    publish, with ``workers`` processes already running (and woken as the sync would)."""
    queue = f"bench:{uuid.uuid4().hex[:8]}"
    procs = [start(env, queue) for _ in range(workers)]
    try:
        await ready(env, workers)
        task_ids, queued = await queue_tasks(env, tasks)
        await wakeups.wake(env.redis, min(tasks, 10 * workers), queue_name=queue)
        done = await published(env, task_ids, timeout_s=600)
        return tasks / (done - queued).total_seconds()
    finally:
        demo.stop_workers(procs)
