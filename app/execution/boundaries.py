"""Stage boundaries of one worker process, written together when stages end together.

Every claim loop of a process ends a stage with a stage boundary (``hotpath.boundary``). When
several end within the time one write takes, their boundaries share one statement and one
commit (``hotpath.boundaries``), each still guarded by its status and fenced by its own claim
token, so throughput rises with concurrency instead of with commits. Batching adds no wait:
a boundary is sent at once when fewer than ``IN_FLIGHT`` writes are under way, and otherwise
joins the next write, which takes everything that queued meanwhile (at most ``MOST``).

A write that fails as a whole (the database unavailable) fails each of its boundaries, and
each caller retries as for any write of its own (``Runner._record``). A batch that fails for
another reason (a lock wait too long, a deadlock with an operator's statement) is written again
one boundary at a time, so one task's trouble never costs the others their outcome.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from app import db, moves
from app.db.hotpool import HotPool
from app.errors import PipelineError
from app.execution import hotpath
from app.execution.hotpath import Boundary, Ending

#: Writes under way at once; further boundaries wait and go together in the next one.
IN_FLIGHT = 2
#: Boundaries in one write, at most.
MOST = 32


@dataclass(frozen=True)
class Settings:
    """What every boundary of the process shares."""

    actor: str
    lease_s: float
    auto_approved: frozenset[str]


@dataclass
class _Waiting:
    ending: Ending
    carry: bool
    done: asyncio.Future[Boundary]


@dataclass
class Boundaries:
    """The process's queue of stage boundaries to write."""

    pool: HotPool
    settings: Settings
    _queue: list[_Waiting] = field(default_factory=list, init=False)
    _writers: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    async def write(self, ending: Ending, *, carry: bool) -> Boundary:
        """Record ``ending`` (and carry its task on when ``carry``); where the task rests."""
        done: asyncio.Future[Boundary] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(ending, carry, done))
        if len(self._writers) < IN_FLIGHT:
            writer = asyncio.create_task(self._drain())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        return await done

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MOST], self._queue[MOST:]
            await self._write(batch)

    async def _write(self, batch: list[_Waiting]) -> None:
        s = self.settings
        try:
            async with self.pool.acquire() as conn:
                if len(batch) == 1:
                    one = batch[0]
                    results: list[Boundary | PipelineError] = [await hotpath.boundary(
                        conn, one.ending.held, artefacts=one.ending.artefacts, actor=s.actor,
                        lease_s=s.lease_s, now=moves.utcnow(), auto_approved=s.auto_approved,
                        carry=one.carry)]
                else:
                    results = await hotpath.boundaries(
                        conn, [w.ending for w in batch], actor=s.actor, lease_s=s.lease_s,
                        now=moves.utcnow(), auto_approved=s.auto_approved,
                        carry=all(w.carry for w in batch))
        except Exception as exc:
            if len(batch) == 1 or db.is_unavailable(exc):
                for waiting in batch:
                    _settle(waiting.done, exc)
                return
            for waiting in batch:                    # one at a time, each on its own
                await self._write([waiting])
            return
        for waiting, result in zip(batch, results, strict=True):
            _settle(waiting.done, result)


def _settle(done: asyncio.Future[Boundary], result: Boundary | BaseException) -> None:
    if done.done():
        return
    if isinstance(result, BaseException):
        done.set_exception(result)
    else:
        done.set_result(result)
