"""arq job functions and lifecycle hooks: wiring only, the logic lives in ``app``.

``work`` is a wake-up: it runs claim loops in the process's free slots, each taking tasks back
to back while work is claimable (``app.execution.slots``); every start of a stage is a guarded
transition, so duplicated, lost or re-run jobs change nothing.
``sweep`` reaps expired leases, moves on tasks a stopped runner left at an automatic step, and
wakes workers for runnable tasks whose wake-up was lost. While PostgreSQL is unavailable both
log one line and return: leases and the next sweep make up for whatever was not written.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis

from app import logs, servers
from app.config import Settings, get_settings
from app.db import (
    describe,
    is_unavailable,
    make_engine,
    make_pool,
    make_sessionmaker,
    require_postgresql,
    session_scope,
)
from app.execution import periodic, registry, wakeups
from app.execution.periodic import Periodic
from app.execution.runner import Runner
from app.execution.slots import Slots
from app.handlers import load_registry
from app.notion import cron as notion_cron
from app.observability import endpoint, instruments
from app.services import claims, quotas, transitions
from workers import signals

log = logging.getLogger("workers")
Ctx = dict[str, Any]
#: Upper bound of one sweep.
SWEEP_TIMEOUT_S = 60


async def startup(ctx: Ctx, *, timers: bool = True) -> None:
    """The process's connections, runner and claim slots; its registry heartbeat; and, unless
    ``timers`` is off (a burst), the timers of its periodic jobs (``periodic``)."""
    settings = get_settings()
    # Under the Procfile's arq CLI too: LOG_LEVEL and LOG_FORMAT, and the workers' INFO lines.
    logs.configure(level=settings.log_level, fmt=settings.log_format, default=logging.INFO)
    url = require_postgresql(await servers.database_url(settings))
    engine = make_engine(settings, url)
    handlers = load_registry(settings.stage_handlers, simulated_s=settings.simulated_stage_s)
    ctx["engine"] = engine
    # Each running job uses at most one connection at a time, plus its stage's heartbeat.
    ctx["pool"] = pool = make_pool(settings, url, max_size=2 * settings.worker_concurrency + 1)
    ctx["runner"] = runner = Runner(settings, make_sessionmaker(engine), handlers, pool)
    ctx["slots"] = Slots(runner, settings.worker_concurrency, _surplus(ctx, settings.queue_name),
                         job_budget_s=settings.job_timeout_s / 2)
    signals.install_over_arq(ctx, grace_s=settings.shutdown_grace_s)
    if "worker" in ctx:                     # how many wake-ups arq takes follows the slots
        ctx["slots"].admit_through(ctx["worker"])
    ctx["registry"] = stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(registry.heartbeat(
        ctx["redis"], settings.queue_name, ctx["runner"].worker_id,
        concurrency=settings.worker_concurrency, every_s=settings.worker_heartbeat_s))
    if timers:
        stack.push_async_callback(periodic.start(ctx, ctx["redis"], settings.queue_name,
                                                 periodic_jobs(settings)).aclose)
    endpoint.serve(settings.metrics_port)
    log.info("worker %s started", ctx["runner"].worker_id)


def periodic_jobs(settings: Settings) -> list[Periodic]:
    """The periodic jobs of a worker process: the sweep, and the Notion sync where
    ``NOTION_SYNC_IN_WORKER`` is set; each also runs when the process starts. On timers of
    their own, not as arq cron jobs: a busy worker soon holds every arq job slot
    (``app.execution.periodic``)."""
    jobs = [Periodic("sweep", settings.sweep_interval_s, sweep, timeout_s=SWEEP_TIMEOUT_S,
                     at_start=True)]
    if settings.notion_sync_in_worker:
        # One worker per tick; one round at a time (a Redis lock in the job).
        jobs.append(Periodic("sync_notion", settings.notion_sync_interval_s, sync_notion,
                             timeout_s=notion_cron.ROUND_TIMEOUT_S, at_start=True))
    return jobs


async def shutdown(ctx: Ctx) -> None:
    if "registry" in ctx:
        await ctx["registry"].aclose()
    if "pool" in ctx:
        await ctx["pool"].close()
    if "engine" in ctx:
        await ctx["engine"].dispose()


async def work(ctx: Ctx) -> int:
    """A wake-up: claim loops in this process's free slots, tasks back to back while work is
    claimable (``app.execution.slots``); how many tasks they ran."""
    slots: Slots = ctx["slots"]
    return await slots.work()


def _surplus(ctx: Ctx, queue: str) -> Callable[[], Awaitable[None]]:
    """Wake another process for work this one has no free slot for, unless a wake-up already
    waits in Redis."""
    async def surplus() -> None:
        redis: ArqRedis = ctx["redis"]
        try:
            if not await wakeups.pending(redis, queue_name=queue, limit=1):
                await wakeups.wake(redis, 1, queue_name=queue)
        except wakeups.REDIS_GONE as exc:     # an optimisation: the sweep makes up for it
            log.warning("work: wake-up not sent (%s)", describe(exc))
    return surplus


async def sweep(ctx: Ctx) -> dict[str, int]:
    """Reap expired leases, move on stranded tasks, clean quota buckets whose window passed; top
    the queue up to one wake-up per runnable task (bounded: a task waiting for a quota is not
    runnable, so it wakes a worker once its slot frees)."""
    runner: Runner = ctx["runner"]
    s = runner.settings
    now = transitions.utcnow()
    try:
        async with session_scope(runner.sessions) as session:
            reaped = await claims.reap_expired(session, now=now,
                                               actor=f"reaper:{runner.worker_id}",
                                               max_attempts=s.stage_max_attempts,
                                               backoff_s=s.retry_backoff_s)
            moved = await claims.advance_stranded(session, now=now,
                                                  auto_approved=s.auto_approved,
                                                  stranded_s=s.lease_s, actor=runner.worker_id)
            runnable = await claims.runnable_count(session, now=now)
            await quotas.clean(session)
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        log.warning("sweep: database unavailable (%s)", describe(exc))
        return {"reaped": 0, "moved": 0, "runnable": 0, "woken": 0}
    instruments.reaped(reaped)
    redis: ArqRedis = ctx["redis"]
    waiting = await wakeups.pending(redis, queue_name=s.queue_name)
    wanted = wakeups.wanted(runnable, s.worker_concurrency) - waiting
    woken = await wakeups.wake(redis, wanted, queue_name=s.queue_name) if wanted > 0 else 0
    if reaped or moved or woken:
        log.info("sweep: reaped %d, moved %d, runnable %d, woke %d", len(reaped), moved,
                 runnable, woken)
    return {"reaped": len(reaped), "moved": moved, "runnable": runnable, "woken": woken}


async def sync_notion(ctx: Ctx) -> dict[str, Any] | None:
    """One Notion sync round (``NOTION_SYNC_IN_WORKER``); skipped while another runs."""
    runner: Runner = ctx["runner"]
    return await notion_cron.sync_round(runner.settings, runner.sessions, ctx["redis"])
