"""arq job functions and lifecycle hooks: wiring only, the logic lives in ``app``.

``work`` claims one task and runs it as far as it goes, then wakes the next ``work`` job; every
start of a stage is a guarded transition, so duplicated, lost or re-run jobs change nothing.
``sweep`` reaps expired leases and wakes workers for runnable tasks whose wake-up was lost.
"""

from __future__ import annotations

import logging
from typing import Any

from arq.connections import ArqRedis

from app import servers, wakeups
from app.config import get_settings
from app.db import make_engine, make_sessionmaker, session_scope
from app.handlers import load_registry
from app.notion import cron as notion_cron
from app.runner import Runner
from app.services import claims, transitions

log = logging.getLogger("workers")
Ctx = dict[str, Any]


async def startup(ctx: Ctx) -> None:
    settings = get_settings()
    engine = make_engine(settings, await servers.database_url(settings))
    handlers = load_registry(settings.stage_handlers, simulated_s=settings.simulated_stage_s)
    ctx["engine"] = engine
    ctx["runner"] = Runner(settings, make_sessionmaker(engine), handlers)
    log.info("worker %s started", ctx["runner"].worker_id)


async def shutdown(ctx: Ctx) -> None:
    if "engine" in ctx:
        await ctx["engine"].dispose()


async def work(ctx: Ctx) -> str | None:
    """Claim and run one task; if one was claimed, more may be waiting: wake the next job."""
    runner: Runner = ctx["runner"]
    task_id = await runner.run_next()
    if task_id is None:
        return None
    redis: ArqRedis = ctx["redis"]
    await wakeups.wake(redis, 1, queue_name=runner.settings.queue_name)
    return str(task_id)


async def sweep(ctx: Ctx) -> dict[str, int]:
    """Reap expired leases; top the queue up to one wake-up per runnable task (bounded)."""
    runner: Runner = ctx["runner"]
    s = runner.settings
    now = transitions.utcnow()
    async with session_scope(runner.sessions) as session:
        reaped = await claims.reap_expired(session, now=now, actor=f"reaper:{runner.worker_id}",
                                           max_attempts=s.stage_max_attempts,
                                           backoff_s=s.retry_backoff_s)
        runnable = await claims.runnable_count(session, now=now)
    redis: ArqRedis = ctx["redis"]
    waiting = await wakeups.pending(redis, queue_name=s.queue_name)
    wanted = min(runnable, s.worker_concurrency * 4) - waiting
    woken = await wakeups.wake(redis, wanted, queue_name=s.queue_name) if wanted > 0 else 0
    if reaped or woken:
        log.info("sweep: reaped %d, runnable %d, woke %d", len(reaped), runnable, woken)
    return {"reaped": len(reaped), "runnable": runnable, "woken": woken}


async def sync_notion(ctx: Ctx) -> dict[str, Any] | None:
    """One Notion sync round (``NOTION_SYNC_IN_WORKER``); skipped while another runs."""
    runner: Runner = ctx["runner"]
    return await notion_cron.sync_round(runner.settings, runner.sessions, ctx["redis"])
