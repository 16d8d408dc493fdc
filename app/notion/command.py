"""``pipeline sync-notion --once | --loop``: the composition root of the Notion sync.

Exit codes: 0 clean; 1 some page was bad or refused an update; 2 an outage or a configuration
error (one line on stderr naming the cause). ``--loop`` logs an outage and tries again next
round; SIGTERM or SIGINT stops it after the page or push batch in hand.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import servers
from app.commands import tables
from app.commands.context import ready_database
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.errors import NotionConfigError, NotionError
from app.execution import wakeups
from app.notion import client
from app.notion.client import Notion
from app.notion.sync import SyncSummary, Wake, sync_loop, sync_once
from app.observability import endpoint

log = logging.getLogger("app.notion")

#: Redis is only an optimisation here (the workers' sweep finds runnable tasks anyway).
WAKE_TIMEOUT_S = 5.0


async def run(settings: Settings, *, loop: bool, as_json: bool) -> int:
    """Run one round (``loop=False``) or rounds until SIGTERM/SIGINT; returns the exit code."""
    try:
        client.data_source_id(settings)
    except NotionConfigError as exc:
        return _fail(exc)
    # httpx and notion-client log every request at INFO; the sync reports its own progress.
    for name in ("httpx", client.HTTP_LOG.name):
        logging.getLogger(name).setLevel(logging.WARNING)
    engine = make_engine(settings, await ready_database(settings))
    try:
        sessions = make_sessionmaker(engine)
        async with client.connect(settings) as notion:
            if loop:
                return await _loop(settings, sessions, notion)
            return await _once(settings, sessions, notion, as_json=as_json)
    finally:
        await engine.dispose()


async def _once(settings: Settings, sessions: async_sessionmaker[AsyncSession],
                notion: Notion, *, as_json: bool) -> int:
    try:
        summary = await sync_once(sessions, notion, settings, wake=_waker(settings),
                                  progress=_progress)
    except NotionError as exc:
        return _fail(exc)
    print(json.dumps(summary.counts() | {"problems": summary.problems}) if as_json
          else render(summary))
    return 0 if summary.clean else 1


async def _loop(settings: Settings, sessions: async_sessionmaker[AsyncSession],
                notion: Notion) -> int:
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    endpoint.serve(settings.metrics_port)       # its rounds and Notion errors, as a worker's
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, stop.set)
    try:
        await sync_loop(sessions, notion, settings, stop=stop, wake=_waker(settings),
                        progress=_progress, on_round=_round_line)
    except NotionConfigError as exc:
        return _fail(exc)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.remove_signal_handler(sig)
    return 0


def _waker(settings: Settings) -> Wake:
    async def wake(count: int) -> None:
        try:
            async with asyncio.timeout(WAKE_TIMEOUT_S):
                await wakeups.wake_url(servers.redis_url(settings),
                                       wakeups.wanted(count, settings.worker_concurrency),
                                       queue_name=settings.queue_name)
        except Exception as exc:  # whatever Redis did: the workers' sweep covers it
            log.warning("notion sync: could not wake the workers (%s); their sweep will find "
                        "the %d runnable task(s)", type(exc).__name__, count)
    return wake


def render(summary: SyncSummary) -> str:
    """The summary as an aligned table, then one line per problem."""
    table = tables.render(["result", "pages"], list(summary.counts().items()))
    return "\n".join([table, *summary.problems])


def _round_line(summary: SyncSummary) -> None:
    """One stderr line per round that changed something (re-reading the overlap does not)."""
    counts = summary.counts()
    if any(count for name, count in counts.items() if name not in ("seen", "unchanged")):
        _progress(", ".join(f"{name} {count}" for name, count in counts.items()))


def _progress(message: str) -> None:
    print(f"notion sync: {message}", file=sys.stderr, flush=True)


def _fail(exc: NotionError) -> int:
    print(f"pipeline sync-notion: {exc}", file=sys.stderr)
    return 2
