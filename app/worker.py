"""``pipeline worker``: one arq worker process on our settings (the Procfile's twin)."""

from __future__ import annotations

from arq.worker import Worker

from app import servers, wakeups
from app.config import Settings
from workers.settings import worker_options


async def run(settings: Settings, *, burst: bool) -> int:
    """Run an arq worker until it is stopped (or, with ``burst``, until nothing is runnable)."""
    await servers.database_url(settings)            # the embedded default, started if needed
    options = worker_options(settings, burst=burst)
    redis_url = servers.redis_url(settings)
    options["redis_settings"] = wakeups.redis_settings(redis_url)
    if burst:   # no sweep cron in burst mode: wake enough jobs to drain what is runnable
        await wakeups.wake_url(redis_url, settings.worker_concurrency,
                               queue_name=settings.queue_name)
    await Worker(**options).async_run()
    return 0
