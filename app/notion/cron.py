"""The Notion sync in the workers (``NOTION_SYNC_IN_WORKER=true``).

A round runs on the workers' periodic timers (``app.execution.periodic``), which let one
worker run each tick. A round longer than the interval would still overlap the next tick on
another worker, so a Redis lock (``SET NX`` with an expiry, released by its owner) keeps rounds
one at a time.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable
from typing import Any, cast

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.errors import NotionUnavailable
from app.execution import wakeups
from app.notion import client
from app.notion.sync import sync_once

LOCK_KEY = "pipeline:notion-sync:lock"
#: Upper bound of one round in a worker (its timeout and the lock's expiry).
ROUND_TIMEOUT_S = 600

log = logging.getLogger("app.notion")

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


async def sync_round(settings: Settings, sessions: async_sessionmaker[AsyncSession],
                     redis: ArqRedis) -> dict[str, Any] | None:
    """One sync round unless another worker holds the lock; returns its counts (or None)."""
    owner = uuid.uuid4().hex
    if not await redis.set(LOCK_KEY, owner, nx=True, ex=ROUND_TIMEOUT_S):
        log.info("notion sync: a round is already running elsewhere")
        return None
    try:
        async with client.connect(settings) as notion:
            summary = await sync_once(
                sessions, notion, settings,
                wake=lambda n: _wake(redis, wakeups.wanted(n, settings.worker_concurrency),
                                     queue_name=settings.queue_name))
        return summary.counts()
    except NotionUnavailable as exc:
        log.warning("notion sync: %s; next round at the next tick", exc)
        return None
    finally:
        await cast(Awaitable[Any], redis.eval(_RELEASE, 1, LOCK_KEY, owner))


async def _wake(redis: ArqRedis, count: int, *, queue_name: str) -> None:
    await wakeups.wake(redis, count, queue_name=queue_name)
