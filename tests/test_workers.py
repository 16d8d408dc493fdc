"""Real ``pipeline worker`` processes on real PostgreSQL and Redis: many tasks through every
stage with capacity limits, and recovery after a worker is killed with SIGKILL."""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from arq.constants import in_progress_key_prefix

from app import lifecycle
from app.db.models import Channel, Task, TaskEvent
from app.execution import wakeups
from app.lifecycle import STAGE_BY_ACTIVE, PriorityLevel, TaskStatus
from tests import workerprocs
from tests.workerprocs import (
    PIPELINE_WORKER,
    Sessions,
    Workers,
    count,
    events,
    eventually,
    jobs_in_progress,
    seed,
    status_of,
    wait_published,
)

db, queue, workers = workerprocs.db, workerprocs.queue, workerprocs.workers   # fixtures


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_four_workers_thousand_tasks_capacity_and_no_double_starts(
    db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str,
) -> None:
    _, sessions = db
    limits: list[int | None] = [2, 2, None, None, None]
    await seed(sessions, limits, per_channel=200)
    for _ in range(4):
        workers.start()
    await wakeups.wake_url(redis_url, 32, queue_name=queue)
    await wait_published(sessions, 1000, timeout_s=240)

    async with sessions() as session:
        rows = (await session.execute(
            sa.select(TaskEvent.task_id, TaskEvent.from_status, TaskEvent.to_status,
                      Task.channel_id, Channel.max_concurrent)
            .join(Task, Task.id == TaskEvent.task_id).join(Channel, Channel.id == Task.channel_id)
            .order_by(TaskEvent.id))).all()
    entries = Counter((e.task_id, e.to_status) for e in rows if e.to_status in STAGE_BY_ACTIVE)
    assert set(entries.values()) == {1}, "a stage was started twice in one attempt"
    assert len(entries) == 1000 * len(lifecycle.STAGES)
    active: dict[uuid.UUID, int] = defaultdict(int)
    peak: dict[uuid.UUID, int] = defaultdict(int)
    for e in rows:         # replay in event order: active tasks per channel at every moment
        was = e.from_status in lifecycle.ACTIVE
        now = e.to_status in lifecycle.ACTIVE
        active[e.channel_id] += int(now) - int(was)
        peak[e.channel_id] = max(peak[e.channel_id], active[e.channel_id])
        if e.max_concurrent is not None:
            assert active[e.channel_id] <= e.max_concurrent
    limited = [p for c, p in peak.items() if c in {e.channel_id for e in rows
                                                    if e.max_concurrent == 2}]
    assert limited and max(limited) == 2          # the limit was reached, never passed


async def test_sigkill_mid_stage_recovered_by_the_lease_long_before_arq_would(
    db: tuple[str, Sessions], workers: Workers, redis: aioredis.Redis, redis_url: str,
    queue: str,
) -> None:
    """arq re-runs a killed job only after its largest job timeout (python-arq/arq#402): here
    600 s. The lease reaper hands the task on within seconds, while arq still holds the killed
    job in progress."""
    _, sessions = db
    [task_id] = await seed(sessions, [None], per_channel=1)
    arq_env = {"JOB_TIMEOUT_SECONDS": "600", "LEASE_SECONDS": "2"}
    slow = workers.start(SIMULATED_STAGE_SECONDS="60", **arq_env)
    await wakeups.wake_url(redis_url, 1, queue_name=queue)

    async def in_stage() -> bool:
        return (await status_of(sessions, task_id))[0] is TaskStatus.generating_assets

    await eventually(in_stage, timeout_s=60, what="the slow worker in its first stage")

    async def the_stage_s_job_alone() -> set[str] | None:
        # The sweep the worker runs as it starts may wake it once more: that job claims
        # nothing and ends.
        running = await jobs_in_progress(redis, queue)
        return running if len(running) == 1 else None

    killed_jobs = await eventually(the_stage_s_job_alone, timeout_s=10,
                                   what="one job in progress: the one running the stage")
    slow.proc.send_signal(signal.SIGKILL)
    slow.proc.wait()
    killed_at = time.monotonic()
    workers.start(**arq_env)
    await wait_published(sessions, 1, timeout_s=90)
    assert time.monotonic() - killed_at < 60

    assert await jobs_in_progress(redis, queue) >= killed_jobs   # arq: still "running"
    assert await redis.ttl(in_progress_key_prefix + killed_jobs.pop()) > 500
    history = await events(sessions, task_id)
    path = [(e.from_status, e.to_status) for e in history]
    assert (TaskStatus.generating_assets, TaskStatus.asset_error) in path
    reaped = next(e for e in history if e.to_status is TaskStatus.asset_error)
    assert "lease expired" in (reaped.note or "") and reaped.actor.startswith("reaper:")
    assert path[-1] == (TaskStatus.uploading, TaskStatus.published)


