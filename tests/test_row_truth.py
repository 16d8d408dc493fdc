"""The task row is the whole truth, with real worker processes: a requeue gives a fresh attempt
budget; a task in an error state without history resumes and does not block its channel;
deleting the event history mid-run changes nothing; a crashed worker's stage is due again at
once; a second stop signal hands stages back at once; tasks that cannot run are blocked, not
runnable, and wake nobody."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from arq.connections import create_pool

from app.config import Settings
from app.db import make_pool
from app.db.models import Channel, Task, TaskEvent
from app.execution import wakeups
from app.execution.runner import Runner
from app.handlers import simulated
from app.lifecycle import ERROR, TaskStatus
from app.moves import utcnow
from app.services import claims
from tests.workerprocs import (
    ARQ_WORKER,
    PIPELINE_WORKER,
    Sessions,
    Workers,
    count,
    db,
    events,
    eventually,
    queue,
    seed,
    status_of,
    wait_published,
    workers,
)
from workers import jobs

__all__ = ["db", "queue", "workers"]      # fixtures

S = TaskStatus
PIPELINE = Path(sys.executable).with_name("pipeline")
BURST = (*PIPELINE_WORKER, "--burst")


def _pipeline(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DATABASE_URL": url, "REDIS_URL": "redis://127.0.0.1:1/0"}
    return subprocess.run([str(PIPELINE), *args], env=env, capture_output=True, text=True,
                          timeout=120)


async def _task(sessions: Sessions, task_id: uuid.UUID) -> Task:
    async with sessions() as session:
        task = await session.get(Task, task_id)
    assert task is not None
    return task


async def _burst(workers: Workers, **env: str) -> None:
    process = workers.start(BURST, **env)
    assert await process.exited(timeout_s=120) == 0, process.text()[-2000:]


async def test_a_requeue_gives_a_fresh_budget(db: tuple[str, Sessions], workers: Workers) -> None:
    """``[fail:video]`` with three attempts: three runs, then the task waits for an operator;
    a requeue gives three more (not one), each numbered in the budget, and a handler sees
    every run of the stage counted (``[fail:video:4]`` succeeds on its fourth run)."""
    url, sessions = db
    always, fourth = await seed(sessions, [None, None], per_channel=1, title="[fail:video] V")
    async with sessions() as session, session.begin():
        await session.execute(sa.update(Task).where(Task.id == fourth)
                              .values(title="[fail:video:4] V"))
    env = {"STAGE_MAX_ATTEMPTS": "3", "RETRY_BACKOFF_SECONDS": "0"}
    await _burst(workers, **env)
    for task_id in (always, fourth):
        task = await _task(sessions, task_id)
        assert (task.status, task.attempts, task.retry_at) == (S.video_error, 3, None)
        assert task.error_log is not None
        assert task.error_log.endswith("(attempt 3/3; no attempts left)")
    for task_id in (always, fourth):
        done = _pipeline(url, "requeue", str(task_id), "--reason", "try again")
        assert done.returncode == 0, done.stderr
    await _burst(workers, **env)
    again = await _task(sessions, always)
    assert again.status is S.video_error and again.error_log is not None
    numbered = [line.rsplit("(attempt ", 1)[1] for line in again.error_log.splitlines()]
    assert numbered == ["1/3; retry now)", "2/3; retry now)", "3/3; no attempts left)"] * 2
    assert again.stage_runs == 6
    assert (await _task(sessions, fourth)).status is S.published


async def test_an_errored_task_without_history_resumes_and_frees_its_channel(
        db: tuple[str, Sessions], workers: Workers) -> None:
    """Walked to ``asset_error`` by legal raw updates and its events lost, a task is requeued
    (the plan names the stage it resumes at) and a worker runs it to the end, and the task
    queued behind it in the same channel too."""
    url, sessions = db
    stuck, behind = await seed(sessions, [None], per_channel=2, spaced=True)
    async with sessions() as session, session.begin():
        for status in (S.claimed, S.generating_assets, S.asset_error):
            await session.execute(sa.text("UPDATE tasks SET status = :s WHERE id = :id"),
                                  {"s": status.value, "id": stuck})
        await session.execute(sa.delete(TaskEvent).where(TaskEvent.task_id == stuck))
    plan = _pipeline(url, "requeue", str(stuck), "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert "generating_assets" in plan.stdout
    assert _pipeline(url, "requeue", str(stuck)).returncode == 0
    await _burst(workers, AUTO_APPROVE_GATES="all")
    assert {(await _task(sessions, t)).status for t in (stuck, behind)} == {S.published}
    history = [(e.from_status, e.to_status) for e in await events(sessions, stuck)]
    assert history[1] == (S.asset_error, S.generating_assets)        # after the requeue


async def test_deleting_the_history_mid_run_changes_nothing(
        db: tuple[str, Sessions], workers: Workers) -> None:
    """Two workers run tasks that fail and retry while the test deletes every event, over and
    over: every task is published, each retry numbered from the row."""
    _, sessions = db
    plain = await seed(sessions, [None, 2], per_channel=6)
    flaky = await seed(sessions, [None], per_channel=4,
                       title="Flaky [fail:assets:1] [fail:video:2]")
    for _ in range(2):
        workers.start(RETRY_BACKOFF_SECONDS="0", STAGE_MAX_ATTEMPTS="3")
    await wakeups.wake_url(workers.env["REDIS_URL"], 8, queue_name=workers.env["QUEUE_NAME"])
    deletions = 0

    async def published_while_deleting() -> bool:
        nonlocal deletions
        async with sessions() as session, session.begin():
            deletions += len((await session.execute(
                sa.delete(TaskEvent).returning(TaskEvent.id))).all())
        return await count(sessions, S.published) == len(plain) + len(flaky)

    await eventually(published_while_deleting, timeout_s=120,
                     what="every task published while its history is deleted", every_s=0.02)
    assert deletions > 0
    for task_id in flaky:
        log = (await _task(sessions, task_id)).error_log or ""
        assert [line.rsplit("(attempt ", 1)[1] for line in log.splitlines()] == [
            "1/3; retry now)", "1/3; retry now)", "2/3; retry now)"]


async def test_a_crashed_workers_stage_is_due_again_at_once(
        db: tuple[str, Sessions], workers: Workers) -> None:
    """SIGKILL mid-stage with a 60 s retry backoff: the reaper counts the attempt but makes the
    retry due at once, so another worker takes the stage within the lease and one sweep, not
    after the backoff."""
    _, sessions = db
    [task_id] = await seed(sessions, [None], per_channel=1)
    env = {"LEASE_SECONDS": "2", "SWEEP_INTERVAL_SECONDS": "1", "RETRY_BACKOFF_SECONDS": "60"}
    slow = workers.start(SIMULATED_STAGE_SECONDS="600", WORKER_CONCURRENCY="1", **env)
    await slow.started()
    await wakeups.wake_url(workers.env["REDIS_URL"], 1, queue_name=workers.env["QUEUE_NAME"])

    async def in_stage() -> bool:
        return (await status_of(sessions, task_id))[0] is S.generating_assets

    await eventually(in_stage, timeout_s=60, what="the slow worker in its first stage")
    rescuer = workers.start(SIMULATED_STAGE_SECONDS="0", AUTO_APPROVE_GATES="all", **env)
    await rescuer.started()
    slow.proc.send_signal(signal.SIGKILL)
    slow.proc.wait()
    killed = time.monotonic()
    await wait_published(sessions, 1, timeout_s=60)
    history = await events(sessions, task_id)
    reaped = next(e for e in history if e.to_status is S.asset_error)
    assert reaped.note is not None and "(attempt 1/3; retry now)" in reaped.note
    retried = next(e for e in history if e.from_status is S.asset_error)
    assert retried.to_status is S.generating_assets
    rescued_after_s = (retried.created_at - reaped.created_at).total_seconds()
    assert rescued_after_s < 2, rescued_after_s          # due at once, not after 60 s
    assert time.monotonic() - killed < 45                # lease + sweep, then the pipeline


@pytest.mark.parametrize("argv", [PIPELINE_WORKER, ARQ_WORKER], ids=["pipeline", "arq"])
async def test_a_second_signal_hands_the_running_stage_back_at_once(
        db: tuple[str, Sessions], workers: Workers, argv: tuple[str, ...]) -> None:
    """The first SIGINT says what the worker waits for; the second hands the stage back at
    once, long before the grace period ends: no error state, no attempt spent. The same
    under ``pipeline worker`` and the Procfile's arq CLI."""
    _, sessions = db
    [task_id] = await seed(sessions, [None], per_channel=1)
    worker = workers.start(argv, SIMULATED_STAGE_SECONDS="600", SHUTDOWN_GRACE_SECONDS="300",
                           WORKER_CONCURRENCY="1")
    await worker.wait_for_line("Starting worker for" if argv is ARQ_WORKER else "started")
    await wakeups.wake_url(workers.env["REDIS_URL"], 1, queue_name=workers.env["QUEUE_NAME"])

    async def in_stage() -> bool:
        return (await status_of(sessions, task_id))[0] is S.generating_assets

    await eventually(in_stage, timeout_s=60, what="the worker in its first stage")
    worker.proc.send_signal(signal.SIGINT)
    line = await worker.wait_for_line("stopping;", "waiting up to 300 s", str(task_id))
    assert "again" in line
    worker.proc.send_signal(signal.SIGINT)
    await worker.exited(timeout_s=30)
    task = await _task(sessions, task_id)
    assert (task.status, task.claimed_by, task.error_log, task.attempts) == (
        S.generating_assets, None, None, 0)
    last = (await events(sessions, task_id))[-1]
    assert (last.from_status, last.to_status, last.note) == (
        S.generating_assets, S.generating_assets, "handed back: worker stopping")


