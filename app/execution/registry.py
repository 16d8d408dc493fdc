"""The live workers: each worker process keeps a record in Redis that expires unless renewed.

A worker writes its record when it starts and again every ``WORKER_HEARTBEAT_SECONDS``; the
record lives three heartbeats, so a worker that is killed or hangs drops out on its own and a
graceful stop removes it at once. The tasks a worker holds are read from PostgreSQL (the row
is the truth), not from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import datetime

from redis.asyncio import Redis

from app.execution.wakeups import REDIS_GONE
from app.moves import utcnow

log = logging.getLogger("workers")
#: A record outlives this many missed heartbeats.
LIVES = 3


@dataclass(frozen=True)
class WorkerRecord:
    id: str
    host: str
    pid: int
    started: str
    last_heartbeat: str
    concurrency: int

    @property
    def heartbeat_at(self) -> datetime:
        return datetime.fromisoformat(self.last_heartbeat)


def key(queue_name: str, worker_id: str = "*") -> str:
    return f"{queue_name}:workers:{worker_id}"


async def announce(redis: Redis, queue_name: str, record: WorkerRecord, *,
                   heartbeat_s: float) -> None:
    await redis.set(key(queue_name, record.id), json.dumps(asdict(record)),
                    px=max(1, int(heartbeat_s * LIVES * 1000)))


async def retire(redis: Redis, queue_name: str, worker_id: str) -> None:
    await redis.delete(key(queue_name, worker_id))


async def live(redis: Redis, queue_name: str) -> list[WorkerRecord]:
    """The workers whose record has not expired, oldest first."""
    names = [name async for name in redis.scan_iter(match=key(queue_name), count=500)]
    values = await redis.mget(names) if names else []
    found = [WorkerRecord(**json.loads(value)) for value in values if value is not None]
    return sorted(found, key=lambda r: (r.started, r.id))


@contextlib.asynccontextmanager
async def heartbeat(redis: Redis, queue_name: str, worker_id: str, *, concurrency: int,
                    every_s: float) -> AsyncIterator[None]:
    """Keep this process's record alive while the block runs; remove it at the end."""
    started = utcnow().isoformat()

    def record() -> WorkerRecord:
        return WorkerRecord(worker_id, socket.gethostname(), os.getpid(), started,
                            utcnow().isoformat(), concurrency)

    async def beat() -> None:
        while True:
            try:
                await announce(redis, queue_name, record(), heartbeat_s=every_s)
            except REDIS_GONE as exc:           # Redis away: the record expires
                log.warning("registry: heartbeat not written (%s)", exc)
            await asyncio.sleep(every_s)

    task = asyncio.create_task(beat(), name=f"registry:{worker_id}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(*REDIS_GONE):
            await retire(redis, queue_name, worker_id)
