"""``pipeline workers``: the live worker processes and the tasks each holds now."""

from __future__ import annotations

import argparse
from datetime import datetime

import sqlalchemy as sa
from redis.asyncio import Redis

from app.commands import tables
from app.commands.context import Context
from app.db import session_scope
from app.db.models import Task
from app.errors import PipelineError
from app.execution import registry, wakeups
from app.moves import utcnow
from app.services import tasks

HEADERS = ("worker", "host", "pid", "started", "last heartbeat", "holds")


class RegistryUnavailable(PipelineError):
    """Redis, where workers register, cannot be read."""


async def live_workers(ctx: Context) -> list[tuple[registry.WorkerRecord, int]]:
    """The live workers, oldest first, each with how many tasks it holds now (a claim
    token set in its name). ``RegistryUnavailable`` when Redis cannot be read."""
    url = ctx.redis_url()
    records: list[registry.WorkerRecord] = []
    if url is not None:
        client = Redis.from_url(url, socket_connect_timeout=2)
        try:
            records = await registry.live(client, ctx.settings.queue_name)
        except wakeups.REDIS_GONE as exc:
            raise RegistryUnavailable(f"the worker registry (Redis) cannot be read: {exc}") \
                from None
        finally:
            await client.aclose()
    async with session_scope(ctx.sessions) as session:
        held = dict((await session.execute(
            sa.select(Task.claimed_by, sa.func.count())
            .where(tasks.HELD)
            .group_by(Task.claimed_by))).tuples().all())
    return [(record, held.get(record.id, 0)) for record in records]


async def list_(ctx: Context, args: argparse.Namespace) -> int:
    found = await live_workers(ctx)
    now = utcnow()
    data = [{**record.__dict__, "holds": holds} for record, holds in found]
    rows = [(r.id, r.host, r.pid, _when(r.started), f"{_age(r.heartbeat_at, now)} ago", holds)
            for r, holds in found]
    ctx.emit(data, tables.render(HEADERS, rows) if rows else "no live workers")
    return 0


def _when(iso: str) -> str:
    return f"{datetime.fromisoformat(iso):%Y-%m-%d %H:%M:%S}"


def _age(then: datetime, now: datetime) -> str:
    return f"{max(0.0, (now - then).total_seconds()):.1f}s"
