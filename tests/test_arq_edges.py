"""arq's sharp edges, each shown harmless with real worker processes: a dropped or duplicated
wake-up, a queue head held in progress (``queue_read_limit``), how many wake-ups a process
takes (one more than it holds while a slot is free: a trickle of tasks starts at once beside
long stages, and a busy process leaves the rest to others), a process whose job slots are all
held (its sweep still runs), and a Redis restart (arq's Worker dies of it,
python-arq/arq#498). The SIGKILLed job that arq re-runs only after its
largest job timeout is in ``test_workers.py``."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix

from app.execution import wakeups
from app.lifecycle import STAGE_BY_ACTIVE, TaskStatus
from app.services import claims, transitions
from tests import workerprocs
from tests.workerprocs import (
    ARQ_WORKER,
    PIPELINE_WORKER,
    OwnServer,
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

db, own_redis = workerprocs.db, workerprocs.own_redis
queue, workers = workerprocs.queue, workerprocs.workers                          # fixtures
workers_on_own_redis = workerprocs.workers_on_own_redis


@pytest.fixture
async def arq_pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(wakeups.redis_settings(redis_url))
    yield pool
    await pool.aclose()


async def test_dropped_and_duplicated_wake_ups_change_nothing(
    db: tuple[str, Sessions], workers: Workers, arq_pool: ArqRedis, queue: str,
) -> None:
    """arq silently drops an enqueue whose job id is queued, running or still has a result
    (``keep_result``). Our wake-ups never reuse an id, and were one lost anyway, the sweep
    finds the runnable work in PostgreSQL; extra wake-ups only cost an empty claim."""
    _, sessions = db
    await seed(sessions, [None], per_channel=3)
    reused = f"wake:{uuid.uuid4().hex}"
    await arq_pool.set(result_key_prefix + reused, b"kept", ex=60)     # a result still kept
    assert await arq_pool.enqueue_job(wakeups.WORK_JOB, _job_id=reused,
                                      _queue_name=queue) is None      # dropped, silently
    worker = workers.start(WORKER_CONCURRENCY="4")
    await worker.wait_for_line("sweep:", "runnable 3", "woke 3")     # the sweep saw them
    await wait_published(sessions, 3, timeout_s=60)

    await seed(sessions, [None], per_channel=3)
    assert await wakeups.wake(arq_pool, 40, queue_name=queue) == 40  # fresh ids: all kept
    twice = f"wake:{uuid.uuid4().hex}"
    assert await arq_pool.enqueue_job(wakeups.WORK_JOB, _job_id=twice,
                                      _queue_name=queue) is not None
    assert await arq_pool.enqueue_job(wakeups.WORK_JOB, _job_id=twice,
                                      _queue_name=queue) is None       # a duplicate: dropped
    await wait_published(sessions, 6, timeout_s=60)
    entries = Counter((e.task_id, e.to_status) for e in await events(sessions)
                      if e.to_status in STAGE_BY_ACTIVE)
    assert set(entries.values()) == {1}, "a stage was started twice"
    assert worker.alive


async def test_free_workers_are_not_starved_by_a_queue_head_held_in_progress(
    db: tuple[str, Sessions], workers: Workers, arq_pool: ArqRedis, queue: str,
) -> None:
    """arq reads the ``queue_read_limit`` oldest jobs per poll and skips those held in
    progress: when all of them are held (by busy workers, or by SIGKILLed ones until arq's job
    timeout) a free worker starts nothing. arq's default limit is max(5 * max_jobs, 100); ours
    is max(1000, 10 * concurrency), so 120 held entries at the head starve no one."""
    _, sessions = db
    held = [f"wake:{uuid.uuid4().hex}" for _ in range(120)]
    an_hour_ago_ms = int((time.time() - 3600) * 1000)
    await arq_pool.zadd(queue, {job_id: an_hour_ago_ms + n for n, job_id in enumerate(held)})
    async with arq_pool.pipeline(transaction=False) as pipe:
        for job_id in held:
            pipe.set(in_progress_key_prefix + job_id, b"1", ex=300)
        await pipe.execute()
    procs = [workers.start(WORKER_CONCURRENCY="2", SIMULATED_STAGE_SECONDS="0.1")
             for _ in range(3)]
    ids = {await proc.started() for proc in procs}
    await seed(sessions, [None, None, None], per_channel=4)
    await wait_published(sessions, 12, timeout_s=90)
    claimers = {e.actor for e in await events(sessions) if e.to_status is TaskStatus.claimed}
    assert claimers == ids                                 # every worker took its share


async def test_free_slots_take_a_trickle_of_tasks_while_long_stages_run(
    db: tuple[str, Sessions], workers: Workers, arq_pool: ArqRedis, queue: str,
) -> None:
    """Tasks arriving one at a time, each with its wake-up, each start at once in a free slot
    while the stages of the ones before still run: a job whose loops are down to a long stage
    still holds its arq job slot, so a process must be able to hold as many jobs as it has
    slots (a cap of two jobs, which saved a busy process its surplus wake-ups, left the third
    task waiting for a stage to end)."""
    _, sessions = db
    worker = workers.start(WORKER_CONCURRENCY="4", SIMULATED_STAGE_SECONDS="120")
    await worker.started()
    for n in range(3):
        [task_id] = await seed(sessions, [None], per_channel=1, title=f"Trickle {n}")
        assert await wakeups.wake(arq_pool, 1, queue_name=queue) == 1

        async def started(task_id: uuid.UUID = task_id) -> bool:
            return (await status_of(sessions, task_id))[0] is TaskStatus.generating_assets

        await eventually(started, timeout_s=20, what=f"task {n} started in a free slot")


@pytest.mark.parametrize("argv", [PIPELINE_WORKER, ARQ_WORKER], ids=["pipeline", "arq-cli"])
async def test_a_busy_worker_leaves_further_wake_ups_to_other_processes(
    db: tuple[str, Sessions], workers: Workers, arq_pool: ArqRedis, queue: str,
    argv: tuple[str, ...],
) -> None:
    """A wake-up fills every free slot of the process that takes it, so a process takes one
    more than it holds only while a slot is free (``Slots._admit`` steers arq's ``max_jobs``):
    once its 20 slots are busy it holds a few, not one per slot, and the rest stay queued for
    a process with room (its polls no longer take each through arq's start and end)."""
    _, sessions = db
    await seed(sessions, [None], per_channel=30)
    first = workers.start(argv, WORKER_CONCURRENCY="20", SIMULATED_STAGE_SECONDS="0.5")
    first_id = await first.started()
    assert await wakeups.wake(arq_pool, 30, queue_name=queue) == 30

    async def stage_done() -> bool:      # by then every slot is busy, and arq polled since
        return any(e.actor == first_id and e.to_status is TaskStatus.assets_ready
                   for e in await events(sessions))

    await eventually(stage_done, timeout_s=30, what="a stage of the first worker done")
    entries = await arq_pool.zcard(queue)
    held = await jobs_in_progress(arq_pool, queue)
    assert 1 <= len(held) <= 10, f"{len(held)} wake-ups held by a process of 20 busy slots"
    assert await wakeups.pending(arq_pool, queue_name=queue) == entries - len(held) >= 20

    second = workers.start(argv, WORKER_CONCURRENCY="20", SIMULATED_STAGE_SECONDS="0.5")
    second_id = await second.started()
    await wait_published(sessions, 30, timeout_s=90)
    claimers = {e.actor for e in await events(sessions) if e.to_status is TaskStatus.claimed}
    assert claimers == {first_id, second_id}    # a queued wake-up brought the second in


@pytest.mark.parametrize("argv", [PIPELINE_WORKER, ARQ_WORKER], ids=["pipeline", "arq-cli"])
async def test_a_busy_worker_still_sweeps(
    db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str,
    argv: tuple[str, ...],
) -> None:
    """A worker whose every slot is busy, with more wake-ups than it can run, still sweeps
    every ``SWEEP_INTERVAL_SECONDS``: the task of a worker that died is reaped within seconds
    of its lease's end, not once the backlog is done. (arq runs a cron job only in a free job
    slot, and wake-ups waiting for a claim slot hold them all.)"""
    _, sessions = db
    [orphan] = await seed(sessions, [None], per_channel=1, title="Orphan")
    async with sessions() as session, session.begin():
        dead = await claims.claim_next(session, worker_id="worker-dead", lease_s=4,
                                       now=transitions.utcnow())
    assert dead is not None and dead.task_id == orphan
    backlog = await seed(sessions, [None, None], per_channel=15)     # about 25 s of stages
    worker = workers.start(argv, WORKER_CONCURRENCY="2", SIMULATED_STAGE_SECONDS="0.2")
    await worker.started()
    await wakeups.wake_url(redis_url, 8, queue_name=queue)

    async def reaped() -> bool:
        return any(e.actor.startswith("reaper:") for e in await events(sessions, orphan))

    await eventually(reaped, timeout_s=15, what="the dead worker's task reaped")
    assert await count(sessions, TaskStatus.published) < len(backlog), "the backlog ran out"


# --- Redis restarted -------------------------------------------------------------------------


async def test_redis_restarts_survived_by_pipeline_worker(
    db: tuple[str, Sessions], own_redis: OwnServer, workers_on_own_redis: Workers,
) -> None:
    """A quick Redis restart is bridged by command retries, by ``pipeline worker`` and by
    the Procfile's ``arq workers.settings.WorkerSettings`` alike. A longer outage ends arq's
    Worker: the arq CLI process exits, while ``pipeline worker`` starts a new Worker once
    Redis is back (and still stops cleanly on SIGTERM while Redis is gone). Redis comes back
    empty each time; the sweep re-creates the wake-ups."""
    _, sessions = db
    procs = workers_on_own_redis
    env = {"SIMULATED_STAGE_SECONDS": "0.05", "WORKER_CONCURRENCY": "2"}
    pipeline = procs.start(**env)
    procfile = procs.start(ARQ_WORKER, **env)
    stopped = procs.start(**env)
    await pipeline.started()
    await stopped.started()
    await procfile.wait_for_line("Starting worker for")
    await seed(sessions, [None], per_channel=4)
    await wait_published(sessions, 4, timeout_s=60)

    own_redis.stop()
    own_redis.start()                                   # quick: bridged by command retries
    await seed(sessions, [None], per_channel=4)
    await wait_published(sessions, 8, timeout_s=60)
    assert pipeline.alive and procfile.alive and stopped.alive

    own_redis.stop()                                    # long: until the Workers died of it
    await pipeline.wait_for_line("worker lost Redis", timeout_s=60)
    await stopped.wait_for_line("worker lost Redis", timeout_s=60)
    stopped.proc.terminate()
    assert await stopped.exited(timeout_s=10) == 0
    assert await procfile.exited(timeout_s=60) != 0
    own_redis.start()
    await seed(sessions, [None], per_channel=4)
    await wait_published(sessions, 12, timeout_s=90)
    assert pipeline.alive
    assert len(pipeline.worker_ids()) >= 2              # a new Worker, same process
    pipeline.proc.terminate()
    assert await pipeline.exited(timeout_s=30) == 0


async def test_wake_ups_are_the_jobs_enqueue_job_writes(arq_pool: ArqRedis, queue: str) -> None:
    """``wakeups.wake`` writes its jobs in one transaction, without ``enqueue_job``: each is
    still the ``work`` job arq reads, queued now, its record kept as long as arq keeps one."""
    assert await wakeups.wake(arq_pool, 0, queue_name=queue) == 0
    before = int(time.time() * 1000)
    assert await wakeups.wake(arq_pool, 3, queue_name=queue) == 3
    queued = await arq_pool.queued_jobs(queue_name=queue)
    assert len(queued) == 3 and len({job.job_id for job in queued}) == 3
    for job in queued:
        assert job.job_id is not None and job.job_id.startswith("wake:")
        assert job.function == wakeups.WORK_JOB and job.args == () and job.kwargs == {}
        assert job.score is not None and before <= job.score <= int(time.time() * 1000)
        ttl = await arq_pool.pttl(job_key_prefix + job.job_id)
        assert arq_pool.expires_extra_ms - 60_000 < ttl <= arq_pool.expires_extra_ms
    assert await wakeups.pending(arq_pool, queue_name=queue) == 3


def test_wake_ups_wanted_for_runnable_tasks() -> None:
    """One wake-up per runnable task, at most ``PER_SLOT`` per slot of a worker process."""
    assert [wakeups.wanted(n, 10) for n in (-1, 0, 1, 39, 40, 41, 4000)] == \
        [0, 0, 1, 39, 40, 40, 40]
    assert wakeups.wanted(4000, 100) == 100 * wakeups.PER_SLOT
