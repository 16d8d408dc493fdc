"""What every admin command shares: the database, the actor, output and wake-ups.

A command opens one ``Context`` (one engine, disposed at the end), runs each service call in its
own short transaction, and prints either aligned tables or, with ``--json``, one JSON document.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from arq.connections import RedisSettings, create_pool
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import embedded, servers
from app.commands.progress import Progress
from app.config import Settings
from app.db import (
    describe,
    is_unavailable,
    make_engine,
    make_sessionmaker,
    migrate,
    session_scope,
)
from app.errors import PipelineError
from app.execution import wakeups

T = TypeVar("T")
R = TypeVar("R")
#: The signals that stop a contained run (``Context.each``) between two items.
STOP_SIGNALS = (int(signal.SIGINT), int(signal.SIGTERM))
# asyncpg's errors as SQLAlchemy adapts them print as "<class 'asyncpg…Error'>: message".
_CLASS_PREFIX = re.compile(r"^<class '[\w.]+'>: ")


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

    async def wake(self, count: int) -> None:
        """Wake idle workers after a commit made ``count`` tasks runnable.

        Best effort: without Redis the workers' sweep finds the tasks within
        ``SWEEP_INTERVAL_SECONDS``, so a failure is a warning, never an error.
        """
        if count <= 0:
            return
        url = self.settings.redis_url or _running_embedded_redis()
        if url is None:      # the embedded Redis is not running, so no worker is either
            return
        redis_settings = RedisSettings.from_dsn(url)
        redis_settings.conn_retries = 0
        redis_settings.conn_timeout = 2
        try:
            redis = await create_pool(redis_settings)
            try:
                await wakeups.wake(redis, min(count, self.settings.worker_concurrency * 4),
                                   queue_name=self.settings.queue_name)
            finally:
                await redis.aclose()
        except wakeups.REDIS_GONE as exc:
            warn(f"workers not woken ({exc}); their sweep will find the tasks")


    async def each(self, items: Sequence[T], step: Callable[[AsyncSession, T], Awaitable[R]],
                   *, label: str, chunk: int,
                   contained: bool = False) -> list[tuple[T, R | PipelineError]]:
        """Run ``step`` on every item with a progress bar: ``chunk`` items per transaction,
        each in a savepoint, so a refused item (``PipelineError``) is rolled back alone and
        returned in place of its result while the others go on.

        ``contained`` (an import, where every item stands on its own) also makes a database
        error on one item that item's ``ItemRefused``, once its savepoint is rolled back on a
        connection that still works; and it turns a stop into ``Stopped``, which says how many
        items (a prefix of ``items``) were committed: SIGINT or SIGTERM (the first stops
        before the next item, a second cancels the one in flight; the chunk in progress is
        rolled back) or any failure midway, such as the database going away. Without it,
        signals and database errors propagate as they are.
        """
        outcomes: list[tuple[T, R | PipelineError]] = []
        progress = Progress(label, len(items))
        try:
            with _stop_requests(enabled=contained) as stop:
                for start in range(0, len(items), chunk):
                    part = _Chunk[T, R](items[start:start + chunk])
                    try:
                        await self._run_chunk(part, step, progress, stop, contained=contained)
                    except BaseException as exc:
                        if not contained or not _stops(exc, stop):
                            raise
                        raise _stopped(exc, stop, outcomes, part, committed=start) from exc
                    outcomes += part.outcomes
        finally:
            progress.close()
        return outcomes

    async def _run_chunk(self, part: _Chunk[T, R],
                         step: Callable[[AsyncSession, T], Awaitable[R]], progress: Progress,
                         stop: _StopRequest | None, *, contained: bool) -> None:
        """One transaction over ``part``; ``part.committing`` is set once its commit began."""
        async with session_scope(self.sessions) as session:
            for item in part.items:
                if stop is not None and stop.signal is not None:
                    raise _StopRequested
                part.outcomes.append((item, await _step_in_savepoint(
                    session, item, step, contained=contained)))
                progress.advance()
            part.committing = True


class ItemRefused(PipelineError):
    """The database refused this item; its savepoint was rolled back and the others went on."""


class Stopped(PipelineError):
    """The run stopped before every item was committed."""

    def __init__(self, reason: str, *, outcomes: list[tuple[Any, Any]], committed: int,
                 in_doubt: int, exit_code: int) -> None:
        #: The outcomes of the committed items, then the refusals met after them.
        self.outcomes = outcomes
        #: ``items[:committed]`` are committed; nothing after them is, except possibly the
        #: next ``in_doubt`` items (their refusals aside), whose commit was cut off.
        self.committed, self.in_doubt = committed, in_doubt
        #: 128 + the signal's number when stopped by a signal, else 1.
        self.exit_code = exit_code
        super().__init__(reason)


@dataclass
class _Chunk(Generic[T, R]):
    items: Sequence[T]
    outcomes: list[tuple[T, R | PipelineError]] = field(default_factory=list)
    committing: bool = False


class _StopRequested(Exception):
    """A stop was asked for between two items (raised inside the chunk to roll it back)."""


class _StopRequest:
    """SIGINT/SIGTERM during a contained run: the first asks it to stop before the next item;
    a second cancels the item in flight (a statement that hangs) and gives both signals back
    to the system, so that a third ends the process whatever it is waiting for."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.signal: int | None = None
        self.forced = False

    def __call__(self, signum: int) -> None:
        if self.signal is None:
            self.signal = signum
            return
        if self.task is not None and not self.forced:
            self.forced = True
            self.task.cancel()
            for each in STOP_SIGNALS:
                signal.signal(each, signal.SIG_DFL)


