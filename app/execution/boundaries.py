"""Stage boundaries of one worker process, written together when stages end together.

Every claim loop of a process ends a stage with a stage boundary (``hotpath.boundary``). When
several end within the time one write takes, their boundaries share one statement and one
commit (``hotpath.boundaries``), each still guarded by its status and fenced by its own claim
token, so throughput rises with concurrency instead of with commits (``app.execution.batching``:
no boundary waits for another to join it).

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
from app.execution.batching import Batcher
from app.execution.hotpath import Boundary, Ending

#: Writes under way at once; further boundaries wait and go together in the next one.
IN_FLIGHT = 2
#: Boundaries in one write, at most: as many as a process runs at once (up to this many). A
#: write's fixed cost (about 0.3 ms of the server's time) is shared by its whole batch; with
#: four processes of 100 slots, a cap of 32 cost about 15% more of the server's CPU per stage.
MOST = 256


@dataclass(frozen=True)
class Settings:
    """What every boundary of the process shares."""

    actor: str
    lease_s: float
    auto_approved: frozenset[str]


@dataclass
class Boundaries:
    """The process's stage boundaries to write."""

    pool: HotPool
    settings: Settings
    _batcher: Batcher[tuple[Ending, bool], Boundary] = field(init=False)

    def __post_init__(self) -> None:
        self._batcher = Batcher(self._write, in_flight=IN_FLIGHT, most=MOST)

    def send(self, ending: Ending, *, carry: bool) -> asyncio.Future[Boundary]:
        """Record ``ending`` (and carry its task on when ``carry``): the future of where the
        task rests. The write goes on whatever becomes of the caller (``Batcher.put``)."""
        return self._batcher.put((ending, carry))

    async def _write(self, batch: list[tuple[Ending, bool]]
                     ) -> list[Boundary | BaseException]:
        s = self.settings
        if len(batch) == 1:
            [(ending, carry)] = batch
            async with self.pool.acquire() as conn:
                return [await hotpath.boundary(
                    conn, ending.held, artefacts=ending.artefacts, actor=s.actor,
                    lease_s=s.lease_s, now=moves.utcnow(), auto_approved=s.auto_approved,
                    carry=carry)]
        try:
            async with self.pool.acquire() as conn:
                results: list[Boundary | PipelineError] = await hotpath.boundaries(
                    conn, [ending for ending, _ in batch], actor=s.actor, lease_s=s.lease_s,
                    now=moves.utcnow(), auto_approved=s.auto_approved,
                    carry=all(carry for _, carry in batch))
        except Exception as exc:
            if db.is_unavailable(exc):
                raise
            return [await self._one(item) for item in batch]     # each on its own
        return list(results)

    async def _one(self, item: tuple[Ending, bool]) -> Boundary | BaseException:
        try:
            return (await self._write([item]))[0]
        except Exception as exc:
            return exc
