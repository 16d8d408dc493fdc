"""Real worker processes through the failures DESIGN.md §6 names: a worker paused past its
lease is fenced out, a flushed Redis loses no task, a PostgreSQL restart strands no task and
kills no worker, a task left at an automatic step is moved on, and an operator's requeue
resumes a task at the stage that failed."""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from app.config import Settings
from app.db import make_engine, make_sessionmaker, migrate
from app.db.models import Task, TaskEvent
from app.execution import wakeups
from app.lifecycle import ACTIVE, ERROR, STAGE_BY_ACTIVE, TaskStatus
from app.services import transitions
from tests import factories, workerprocs
from tests.workerprocs import (
    OwnServer,
    Sessions,
    WorkerProcess,
    Workers,
    count,
    events,
    eventually,
    seed,
    status_of,
    wait_published,
)

db, own_postgres, own_redis = workerprocs.db, workerprocs.own_postgres, workerprocs.own_redis
queue, workers = workerprocs.queue, workerprocs.workers                          # fixtures
workers_on_own_redis = workerprocs.workers_on_own_redis

# --- fencing ---------------------------------------------------------------------------------


async def _quiet(sessions: Sessions) -> bool:
    """No other session of this database is inside a transaction (a paused worker holding a
    row lock would keep the reaper away for good)."""
    async with sessions() as session:
        busy = await session.scalar(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state IS DISTINCT FROM 'idle'"))
    return bool(busy == 0)


async def _pause_in_stage(sessions: Sessions, worker: WorkerProcess, worker_id: str,
                          task_id: uuid.UUID) -> TaskStatus:
    """SIGSTOP the worker while it runs a stage of the task with no transaction open; the
    status it was paused in. Paused at a less useful moment, it is resumed and paused again."""
    async def in_stage() -> TaskStatus | None:
        status, holder = await status_of(sessions, task_id)
        return status if status in STAGE_BY_ACTIVE and holder == worker_id else None

    for _ in range(50):
        await eventually(in_stage, timeout_s=60, what=f"{worker_id} in a stage", every_s=0.02)
        worker.pause()
        if (status := await in_stage()) is not None and await _quiet(sessions):
            return status
        worker.resume()
    pytest.fail(f"{worker_id} could not be paused inside a stage")


def _after_reap(history: list[TaskEvent], worker_id: str) -> list[TaskEvent]:
    """The events from the reap of ``worker_id``'s lease on."""
    reap = next(i for i, e in enumerate(history)
                if f"lease expired (held by {worker_id})" in (e.note or ""))
    return history[reap:]


async def test_worker_paused_past_its_lease_is_fenced_out(
    db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str,
) -> None:
    """Two workers are paused (SIGSTOP) in a stage until their tasks were reaped and run to
    the end by a third; once resumed (SIGCONT) neither can move its task. ``renewing`` is
    paused in a long stage: its heartbeat's renewal is refused and the stage stopped.
    ``finishing`` runs stages shorter than its heartbeat period: its outcome write is
    refused. Neither appears in the history after the reap, and no output of theirs lands."""
    _, sessions = db
    renewing = workers.start(SIMULATED_STAGE_SECONDS="60", LEASE_SECONDS="2",
                             WORKER_CONCURRENCY="1")
    finishing = workers.start(SIMULATED_STAGE_SECONDS="1.2", LEASE_SECONDS="4.5",
                              WORKER_CONCURRENCY="1")
    ids = {await renewing.started(): renewing, await finishing.started(): finishing}
    await seed(sessions, [None, None], per_channel=1)
    await wakeups.wake_url(redis_url, 2, queue_name=queue)

    async def both_held() -> dict[str, uuid.UUID] | None:
        async with sessions() as session:
            rows = (await session.execute(sa.select(Task.claimed_by, Task.id)
                                          .where(Task.status.in_(ACTIVE)))).all()
        held = {row.claimed_by: row.id for row in rows}
        return held if set(held) == set(ids) else None

    held = await eventually(both_held, timeout_s=60, what="each worker holding a task")
    stages = {worker_id: await _pause_in_stage(sessions, proc, worker_id, held[worker_id])
              for worker_id, proc in ids.items()}
    workers.start()                                       # reaps both, runs both to the end
    await wait_published(sessions, 2, timeout_s=60)
    for proc in ids.values():
        proc.resume()

    for worker_id, proc in ids.items():
        task_id = held[worker_id]
        refusal = "renewal refused" if proc is renewing else "write refused"
        await proc.wait_for_line(worker_id, "StaleClaim", str(task_id), refusal, timeout_s=30)
        later = _after_reap(await events(sessions, task_id), worker_id)
        assert later[-1].to_status is TaskStatus.published
        assert all(e.actor != worker_id for e in later)
        async with sessions() as session:
            task = await session.get(Task, task_id)
        assert task is not None
        stage = STAGE_BY_ACTIVE[stages[worker_id]].name
        assert task.artifacts[stage]["seconds"] == 0      # the rescuer's output, not theirs
        assert proc.alive


# --- Redis flushed ---------------------------------------------------------------------------


async def test_redis_flushall_mid_run_loses_no_task(
    db: tuple[str, Sessions], own_redis: OwnServer, workers_on_own_redis: Workers,
) -> None:
    """FLUSHALL drops every wake-up, queued or running, and arq's bookkeeping; PostgreSQL
    still knows what is runnable, and the sweep wakes workers for it."""
    _, sessions = db
    total = 24
    await seed(sessions, [None, None], per_channel=total // 2)
    first = workers_on_own_redis.start(SIMULATED_STAGE_SECONDS="0.05", WORKER_CONCURRENCY="3")
    second = workers_on_own_redis.start(SIMULATED_STAGE_SECONDS="0.05", WORKER_CONCURRENCY="3")

    async def in_flight() -> bool:
        return (await count(sessions, TaskStatus.published) >= 3
                and await count(sessions, *STAGE_BY_ACTIVE) >= 2)

    await eventually(in_flight, timeout_s=60, what="tasks published and stages in flight")
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        assert await client.flushall()
    finally:
        await client.aclose()
    await wait_published(sessions, total, timeout_s=120)
    assert first.alive and second.alive
    entries = Counter((e.task_id, e.to_status) for e in await events(sessions)
                      if e.to_status in STAGE_BY_ACTIVE)
    assert set(entries.values()) == {1}, "a stage was started twice"


# --- PostgreSQL restarted --------------------------------------------------------------------


@pytest.fixture
async def own_db(own_postgres: OwnServer, settings: Settings) -> AsyncIterator[Sessions]:
    await migrate.upgrade(own_postgres.url)
    # The test's own reads span the restart: test each pooled connection before use.
    engine = make_engine(settings.model_copy(update={"db_pool_pre_ping": True}),
                         own_postgres.url)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def test_postgres_restart_mid_run_strands_no_task_and_kills_no_worker(
    own_postgres: OwnServer, own_db: Sessions, redis_url: str, queue: str, tmp_path: Path,
) -> None:
    """PostgreSQL is stopped while workers run stages and started again. ``holder`` is in a
    long stage when it goes: its heartbeat cannot renew the lease and stops the stage before
    the lease may expire, while the database is still down, so the retry that the reaper
    hands on later cannot overlap it. The other workers lose writes and claims, carry on once
    the database is back, and every task is published."""
    sessions = own_db
    total = 24
    task_ids = await seed(sessions, [None, None, None], per_channel=total // 3)
    procs = Workers(tmp_path, {"DATABASE_URL": own_postgres.url, "REDIS_URL": redis_url,
                               "QUEUE_NAME": queue, "LEASE_SECONDS": "3",
                               "STAGE_MAX_ATTEMPTS": "10"})
    try:
        holder = procs.start(SIMULATED_STAGE_SECONDS="30", WORKER_CONCURRENCY="1")
        holder_id = await holder.started()
        busy = [procs.start(SIMULATED_STAGE_SECONDS="0.1", WORKER_CONCURRENCY="3")
                for _ in range(2)]
        busy_ids = [await proc.started() for proc in busy]
        await wakeups.wake_url(redis_url, total, queue_name=queue)

        async def running() -> uuid.UUID | None:
            async with sessions() as session:
                held = await session.scalar(sa.select(Task.id).where(
                    Task.claimed_by == holder_id, Task.status.in_(STAGE_BY_ACTIVE)))
            published = await count(sessions, TaskStatus.published)
            return held if held is not None and published >= 3 else None

        held = await eventually(running, timeout_s=60, what="the holder in a stage, progress")
        own_postgres.stop()
        await holder.wait_for_line("LeaseNotRenewed", str(held), "stage stopped", timeout_s=30)
        for proc in busy:
            await proc.wait_for_line("database unavailable", timeout_s=30)
        holder.proc.terminate()
        assert await holder.exited(timeout_s=30) == 0       # stops cleanly, the database down
        restarted_at = datetime.now().astimezone()
        own_postgres.start()

        await wait_published(sessions, total, timeout_s=120)
        assert all(proc.alive for proc in busy)
        history = await events(sessions)
        for worker_id in busy_ids:     # each reconnected and went on claiming
            assert any(e.actor == worker_id and e.created_at > restarted_at for e in history)
        reaped = _after_reap(await events(sessions, held), holder_id)
        assert reaped[0].created_at > restarted_at
        assert all(e.actor != holder_id for e in reaped)
        assert set(task_ids) == {e.task_id for e in history
                                 if e.to_status is TaskStatus.published}
    finally:
        procs.stop()


# --- stranded at an automatic step ----------------------------------------------------------


async def test_sweep_moves_on_tasks_stranded_at_an_automatic_step(
    db: tuple[str, Sessions], workers: Workers,
) -> None:
    """A worker that stops between recording a stage and moving on (killed, or the database
    went away) leaves its task at an auto-approved gate or at ``assembly_ready``, where no
    claim takes it. The sweep moves such tasks on; a gate left to humans stays put."""
    _, sessions = db
    minute_ago = transitions.utcnow() - timedelta(minutes=1)
    async with sessions() as session, session.begin():
        channel = await factories.make_channel(session)
        tasks = {status: (await factories.make_task(session, channel, status,
                                                    updated_at=minute_ago)).id
                 for status in (TaskStatus.assets_ready, TaskStatus.assembly_ready,
                                TaskStatus.video_ready)}
    workers.start(AUTO_APPROVE_GATES="assets")
    expected = {TaskStatus.assets_ready: TaskStatus.video_ready,     # on to the next gate
                TaskStatus.assembly_ready: TaskStatus.final_review,  # a human's gate
                TaskStatus.video_ready: TaskStatus.video_ready}      # untouched

    async def settled() -> bool:
        return all([(await status_of(sessions, task_id))[0] is expected[status]
                    for status, task_id in tasks.items()])

    await eventually(settled, timeout_s=60, what="stranded tasks moved on")
    assert await events(sessions, tasks[TaskStatus.video_ready]) == []


# --- requeue ---------------------------------------------------------------------------------


async def test_requeued_task_waits_in_its_error_state_then_resumes_at_the_failed_stage(
    db: tuple[str, Sessions], workers: Workers,
) -> None:
    _, sessions = db
    [task_id] = await seed(sessions, [None], per_channel=1, title="Doomed [fail:video:2]")
    env = {"STAGE_MAX_ATTEMPTS": "2"}
    first = workers.start(**env)

    async def gave_up() -> bool:
        async with sessions() as session:
            task = await session.get(Task, task_id)
        return task is not None and task.status is TaskStatus.video_error \
            and task.retry_at is None

    await eventually(gave_up, timeout_s=60, what="the task waiting in video_error")
    first.proc.terminate()
    assert await first.exited(timeout_s=30) == 0

    async with sessions() as session, session.begin():
        await transitions.requeue(session, task_id, actor="ops", reason="model fixed")
    assert (await status_of(sessions, task_id))[0] is TaskStatus.video_error
    second = workers.start(**env)
    second_id = await second.started()
    await wait_published(sessions, 1, timeout_s=60)

    history = await events(sessions, task_id)
    request = next(i for i, e in enumerate(history) if e.actor == "ops")
    assert history[request].from_status is history[request].to_status is TaskStatus.video_error
    assert "model fixed" in (history[request].note or "")
    retry = history[request + 1]
    assert (retry.from_status, retry.to_status, retry.actor) == (
        TaskStatus.video_error, TaskStatus.generating_video, second_id)
    entered = [e.to_status for e in history]
    assert entered.count(TaskStatus.generating_assets) == 1     # not restarted from the top
    assert entered.count(TaskStatus.generating_video) == 3
    assert history[-1].to_status is TaskStatus.published


# --- SIGTERM ---------------------------------------------------------------------------------


async def test_sigterm_finishes_the_running_stage_claims_no_more_and_hands_back_the_rest(
    db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str,
) -> None:
    """Told to stop (SIGTERM) mid-stage, a worker stops claiming: ``finishing`` completes its
    stage within the grace period and leaves the next stage to others; ``cut`` cannot finish
    within the grace period and hands its stage back: the task keeps its status with no
    holder, no error state, nothing in ``error_log``, the attempt not counted. Both exit 0; a
    new worker takes the handed-back stage over and completes both tasks."""
    _, sessions = db
    finishing = workers.start(SIMULATED_STAGE_SECONDS="1.5", SHUTDOWN_GRACE_SECONDS="20",
                              LEASE_SECONDS="30", WORKER_CONCURRENCY="1")
    cut = workers.start(SIMULATED_STAGE_SECONDS="600", SHUTDOWN_GRACE_SECONDS="1",
                        LEASE_SECONDS="30", WORKER_CONCURRENCY="1")
    ids = {await finishing.started(): finishing, await cut.started(): cut}
    await seed(sessions, [None, None], per_channel=1)
    await wakeups.wake_url(redis_url, 2, queue_name=queue)

    async def both_in_assets() -> dict[str, uuid.UUID] | None:
        async with sessions() as session:
            rows = (await session.execute(
                sa.select(Task.claimed_by, Task.id)
                .where(Task.status == TaskStatus.generating_assets))).all()
        held = {row.claimed_by: row.id for row in rows}
        return held if set(held) == set(ids) else None

    held = await eventually(both_in_assets, timeout_s=60, what="both workers in a stage",
                            every_s=0.02)
    for proc in ids.values():
        proc.proc.send_signal(signal.SIGTERM)
    for proc in ids.values():
        assert await proc.exited(timeout_s=30) == 0

    for worker_id, proc in ids.items():
        mine = [(e.from_status, e.to_status, e.note) for e in await events(sessions)
                if e.actor == worker_id]
        async with sessions() as session:
            task = await session.get(Task, held[worker_id])
        assert task is not None
        assert task.claim_token is None and task.lease_expires_at is None     # nothing held
        assert all(to is not TaskStatus.generating_composites for _, to, _ in mine)
        if proc is finishing:
            assert (TaskStatus.generating_assets, TaskStatus.assets_ready) in {
                (frm, to) for frm, to, _ in mine}
            assert task.status is TaskStatus.assets_approved      # runnable, for the others
        else:
            assert mine[-1] == (TaskStatus.generating_assets, TaskStatus.generating_assets,
                                "handed back: worker stopping")
            assert task.status is TaskStatus.generating_assets and task.claimed_by is None
            assert task.error_log is None and task.failed_stage is None
            assert (task.attempts, task.stage_runs) == (0, 0)      # the attempt not counted
    workers.start()
    await wakeups.wake_url(redis_url, 2, queue_name=queue)
    await wait_published(sessions, 2, timeout_s=60)
    cut_task = next(held[w] for w, proc in ids.items() if proc is cut)
    notes = [(e.from_status, e.to_status, e.note) for e in await events(sessions, cut_task)]
    assert (TaskStatus.generating_assets, TaskStatus.generating_assets,
            "claim: taken over") in notes
    assert not any(to in ERROR for _, to, _ in notes)
