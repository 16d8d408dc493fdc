"""``pipeline worker``: one arq worker process on our settings (the Procfile's twin) that
outlives Redis outages.

arq's Worker dies when a Redis command fails for good (its main loop catches no connection
error, python-arq/arq#498); the command retries of ``wakeups.redis_settings`` only bridge a few
seconds. Here a Worker that died of a Redis error is replaced by a new one after a backoff:
its running jobs finish first (their stages write to PostgreSQL, not Redis), and the new
Worker's start-up sweep re-creates whatever wake-ups Redis lost. SIGINT and SIGTERM stop the
process cleanly at any point: arq's handler while a Worker runs (running stages get
``SHUTDOWN_GRACE_SECONDS``), ours in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from arq.worker import Worker

from app import servers
from app.config import Settings
from app.db import describe, make_engine, make_sessionmaker, require_postgresql, session_scope
from app.execution import wakeups
from app.lifecycle import GATES
from app.services import stats, transitions
from workers import signals
from workers.settings import worker_options

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run(settings: Settings, *, burst: bool) -> int:
    """Run arq workers until stopped (or, with ``burst``, until nothing is runnable)."""
    url = require_postgresql(await servers.database_url(settings))
    # Embedded: started or joined, this process a user of both until it exits.
    redis_url = servers.start_for_worker(settings)
    options = worker_options(settings, redis_url=redis_url, burst=burst)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    pause_s = BACKOFF_FIRST_S
    try:
        _handle_signals(stop)       # re-installed by ``_run_once`` after each Worker
        while True:
            started = loop.time()
            error = await _run_once(options, stop, redis_url=redis_url, settings=settings)
            if error is None and burst and not stop.is_set():
                await _left_behind(settings, url)
            if error is None or stop.is_set():
                return 0
            if loop.time() - started > BACKOFF_MAX_S:
                pause_s = BACKOFF_FIRST_S            # it ran a while: a new outage
            log.warning("worker lost Redis (%s); starting a new worker in %.1f s",
                        describe(error), pause_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause_s)
            if stop.is_set():
                return 0
            pause_s = min(pause_s * 2, BACKOFF_MAX_S)
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)


async def _left_behind(settings: Settings, url: str) -> None:
    """A burst is done: say what it leaves for later or for a person, in one line."""
    engine = make_engine(settings, url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            found = await stats.collect(session, now=transitions.utcnow())
    finally:
        await engine.dispose()
    by_status = found.by_status()
    gates = sum(by_status.get(gate.waiting, 0) for gate in GATES)
    later = ""
    if found.next_retry_at is not None:
        later = f" (next in {(found.next_retry_at - transitions.utcnow()).total_seconds():.0f} s)"
    reasons = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in found.blocked.items())
    blocked = f"{sum(found.blocked.values())} blocked" + (f" ({reasons})" if reasons else "")
    log.info("burst done; left behind: %d retrying later%s, %d out of attempts, %d waiting at "
             "review gates, %s, %d runnable", found.retrying, later,
             found.out_of_attempts, gates, blocked, found.runnable)


def _handle_signals(stop: asyncio.Event) -> None:
    """Between Workers (and after one died) a signal just asks the loop to stop; a running
    Worker installs arq's own handlers over these."""
    loop = asyncio.get_running_loop()
    for signum in _SIGNALS:
        loop.add_signal_handler(signum, stop.set)


async def _run_once(options: dict[str, Any], stop: asyncio.Event, *, redis_url: str,
                    settings: Settings) -> BaseException | None:
    """Run one arq Worker until it ends; return the Redis error that ended it, or None when
    it was stopped (or a burst is done). Any other error propagates."""
    if options["burst"]:
        # No periodic sweep in burst mode: wake enough jobs to drain what is runnable.
        try:
            await wakeups.wake_url(redis_url, settings.worker_concurrency,
                                   queue_name=settings.queue_name)
        except wakeups.REDIS_GONE as exc:
            return exc
    worker = Worker(**options)
    worker.ctx["worker"] = worker
    signals.install(worker, grace_s=options["job_completion_wait"])
    worker.on_stop = lambda _signum: stop.set()
    worker.main_task = main = asyncio.create_task(worker.main())
    await asyncio.wait([main])
    _handle_signals(stop)                         # arq's handlers would act on a dead Worker
    error = None if main.cancelled() else main.exception()
    try:
        if error is not None and not isinstance(error, wakeups.REDIS_GONE):
            raise error
        return error
    finally:
        await _finish_jobs(worker, stop, grace_s=settings.shutdown_grace_s)
        await _close(worker, redis_alive=error is None)


async def _finish_jobs(worker: Worker, stop: asyncio.Event, *, grace_s: float) -> None:
    """Let the Worker's running jobs finish. Once a stop is asked for, they get ``grace_s``
    more and are then cancelled (the runner hands their stages back)."""
    jobs = [job for job in worker.tasks.values() if not job.done()]
    if not jobs:
        return
    finished: asyncio.Future[Any] = asyncio.gather(*jobs, return_exceptions=True)
    stopping: asyncio.Future[Any] = asyncio.create_task(stop.wait())
    await asyncio.wait([finished, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not finished.done():
        signals.stop_claiming(worker)
        await asyncio.wait([finished], timeout=grace_s)
        for job in jobs:
            job.cancel()
    await finished


async def _close(worker: Worker, *, redis_alive: bool) -> None:
    """What ``Worker.close`` does, without waiting on a Redis that is gone."""
    if worker.on_shutdown is not None:
        await worker.on_shutdown(worker.ctx)
    pool = worker.ctx.get("redis")
    if pool is None:
        return
    if redis_alive:
        with contextlib.suppress(*wakeups.REDIS_GONE):
            await pool.delete(worker.health_check_key)
    await pool.aclose(close_connection_pool=True)