@contextlib.contextmanager
def _stop_requests(*, enabled: bool) -> Iterator[_StopRequest | None]:
    """Catch SIGINT and SIGTERM for the duration (where not ignored), then put back what was
    there (for SIGINT, ``asyncio.run``'s own handler)."""
    if not enabled:
        yield None
        return
    loop = asyncio.get_running_loop()
    request = _StopRequest(asyncio.current_task())
    installed: list[tuple[int, Any]] = []
    for signum in STOP_SIGNALS:
        previous = signal.getsignal(signum)
        if previous == signal.SIG_IGN:       # e.g. a background job: keep ignoring it
            continue
        try:
            loop.add_signal_handler(signum, request, signum)
        except (ValueError, RuntimeError):   # not the main thread
            continue
        installed.append((signum, previous))
    try:
        yield request
    finally:
        for signum, previous in installed:
            loop.remove_signal_handler(signum)
            if previous is not None:
                signal.signal(signum, previous)


async def _step_in_savepoint(session: AsyncSession, item: T,
                             step: Callable[[AsyncSession, T], Awaitable[R]],
                             *, contained: bool) -> R | PipelineError:
    try:
        async with session.begin_nested():
            return await step(session, item)
    except PipelineError as exc:
        return exc
    except StatementError as exc:
        # The savepoint is rolled back: unless the connection itself is gone (then the run
        # stops), the error is this item's alone.
        if not contained or is_unavailable(exc):
            raise
        return ItemRefused(f"the database refused it: {_first_line(exc)}")


def _stops(exc: BaseException, stop: _StopRequest | None) -> bool:
    """Whether ``exc``, raised during a contained chunk, ends the run as ``Stopped``: any
    error, and the cancellation a second signal caused (other cancellations propagate)."""
    if isinstance(exc, asyncio.CancelledError):
        return stop is not None and stop.forced
    return isinstance(exc, Exception)


def _stopped(exc: BaseException, stop: _StopRequest | None,
             done: list[tuple[Any, Any]], part: _Chunk[Any, Any], *, committed: int) -> Stopped:
    refused = [(item, result) for item, result in part.outcomes
               if isinstance(result, PipelineError)]
    # A commit cut off by a lost connection (or a second signal) may or may not have landed;
    # any other failed commit was rolled back.
    lost = isinstance(exc, asyncio.CancelledError) or is_unavailable(exc)
    in_doubt = len(part.outcomes) if part.committing and lost else 0
    if stop is not None and stop.signal is not None:
        name = signal.Signals(stop.signal).name
        reason = f"interrupted by {name}" + (" (forced)" if stop.forced else "")
        if isinstance(exc, asyncio.CancelledError) and stop.task is not None:
            stop.task.uncancel()
        return Stopped(reason, outcomes=done + refused, committed=committed,
                       in_doubt=in_doubt, exit_code=128 + stop.signal)
    return Stopped(_failure(exc), outcomes=done + refused, committed=committed,
                   in_doubt=in_doubt, exit_code=1)


def _failure(exc: BaseException) -> str:
    """One line about what stopped the run (never a URL, which may hold a password)."""
    if isinstance(exc, DBAPIError):
        return f"database error: {_first_line(exc)}"
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    return describe(exc)


def _first_line(exc: StatementError) -> str:
    """The driver's message without SQLAlchemy's statement and parameters (a row's values,
    perhaps megabytes) or asyncpg's class prefix."""
    cause: BaseException = exc.orig if exc.orig is not None else exc
    line = (str(cause).strip().splitlines() or ["?"])[0]
    return _CLASS_PREFIX.sub("", line)[:300]


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
    url = await servers.database_url(settings)
    if settings.database_url is None:
        await migrate.upgrade(url)
        return url
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
