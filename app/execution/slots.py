"""A worker process's claim loops: tasks back to back in-process while work is claimable.

An arq ``work`` job is a wake-up, not a task. It starts a claim loop when the process has a
free slot (``WORKER_CONCURRENCY`` of them). A loop claims the next task in fair order, runs it
as far as it goes (stage after stage, one write per boundary), then claims again, until a claim
finds nothing. A loop whose claim found a task starts another loop in a free slot at once (more
work may be waiting), so idle slots fill within milliseconds rather than at arq's next poll;
with every slot busy it wakes another process through Redis, unless a wake-up already waits
there (asked at most every ``SURPLUS_EVERY_S``: a busy process does not pay Redis round trips
per task). A wake-up that finds every slot busy waits for one to free (or for the worker to stop)
rather than being dropped: while it waits it holds one of arq's job slots, so a busy process
soon stops taking wake-ups from Redis and leaves them to processes with room. Redis thus
carries wake-ups for surplus work only, not one job per task.

The loops a job starts belong to it: the job ends when the last of them does, so arq's grace
period, its cancellation at shutdown and ``--burst`` reach every running stage as before. A
loop takes no new task once its job is past half of arq's job timeout (the job then hands over
to a fresh wake-up), so the timeout never cuts a stage short under sustained load. A loop that
meets an error logs it and ends; its siblings go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app import db
from app.execution.runner import Runner

log = logging.getLogger(__name__)

#: How often a busy process may ask Redis for a wake-up for another process, at most.
SURPLUS_EVERY_S = 0.1
#: Asks for one more wake-up in Redis (for another process), unless one already waits there.
Surplus = Callable[[], Awaitable[None]]


@dataclass
class Slots:
    """The claim loops of one worker process, at most ``size`` at once."""

    runner: Runner
    size: int
    surplus: Surplus
    #: A job's loops take no new task after this long (half the job timeout).
    job_budget_s: float
    busy: int = field(default=0, init=False)
    #: Set (and replaced) whenever a loop ends: wakes every wake-up waiting for a slot.
    _freed: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    #: When the last wake-up for another process was asked for (event loop time).
    _surplus_at: float = field(default=float("-inf"), init=False)

    async def work(self) -> int:
        """Run claim loops from this job until none finds more work; how many tasks they ran."""
        if not await self._room():
            return 0
        job = _Job(asyncio.get_running_loop().time() + self.job_budget_s, asyncio.TaskGroup())
        async with job.group:
            self._start(job)
        return job.ran

    async def _room(self) -> bool:
        """Wait for a free slot; False when the worker stops first."""
        stopping = self.runner.stopping
        while self.busy >= self.size and not stopping.is_set():
            waits = [asyncio.ensure_future(self._freed.wait()),
                     asyncio.ensure_future(stopping.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return not stopping.is_set()

    def _start(self, job: _Job) -> bool:
        """Another loop of ``job`` in a free slot; False when every slot is busy."""
        if self.busy >= self.size:
            return False
        self.busy += 1
        job.group.create_task(self._claiming(job))
        return True

    async def _claiming(self, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if loop.time() >= job.deadline:
                    await self.surplus()                # a fresh job carries on
                    return
                lease = await self.runner.next_lease()
                if lease is None:
                    return
                try:
                    if not self._start(job) and \
                            loop.time() >= self._surplus_at + SURPLUS_EVERY_S:
                        self._surplus_at = loop.time()
                        await self.surplus()
                except BaseException:
                    self.runner.dropped(lease)
                    raise
                await self.runner.run(lease)
                job.ran += 1
        except Exception as exc:           # one loop's error must not cancel the others
            if db.is_unavailable(exc):
                log.warning("work: database unavailable (%s)", db.describe(exc))
            else:
                log.exception("work: claim loop ended by an error")
        finally:
            self.busy -= 1
            freed, self._freed = self._freed, asyncio.Event()
            freed.set()


@dataclass
class _Job:
    """One wake-up's loops: their task group, when they stop taking tasks, tasks run."""

    deadline: float
    group: asyncio.TaskGroup
    ran: int = 0