async def test_one_worker_claims_by_priority_then_fifo(
    db: tuple[str, Sessions], workers: Workers,
) -> None:
    """Through a real worker (one job at a time, gates left to humans): every high task is
    claimed before any normal one, every normal before any low, each band oldest first."""
    _, sessions = db
    task_ids = await seed(sessions, [None], per_channel=24, spaced=True)
    workers.start(WORKER_CONCURRENCY="1", AUTO_APPROVE_GATES="")

    async def all_at_gate() -> bool:
        return await count(sessions, TaskStatus.assets_ready) == len(task_ids)

    await eventually(all_at_gate, timeout_s=60, what="every task at its first gate")
    claimed = [e.task_id for e in await events(sessions) if e.to_status is TaskStatus.claimed]
    rank = {priority: n for n, priority in enumerate(PriorityLevel)}
    async with sessions() as session:
        order = (await session.execute(sa.select(Task.id, Task.priority, Task.created_at))).all()
    expected = [row.id for row in sorted(order, key=lambda r: (rank[r.priority], r.created_at))]
    assert claimed == expected


async def test_one_wake_up_fills_every_slot_and_runs_tasks_back_to_back(
    db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str,
) -> None:
    """One wake-up: the worker's claim loops fill all its slots at once and take task after
    task in-process; Redis carries no job per task (a few jobs ran every task; the sweep's
    wake-ups found the slots busy, waited, and ran none)."""
    _, sessions = db
    worker = workers.start(SIMULATED_STAGE_SECONDS="0.1", WORKER_CONCURRENCY="4")
    await worker.started()
    await seed(sessions, [None, None, None, None], per_channel=6)
    await wakeups.wake_url(redis_url, 1, queue_name=queue)
    await wait_published(sessions, 24, timeout_s=120)
    active = peak = 0
    for e in await events(sessions):      # replay: tasks in an active state at every moment
        active += int(e.to_status in lifecycle.ACTIVE) - int(e.from_status in lifecycle.ACTIVE)
        peak = max(peak, active)
    assert peak == 4, "the slots were not all filled"
    ran = [int(n) for n in re.findall(r"← wake:\w+:work ● (\d+)", worker.text())]
    assert sum(ran) == 24
    assert 1 <= sum(1 for n in ran if n) <= 4, worker.text()[-3000:]


async def test_a_wake_up_fills_a_free_slot_while_the_other_loops_run_long_stages(
    db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str,
) -> None:
    """Tasks queued one at a time, each with its wake-up, while the loops already running are in
    long stages: each is claimed at once into a free slot (the worker keeps taking wake-ups while
    it has a free claim slot), not when a running loop next claims."""
    _, sessions = db
    worker = workers.start(SIMULATED_STAGE_SECONDS="60", WORKER_CONCURRENCY="4")
    await worker.started()
    for n in range(3):
        [task_id] = await seed(sessions, [None], per_channel=1, title=f"Long {n}")
        await wakeups.wake_url(redis_url, 1, queue_name=queue)

        async def in_stage(task_id: uuid.UUID = task_id) -> bool:
            return (await status_of(sessions, task_id))[0] is TaskStatus.generating_assets

        await eventually(in_stage, timeout_s=10, what=f"task {n + 1} of 3 in its first stage")


async def test_burst_worker_drains_what_is_runnable_then_exits(
    db: tuple[str, Sessions], workers: Workers,
) -> None:
    _, sessions = db
    await seed(sessions, [None, None], per_channel=5)
    await seed(sessions, [None], per_channel=2, title="Retried [fail:video:1]")
    burst = workers.start((*PIPELINE_WORKER, "--burst"), WORKER_CONCURRENCY="2")
    assert await burst.exited(timeout_s=120) == 0
    assert await count(sessions, TaskStatus.published) == 12
    assert burst.lines("burst done; left behind: 0 retrying later, 0 out of attempts, 0 waiting"
                       " at review gates, 0 blocked, 0 runnable"), burst.text()[-2000:]


async def test_burst_worker_says_what_it_leaves_behind(
    db: tuple[str, Sessions], workers: Workers,
) -> None:
    """A stage that fails with a long backoff is left for later, and the burst says so."""
    _, sessions = db
    await seed(sessions, [None], per_channel=1, title="Later [fail:assets:1]")
    burst = workers.start((*PIPELINE_WORKER, "--burst"), RETRY_BACKOFF_SECONDS="300")
    assert await burst.exited(timeout_s=120) == 0
    [line] = burst.lines("burst done; left behind: 1 retrying later (next in ")
    assert "0 out of attempts" in line and "0 runnable" in line
