"""Periodic jobs on their own timers (``app.execution.periodic``), on a real Redis: one process
runs each tick, a job runs at start, a failing job runs again at its next tick, and one past its
timeout is stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from app.execution import periodic
from app.execution.periodic import Periodic

EVERY_S = 0.5


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class Runs:
    """The times a job ran, and an event set once it has run ``enough`` times."""

    def __init__(self, enough: int, *, fail: bool = False) -> None:
        self.at: list[float] = []
        self.enough = enough
        self.fail = fail
        self.done = asyncio.Event()

    async def __call__(self, ctx: dict[str, Any]) -> None:
        self.at.append(time.time())
        if len(self.at) >= self.enough:
            self.done.set()
        if self.fail:
            raise RuntimeError("the job failed")


def test_every_process_agrees_on_the_ticks() -> None:
    assert periodic.next_tick(100.0, 5) == 105.0
    assert periodic.next_tick(104.99, 5) == 105.0
    assert periodic.next_tick(3.0, 0.5) == 3.5


async def test_one_of_several_processes_runs_each_tick(redis: Redis, unique: str) -> None:
    """Three timer sets on one queue (three worker processes): each tick runs once."""
    runs = Runs(6)
    job = Periodic("job", EVERY_S, runs, timeout_s=5)
    timers = [periodic.start({}, redis, f"test:{unique}", [job]) for _ in range(3)]
    try:
        async with asyncio.timeout(30):
            await runs.done.wait()
    finally:
        for t in timers:
            await t.aclose()
    gaps = [b - a for a, b in zip(runs.at, runs.at[1:], strict=False)]
    assert min(gaps) > EVERY_S / 2, f"a tick ran more than once: {gaps}"   # else ms apart


async def test_a_job_runs_at_start_and_again_after_failing(
        redis: Redis, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    runs = Runs(3, fail=True)
    timers = periodic.start({}, redis, f"test:{unique}",
                            [Periodic("flaky", 3600, runs, timeout_s=5, at_start=True),
                             Periodic("again", EVERY_S, runs, timeout_s=5)])
    try:
        async with asyncio.timeout(30):
            await runs.done.wait()
    finally:
        await timers.aclose()
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert {r.getMessage() for r in failed} >= {"flaky failed", "again failed"}
    assert all(r.exc_info for r in failed)        # logged with the traceback


async def test_a_job_past_its_timeout_is_stopped_and_said(
        redis: Redis, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    stopped = asyncio.Event()

    async def stuck(ctx: dict[str, Any]) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    timers = periodic.start({}, redis, f"test:{unique}",
                            [Periodic("stuck", 3600, stuck, timeout_s=0.2, at_start=True)])
    try:
        async with asyncio.timeout(10):
            await stopped.wait()       # the timer logs in the step that stopped the job
    finally:
        await timers.aclose()
    assert any(r.getMessage() == "stuck: stopped after its timeout of 0.2 s"
               for r in caplog.records)