async def test_tasks_that_cannot_run_are_blocked_and_wake_nobody(
        db: tuple[str, Sessions], settings: Settings, redis_url: str, queue: str) -> None:
    """An inactive channel's queued tasks, and those beyond a full channel's cap, are blocked
    (by reason) in ``stats``, not runnable; the sweep wakes no worker for them. A handed-back
    stage on the full channel is runnable: it keeps its slot."""
    url, sessions = db
    await seed(sessions, [None], per_channel=30)
    capped = await seed(sessions, [1], per_channel=5)
    async with sessions() as session, session.begin():
        await session.execute(sa.update(Channel).where(Channel.max_concurrent.is_(None))
                              .values(is_active=False))
        for status in (S.claimed, S.generating_assets):         # held by a live worker
            await session.execute(sa.update(Task).where(Task.id == capped[0]).values(
                status=status, claim_token=uuid.uuid4(), claimed_by="w",
                lease_expires_at=utcnow() + timedelta(minutes=5)))
    stats = _pipeline(url, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert data["runnable"] == 0
    assert data["blocked"] == {"inactive_channel": 30, "channel_at_cap": 4}
    assert "blocked: 30 inactive channel, 4 channel at cap" in _pipeline(url, "stats").stdout

    pool = make_pool(settings, url, max_size=2)
    redis = await create_pool(wakeups.redis_settings(redis_url))
    options = settings.model_copy(update={"queue_name": queue})
    runner = Runner(options, sessions, simulated(0), pool)
    try:
        swept = await jobs.sweep({"runner": runner, "redis": redis})
        assert (swept["runnable"], swept["woken"]) == (0, 0)
        assert await wakeups.pending(redis, queue_name=queue) == 0
        async with sessions() as session, session.begin():       # its holder hands it back
            await session.execute(sa.update(Task).where(Task.id == capped[0]).values(
                claim_token=None, claimed_by=None, lease_expires_at=None))
        async with sessions() as session:
            found = await claims.claimable(session, now=utcnow())
        assert found.runnable == 1 and found.blocked["channel_at_cap"] == 4
        swept = await jobs.sweep({"runner": runner, "redis": redis})
        assert (swept["runnable"], swept["woken"]) == (1, 1)
    finally:
        await redis.aclose()
        await pool.close()
    assert not any(s in ERROR for s in [(await status_of(sessions, t))[0] for t in capped])
