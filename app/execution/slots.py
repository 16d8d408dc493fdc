"""A worker process's claim loops: tasks back to back in-process while work is claimable.

An arq ``work`` job is a wake-up, not a task. It starts a claim loop when the process has a
free slot (``WORKER_CONCURRENCY`` of them). A loop claims the next task in fair order, runs it
as far as it goes (stage after stage, one write per boundary), then claims again, until a claim
finds nothing. A loop whose claim found a task starts two more loops in free slots at once (more
work may be waiting; the loops asking together share a pick-up, and their number doubles each
round), so idle slots fill within a few pick-ups rather than at arq's next poll;
with every slot busy it wakes another process through Redis, unless a wake-up already waits
there (asked at most every ``SURPLUS_EVERY_S``: a busy process does not pay Redis round trips
per task). Since one wake-up fills every free slot, a process takes one more wake-up from
Redis than it holds while a slot is free and none while every slot is busy (``Slots._admit``
sets arq's ``max_jobs``): further wake-ups stay in Redis for processes with room, and a busy
process's polls no longer take each one through arq's start and end (about 22 Redis commands).
A wake-up that finds every slot busy all the same (taken just before the last slot filled)
waits for one to free (or for the worker to stop) rather than being dropped. Redis thus
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
from typing import Protocol

from app import db
from app.execution.runner import Runner

log = logging.getLogger(__name__)

#: How often a busy process may ask Redis for a wake-up for another process, at most.
SURPLUS_EVERY_S = 0.1
#: Asks for one more wake-up in Redis (for another process), unless one already waits there.
Surplus = Callable[[], Awaitable[None]]


class Admits(Protocol):
    """What ``Slots`` steers of arq's ``Worker``: how many jobs it may hold (read at each poll
    and before each job it starts), and how many it holds."""

    max_jobs: int
    job_counter: int


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
    #: arq's Worker, once known (``admit_through``).
    _worker: Admits | None = field(default=None, init=False)
    #: The last claim of a loop found nothing (and none has found a task since).
    _drained: bool = field(default=False, init=False)

    def admit_through(self, worker: Admits) -> None:
        """Steer how many wake-ups ``worker`` takes from Redis (``_admit``)."""
        self._worker = worker
        self._admit()

    def _admit(self) -> None:
        """One wake-up more than the process holds while a slot is free, none while every
        slot is busy: a wake-up fills every free slot (its loops start one another), so a
        busy process leaves the rest in Redis for processes with room, and its polls stop
        checking them. A job holds its arq slot while any stage it started runs, so the cap
        follows the jobs held: free slots always take one more. Once a claim found nothing and
        no loop runs, queued wake-ups are taken all at once (each then ends at once)."""
        worker = self._worker
        if worker is None:
            return
        if self._drained and not self.busy:
            worker.max_jobs = self.size
        else:
            free = 1 if self.busy < self.size else 0
            worker.max_jobs = max(1, min(self.size, worker.job_counter + free))

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
        self._admit()
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
                self._drained = lease is None
                if lease is None:
                    return
                try:
                    if self._start(job):
                        self._start(job)      # two: the loops asking double each round
                    elif loop.time() >= self._surplus_at + SURPLUS_EVERY_S:
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
            self._admit()
            freed, self._freed = self._freed, asyncio.Event()
            freed.set()


@dataclass
class _Job:
    """One wake-up's loops: their task group, when they stop taking tasks, tasks run."""

    deadline: float
    group: asyncio.TaskGroup
    ran: int = 0
