"""A worker process's periodic jobs (the sweep, the in-worker Notion sync), run on timers of
their own beside arq rather than as arq cron jobs.

arq starts a cron job as it starts any job: in a free job slot. A busy worker soon holds every
slot (its claim loops' wake-up, and further wake-ups waiting for a claim slot, which is what
stops it taking wake-ups meant for workers with room), so a cron job would wait for the backlog
to end: no lease reaped, no lost wake-up made up, no Notion round, for as long as the work
lasts.

Here each job runs in every worker process at the same wall-clock ticks (the multiples of its
interval, as a cron schedule), and one process runs each tick: the first to set the tick's key
in Redis (``SET NX`` with an expiry), as arq's cron job ids (name and tick) made one job of
each tick. A job marked ``at_start`` also runs once when its process starts, in every process.
A tick is skipped while Redis is unreachable (arq's cron needed Redis too); a job that fails
or outruns its timeout is logged and runs again at its next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from app.db import describe
from app.execution import wakeups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Periodic:
    """A job run every ``every_s`` seconds by one worker process (``run(ctx)``)."""

    name: str
    every_s: float
    run: Callable[[dict[str, Any]], Awaitable[object]]
    timeout_s: float
    at_start: bool = False


def next_tick(now: float, every_s: float) -> float:
    """The first multiple of ``every_s`` (epoch seconds) after ``now``: every process agrees
    while their clocks keep within the tick key's life (two intervals) of each other; past
    that a tick may run twice, which the sweep and the sync (its own lock) take in their
    stride."""
    return (math.floor(now / every_s) + 1) * every_s


def _tick_key(queue: str, name: str, tick: float) -> str:
    return f"{queue}:tick:{name}:{round(tick * 1000)}"


@dataclass
class Timers:
    """The running timers of one process's periodic jobs; ``aclose`` stops them."""

    tasks: list[asyncio.Task[None]]

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def start(ctx: dict[str, Any], redis: Redis, queue: str, jobs: Sequence[Periodic]) -> Timers:
    """Start a timer for each job (``ctx`` is what each run is given)."""
    return Timers([asyncio.create_task(_timer(ctx, redis, queue, job), name=f"periodic:{job.name}")
                   for job in jobs])


async def _timer(ctx: dict[str, Any], redis: Redis, queue: str, job: Periodic) -> None:
    if job.at_start:
        await _run(ctx, job)
    while True:
        tick = next_tick(time.time(), job.every_s)
        await asyncio.sleep(max(0.0, tick - time.time()))
        try:
            mine = await redis.set(_tick_key(queue, job.name, tick), b"1", nx=True,
                                   px=max(1000, round(2000 * job.every_s)))
        except wakeups.REDIS_GONE as exc:
            log.warning("%s: tick skipped, Redis unreachable (%s)", job.name, describe(exc))
            continue
        if mine:
            await _run(ctx, job)


async def _run(ctx: dict[str, Any], job: Periodic) -> None:
    """One run; its failure is logged, never the timer's end."""
    limit = asyncio.timeout(job.timeout_s)
    try:
        async with limit:
            await job.run(ctx)
    except TimeoutError:
        if not limit.expired():
            log.exception("%s failed", job.name)
        else:
            log.warning("%s: stopped after its timeout of %g s", job.name, job.timeout_s)
    except Exception:
        log.exception("%s failed", job.name)
