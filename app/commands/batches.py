"""Running one step over many items in chunked transactions: the engine of bulk commands.

Each chunk is one transaction and each item a savepoint, so a refused item is rolled back alone
while the others go on; a progress bar shows long runs. An import (``contained``) also judges
each item's database errors on their own, and says exactly which items got in when it is
stopped by a signal or fails midway (``Stopped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.commands.progress import Progress
from app.db import describe, is_unavailable, session_scope
from app.errors import PipelineError

T = TypeVar("T")
R = TypeVar("R")
#: The signals that stop a contained run between two items.
STOP_SIGNALS = (int(signal.SIGINT), int(signal.SIGTERM))
# asyncpg's errors as SQLAlchemy adapts them print as "<class 'asyncpg…Error'>: message".
_CLASS_PREFIX = re.compile(r"^<class '[\w.]+'>: ")


async def run_in_chunks(
    sessions: async_sessionmaker[AsyncSession], items: Sequence[T],
    step: Callable[[AsyncSession, T], Awaitable[R]], *, label: str, chunk: int,
    contained: bool = False,
) -> list[tuple[T, R | PipelineError]]:
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
                    await _run_chunk(sessions, part, step, progress, stop, contained=contained)
                except BaseException as exc:
                    if not contained or not _stops(exc, stop):
                        raise
                    raise _stopped(exc, stop, outcomes, part, committed=start) from exc
                outcomes += part.outcomes
    finally:
        progress.close()
    return outcomes

async def _run_chunk(sessions: async_sessionmaker[AsyncSession], part: _Chunk[T, R],
                     step: Callable[[AsyncSession, T], Awaitable[R]], progress: Progress,
                     stop: _StopRequest | None, *, contained: bool) -> None:
    """One transaction over ``part``; ``part.committing`` is set once its commit began."""
    async with session_scope(sessions) as session:
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
