"""``arq workers.settings.WorkerSettings``: the worker process definition.

Read at import by arq's CLI, so it reads settings but opens nothing; the engine and handlers
are built in ``on_startup``. Without ``REDIS_URL`` it points at the embedded Redis socket under
the data directory (start it with any ``pipeline`` command, or use ``pipeline worker``).
"""

from __future__ import annotations

from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.worker import func

from app import embedded
from app.config import Settings, get_settings
from app.execution import wakeups
from app.notion import cron as notion_cron
from workers import jobs


def _redis_url(settings: Settings) -> str:
    return settings.redis_url or f"unix://{embedded.default_data_dir() / 'redis' / 'redis.sock'}"


def _sweep_seconds(interval_s: float) -> set[int]:
    step = max(1, round(interval_s))
    return set(range(0, 60, step))


def worker_options(settings: Settings, *, burst: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker`` (shared by the CLI and ``pipeline worker``)."""
    options: dict[str, Any] = {
        "functions": [func(jobs.work, name=wakeups.WORK_JOB, timeout=settings.job_timeout_s,
                           max_tries=3)],
        "queue_name": settings.queue_name,
        "redis_settings": wakeups.redis_settings(_redis_url(settings)),
        "on_startup": jobs.startup,
        "on_shutdown": jobs.shutdown,
        "max_jobs": settings.worker_concurrency,
        "poll_delay": 0.05,
        "queue_read_limit": max(1000, settings.worker_concurrency * 10),
        "keep_result": 0,
        "job_completion_wait": settings.shutdown_grace_s,
        "health_check_interval": 30,
        "burst": burst,
    }
    if not burst:
        # Cron jobs keep a burst worker alive, so a burst worker sweeps once at start instead.
        options["cron_jobs"] = [cron(jobs.sweep, second=_sweep_seconds(settings.sweep_interval_s),
                                     run_at_startup=True, timeout=60)]
        if settings.notion_sync_in_worker:
            # One worker per tick (arq's cron job ids are unique per run time), one round at
            # a time (a Redis lock in the job).
            options["cron_jobs"].append(cron(
                jobs.sync_notion, second=_sweep_seconds(settings.notion_sync_interval_s),
                run_at_startup=True, timeout=notion_cron.ROUND_TIMEOUT_S))
    return options


_settings = get_settings()
_options = worker_options(_settings)


class WorkerSettings:
    """Attributes are read from the class ``__dict__`` by arq: keep them flat, no base class."""

    functions = _options["functions"]
    cron_jobs = _options["cron_jobs"]
    queue_name: str = _options["queue_name"]
    redis_settings: RedisSettings = _options["redis_settings"]
    on_startup = _options["on_startup"]
    on_shutdown = _options["on_shutdown"]
    max_jobs: int = _options["max_jobs"]
    poll_delay: float = _options["poll_delay"]
    queue_read_limit: int = _options["queue_read_limit"]
    keep_result: int = _options["keep_result"]
    job_completion_wait: int = _options["job_completion_wait"]
    health_check_interval: int = _options["health_check_interval"]
