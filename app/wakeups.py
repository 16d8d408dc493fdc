"""Wake-ups: arq jobs that tell idle workers to claim. An optimisation, never the record.

Every wake-up is the same ``work`` job with a fresh job id (arq silently drops a reused id for
as long as its result is kept), so duplicated wake-ups only cost an empty claim and lost ones
are made up by the periodic sweep. Enqueue them after the commit that made work runnable.
"""

from __future__ import annotations

import time
import uuid

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix

WORK_JOB = "work"


def redis_settings(url: str) -> RedisSettings:
    """arq settings for ``redis://``, ``rediss://`` or ``unix://`` URLs, retrying blips."""
    settings = RedisSettings.from_dsn(url)
    settings.conn_retries = 10
    settings.retry_on_timeout = True
    return settings


async def wake(redis: ArqRedis, count: int, *, queue_name: str) -> int:
    """Enqueue ``count`` wake-ups; returns how many were enqueued."""
    enqueued = 0
    for _ in range(count):
        job = await redis.enqueue_job(WORK_JOB, _job_id=f"wake:{uuid.uuid4().hex}",
                                      _queue_name=queue_name)
        enqueued += job is not None
    return enqueued


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
