"""The event loop a worker process runs on: uvloop unless ``WORKER_EVENT_LOOP=asyncio``.

Most of a worker's own time per stage is the event loop's: socket writes and reads, callbacks,
futures and timers. On uvloop (libuv's loop, the one asyncpg is built for) a worker spent about
a sixth less CPU per stage execution in the throughput benchmark (``bench/RESULTS.md``), and
nothing else changes: the same tasks, futures, signal handlers and timeouts. ``asyncio`` keeps
the standard library's loop (to debug with its tools, or where uvloop is not installed).
``pipeline worker`` runs on it, and so does the arq CLI (the Procfile's worker), which takes the
loop set for the thread when it builds its Worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from app.config import Settings
from app.errors import PipelineError

Factory = Callable[[], asyncio.AbstractEventLoop]


class LoopUnavailable(PipelineError):
    """The event loop asked for cannot be had here."""


def factory(settings: Settings) -> Factory:
    """What makes the worker's event loop, per ``WORKER_EVENT_LOOP``."""
    if settings.worker_event_loop == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        raise LoopUnavailable("WORKER_EVENT_LOOP=uvloop: uvloop is not installed here"
                              " (pip install uvloop), or set WORKER_EVENT_LOOP=asyncio") from None
    return uvloop.new_event_loop
