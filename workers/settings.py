"""``arq workers.settings.WorkerSettings``: the worker process definition.

``worker_options`` is shared by arq's CLI and ``pipeline worker``. Importing this module opens
nothing; ``WorkerSettings`` is built when first read (a module ``__getattr__``), which arq's CLI
does just before it runs the worker. On the embedded default that is where the worker starts or
joins both servers, as ``pipeline worker`` does: arq connects to Redis before any start-up hook
runs, so ``on_startup`` would be too late. The process stays a user of both servers until it
exits; when they cannot be started it says why in one line and exits with status 2.
"""

from __future__ import annotations

import logging
import sys
from functools import partial
from typing import Any, NoReturn

from arq.worker import func
from pydantic import ValidationError

from app import embedded, logs, servers
from app.config import Settings, get_settings
from app.embedded import EmbeddedError
from app.execution import wakeups
from app.schemas import field_errors
from workers import jobs


async def startup(ctx: jobs.Ctx, *, timers: bool = True) -> None:
    """The embedded default's database is brought to the latest migration first, as admin
    commands do (a configured one is the release step's); then the worker's own start-up."""
    await servers.database_url(get_settings(), migrated=True)
    await jobs.startup(ctx, timers=timers)


def worker_options(settings: Settings, *, redis_url: str | None = None,
                   burst: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker`` (shared by the CLI and ``pipeline worker``).

    ``redis_url`` defaults to ``REDIS_URL`` or the embedded Redis socket, started or not."""
    if redis_url is None:
        socket = embedded.default_data_dir() / "redis" / "redis.sock"
        redis_url = settings.redis_url or f"unix://{socket}"
    return {
        "functions": [func(jobs.work, name=wakeups.WORK_JOB, timeout=settings.job_timeout_s,
                           max_tries=3)],
        "queue_name": settings.queue_name,
        "redis_settings": wakeups.redis_settings(redis_url),
        # A burst ends when nothing is left to claim: no timers (a burst worker is woken by
        # ``pipeline worker --burst`` itself, see ``workers.supervisor``).
        "on_startup": partial(startup, timers=False) if burst else startup,
        "on_shutdown": jobs.shutdown,
        # At most one job per slot; below that, the process's slots steer it as they fill and
        # free (``Slots._admit``): one more job than it holds while a slot is free.
        "max_jobs": settings.worker_concurrency,
        "poll_delay": 0.05,
        "queue_read_limit": max(1000, settings.worker_concurrency * 10),
        "keep_result": 0,
        "job_completion_wait": settings.shutdown_grace_s,
        "health_check_interval": 30,
        "burst": burst,
    }


def __getattr__(name: str) -> dict[str, Any]:
    """``WorkerSettings``: arq reads a dict of ``Worker`` keyword arguments as it reads a
    class. Built once, on first read."""
    if name != "WorkerSettings":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    options = _arq_cli_options()
    globals()[name] = options
    return options


def _arq_cli_options() -> dict[str, Any]:
    try:
        settings = get_settings()
    except ValidationError as exc:
        _exit("configuration: " + "; ".join(f"{field.upper()}: {message}"
                                            for field, message in field_errors(exc)))
    logs.configure(level=settings.log_level, fmt=settings.log_format, default=logging.INFO)
    logs.defer_to_arq_cli()
    try:
        redis_url = servers.start_for_worker(settings)
    except EmbeddedError as exc:
        _exit(str(exc))
    return worker_options(settings, redis_url=redis_url)


def _exit(message: str) -> NoReturn:
    """One line on stderr, as ``pipeline worker`` says it, and no traceback."""
    print(f"pipeline: {message}", file=sys.stderr)
    raise SystemExit(2)
