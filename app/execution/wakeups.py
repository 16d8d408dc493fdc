"""Wake-ups: arq jobs that tell idle workers to claim. An optimisation, never the record.

Every wake-up is the same ``work`` job with a fresh job id (arq silently drops a reused id for
as long as its result is kept), so duplicated wake-ups only cost an empty claim and lost ones
are made up by the periodic sweep. Enqueue them after the commit that made work runnable.
"""

from __future__ import annotations

import time
import uuid

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import serialize_job
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

WORK_JOB = "work"
#: Wake-ups for newly runnable tasks, at most, per slot of a worker process
#: (``WORKER_CONCURRENCY``): a wake-up fills every free slot of the process that takes it, so
#: more would only wait in Redis; the sweep tops up what is missing.
PER_SLOT = 4
#: Errors of a Redis that went away (restart, failover, network). redis-py raises WatchError
#: for a connection lost inside a WATCH block and ReadOnlyError while a failover demotes the
#: server it talks to.
REDIS_GONE = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.WatchError,
              redis_errors.ReadOnlyError, OSError)


def redis_settings(url: str) -> RedisSettings:
    """arq settings for ``redis://``, ``rediss://`` or ``unix://`` URLs, retrying blips.

    Every command is retried on a lost connection, including one that cannot be re-opened
    (``OSError``: refused, socket gone), so a Redis restart of up to about three seconds goes
    unnoticed, by the arq CLI's worker too. A longer outage ends an arq worker's main loop;
    ``pipeline worker`` then starts a new one (``workers.supervisor``).
    """
    settings = RedisSettings.from_dsn(url)
    settings.conn_retries = 10
    settings.retry_on_timeout = True
    settings.retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 3)
    settings.retry_on_error = [redis_errors.ConnectionError, redis_errors.TimeoutError, OSError]
    return settings


def wanted(runnable: int, worker_concurrency: int) -> int:
    """How many wake-ups ``runnable`` tasks made runnable call for: one each, at most
    ``PER_SLOT`` per slot of a worker process. The commands, the HTTP API, the Notion sync and
    the sweep ask here (the demo, which starts its own few workers, wakes one per task)."""
    return max(0, min(runnable, worker_concurrency * PER_SLOT))


async def wake(redis: ArqRedis, count: int, *, queue_name: str) -> int:
    """Enqueue ``count`` wake-ups, all in one round trip and one transaction; returns how
    many were enqueued.

    Each is the job ``ArqRedis.enqueue_job`` writes (its record, then its queue entry), without
    that method's check for a job id already in use: these ids are new. One by one, with two
    round trips each, 400 wake-ups took 0.2 s; together, 6 ms."""
    if count <= 0:
        return 0
    now_ms = int(time.time() * 1000)
    job = serialize_job(WORK_JOB, (), {}, None, now_ms, serializer=redis.job_serializer)
    ids = [f"wake:{uuid.uuid4().hex}" for _ in range(count)]
    async with redis.pipeline(transaction=True) as pipe:
        for job_id in ids:
            pipe.psetex(job_key_prefix + job_id, redis.expires_extra_ms, job)
        pipe.zadd(queue_name, dict.fromkeys(ids, now_ms))
        await pipe.execute()
    return count


async def pending(redis: ArqRedis, *, queue_name: str, limit: int = 1000) -> int:
    """Wake-ups waiting to be picked up. Jobs still marked in progress are not counted: a job
    whose worker was SIGKILLed keeps its in-progress key (and its queue entry) until arq's
    largest job timeout passes, and must not hide runnable work from the sweep."""
    now_ms = int(time.time() * 1000)     # deferred entries (cron jobs) are not wake-ups yet
    ids = await redis.zrangebyscore(queue_name, "-inf", now_ms, start=0, num=limit)
    if not ids:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.exists(in_progress_key_prefix + job_id.decode())
        running = await pipe.execute()
    return sum(1 for flag in running if not flag)


async def wake_url(url: str, count: int, *, queue_name: str) -> int:
    """``wake`` for entry points that hold no pool (CLI commands, the sync)."""
    redis = await create_pool(redis_settings(url))
    try:
        return await wake(redis, count, queue_name=queue_name)
    finally:
        await redis.aclose()
