"""What every admin command shares: the database, the actor, output and wake-ups.

A command opens one ``Context`` (one engine, disposed at the end), runs each service call in its
own short transaction, and prints either aligned tables or, with ``--json``, one JSON document.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from arq.connections import RedisSettings, create_pool
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import embedded, servers
from app.commands import batches
from app.config import Settings
from app.db import make_engine, make_sessionmaker, migrate
from app.errors import PipelineError
from app.execution import wakeups

T = TypeVar("T")
R = TypeVar("R")


class NotMigrated(PipelineError):
    """The database is not at the latest migration."""


@dataclass
class Context:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    as_json: bool
    #: Recorded in ``task_events.actor`` for operator actions: ``cli:<login name>``.
    actor: str

    def emit(self, data: Any, human: str) -> None:
        """Print ``data`` as JSON with ``--json``, else the human rendering."""
        print(json.dumps(data, indent=2, default=str) if self.as_json else human)

    def redis_url(self) -> str | None:
        """``REDIS_URL``, or the embedded Redis while it runs (None: no Redis, so no worker)."""
        return self.settings.redis_url or _running_embedded_redis()

    async def wake(self, count: int) -> None:
        """Wake idle workers after a commit made ``count`` tasks runnable.

        Best effort: without Redis the workers' sweep finds the tasks within
        ``SWEEP_INTERVAL_SECONDS``, so a failure is a warning, never an error.
        """
        if count <= 0:
            return
        url = self.redis_url()
        if url is None:      # the embedded Redis is not running, so no worker is either
            return
        redis_settings = RedisSettings.from_dsn(url)
        redis_settings.conn_retries = 0
        redis_settings.conn_timeout = 2
        try:
            redis = await create_pool(redis_settings)
            try:
                await wakeups.wake(redis, wakeups.wanted(count, self.settings.worker_concurrency),
                                   queue_name=self.settings.queue_name)
            finally:
                await redis.aclose()
        except wakeups.REDIS_GONE as exc:
            warn(f"workers not woken ({exc}); their sweep will find the tasks")


    async def each(self, items: Sequence[T], step: Callable[[AsyncSession, T], Awaitable[R]],
                   *, label: str, chunk: int,
                   contained: bool = False) -> list[tuple[T, R | PipelineError]]:
        """``batches.run_in_chunks`` on this command's database."""
        return await batches.run_in_chunks(self.sessions, items, step, label=label,
                                           chunk=chunk, contained=contained)


def warn(message: str) -> None:
    print(f"pipeline: warning: {message}", file=sys.stderr)


def _running_embedded_redis() -> str | None:
    socket = embedded.default_data_dir() / "redis" / "redis.sock"
    return f"unix://{socket}" if Path(socket).exists() else None


def operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


async def ready_database(settings: Settings) -> str:
    """The database URL, at the latest migration: the embedded default is migrated on the
    spot, a configured database must have been (``alembic upgrade head``, the release step)."""
    url = await servers.database_url(settings, migrated=True)
    if settings.database_url is None:
        return url         # migrated one process at a time, as a worker's start does
    current, head = await migrate.revisions(url)
    if current != head:
        raise NotMigrated(f"database is at migration {current or 'none'}, the code needs "
                          f"{head}: run `alembic upgrade head`")
    return url


@contextlib.asynccontextmanager
async def open_context(settings: Settings, *, as_json: bool) -> AsyncIterator[Context]:
    """One engine on the ready database, disposed at the end."""
    engine = make_engine(settings, await ready_database(settings))
    try:
        yield Context(settings, make_sessionmaker(engine), as_json, operator())
    finally:
        await engine.dispose()
