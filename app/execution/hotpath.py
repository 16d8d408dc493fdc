"""A worker's per-stage database calls, each one statement on a raw asyncpg connection.

Claiming (with the stage's input), a stage boundary (the success, the automatic moves and the
next stage's claim), failing and handing back happen for every stage of every task, so they
skip the ORM: each is one autocommitted statement (prepared once per connection by asyncpg's
statement cache) that writes its ``task_events`` rows in the same statement. Through
``AsyncSession`` the same work took several times as long in Python as in the database
(``bench/RESULTS.md``). What a move writes is ``app.moves`` (the service layer derives from the
same rules); the statements are ``app.db.statements``. A move is checked against
``app.lifecycle`` first, guarded by the expected status and fenced by the claim token; a write
that matches no row is explained by ``errors.miss_error`` (``StaleClaim``,
``InvalidTransition`` or ``TaskNotFound``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information

from app import lifecycle, moves
from app.db import statements
from app.errors import InvalidTransition, PipelineError, TaskNotFound, miss_error
from app.lifecycle import TaskStatus
from app.moves import Claim, Move, Renewal
from app.observability import instruments


class Artefacts(Mapping[str, Any]):
    """A task's stage outputs as its claim read them (JSON text), decoded when first read.

    Decoding every stage's input was about a tenth of a worker's CPU per stage with stages that
    do little; a handler that reads none of them (or fails first) now costs no decode, and one
    that reads them pays it once. Read-only: a handler returns its own output."""

    __slots__ = ("_text", "_value")

    def __init__(self, text: str) -> None:
        self._text = text
        self._value: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        if self._value is None:
            self._value = json.loads(self._text)
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __repr__(self) -> str:
        return f"Artefacts({self._decoded()!r})"


@dataclass(frozen=True)
class Loaded:
    """What a stage handler is given of its task."""

    title: str
    topic: str | None
    story_direction: str | None
    artifacts: Mapping[str, Any]


@dataclass(frozen=True)
class Taken:
    """A claim, with what its stage is given (read by the claim's own statement)."""

    claim: Claim
    given: Loaded


async def take(
    conn: asyncpg.Connection, *, worker_id: str, lease_s: float, now: datetime,
    task_id: uuid.UUID | None = None, start: bool = True,
) -> Taken | None:
    """The next claim in fair order (or of ``task_id`` only), with its stage's input; with
    ``start`` a queued task comes back already in its first stage (one commit for the claim and
    the start). A pick-up is one call committing two steps: the channel whose turn it is, then
    its best task."""
    if task_id is not None:
        return _taken(await conn.fetchrow(statements.CLAIM, worker_id, lease_s, now, task_id,
                                          start))
    taken = await take_many(conn, 1, worker_id=worker_id, lease_s=lease_s, now=now,
                            start=start)
    return taken[0] if taken else None


async def take_many(conn: asyncpg.Connection, count: int, *, worker_id: str, lease_s: float,
                    now: datetime, start: bool = True) -> list[Taken]:
    """Up to ``count`` pick-ups in fair order, in one call: their turns decided together (strict
    turns hold: each decision sees the ones before it), then each task claimed on its own."""
    row = await conn.fetchrow(statements.PICK_UP, worker_id, lease_s, now, start, count)
    taken = []
    for one in zip(*row, strict=True):
        found = _taken(one)
        assert found is not None
        taken.append(found)
    return taken


async def claim(
    conn: asyncpg.Connection, *, worker_id: str, lease_s: float, now: datetime,
    task_id: uuid.UUID | None = None, start: bool = True,
) -> Claim | None:
    """``take`` without the stage's input."""
    taken = await take(conn, worker_id=worker_id, lease_s=lease_s, now=now, task_id=task_id,
                       start=start)
    return None if taken is None else taken.claim


def _taken(row: Any, at: int = 0) -> Taken | None:
    """The claim and input in ``row`` from column ``at`` on (None: nothing was claimed)."""
    if row is None or row[at] is None:
        return None
    claim = Claim(row[at], TaskStatus(row[at + 1]), TaskStatus(row[at + 2]), row[at + 3],
                  row[at + 4], row[at + 5])
    instruments.claimed(claim)
    return Taken(claim, Loaded(row[at + 6], row[at + 7], row[at + 8], Artefacts(row[at + 9])))


async def load(conn: asyncpg.Connection, task_id: uuid.UUID) -> Loaded:
    """The task's fields and stage outputs; raises ``TaskNotFound``."""
    row = await conn.fetchrow(statements.LOAD, task_id)
    if row is None:
        raise TaskNotFound(task_id)
    return Loaded(row[0], row[1], row[2], Artefacts(row[3]))


async def finish(conn: asyncpg.Connection, held: Claim, *, artefacts: dict[str, Any],
                 actor: str, now: datetime) -> TaskStatus:
    """Record the stage's success (its done state); returns that state."""
    return await _held(conn, held, moves.finish(held, artefacts=artefacts, now=now),
                       actor=actor, now=now)


@dataclass(frozen=True)
class Boundary:
    """Where a finished stage left its task: ``rest`` is its status now (its next stage's
    active state when ``taken``, the stage carried on under a new claim)."""

    rest: TaskStatus
    taken: Taken | None


async def boundary(conn: asyncpg.Connection, held: Claim, *, artefacts: dict[str, Any],
                   actor: str, lease_s: float, now: datetime, auto_approved: frozenset[str],
                   carry: bool) -> Boundary:
    """Record the stage's success, take the automatic moves and the gates in
    ``auto_approved`` after it and, with ``carry``, claim the task's next stage if it can be
    had now: one statement (``stage_boundaries``), one commit. The success is written as
    ``moves.finish`` says (the function is rendered from that rule)."""
    [done] = await boundaries(conn, [Ending(held, artefacts)], actor=actor, lease_s=lease_s,
                              now=now, auto_approved=auto_approved, carry=carry)
    if isinstance(done, PipelineError):
        raise done
    return done


def _finished(held: Claim, artefacts: dict[str, Any], now: datetime) -> Move:
    """The success of ``held``'s stage (``moves.finish``), checked against the lifecycle."""
    move = moves.finish(held, artefacts=artefacts, now=now)
    _check(held.task_id, move.current, move.target)
    return move


@dataclass(frozen=True)
class Ending:
    """A stage's success to record: the claim that held it and the stage's output."""

    held: Claim
    artefacts: dict[str, Any]


async def boundaries(conn: asyncpg.Connection, endings: Sequence[Ending], *, actor: str,
                     lease_s: float, now: datetime, auto_approved: frozenset[str],
                     carry: bool) -> list[Boundary | PipelineError]:
    """``boundary`` for several stages in one statement and one commit (``stage_boundaries``);
    each task's result in order: where it rests, or why its write was refused (nothing of it
    written; the others are)."""
    finished = [_finished(e.held, e.artefacts, now) for e in endings]
    rows = await conn.fetch(
        statements.BOUNDARIES, [e.held.task_id for e in endings],
        [e.held.token for e in endings], [e.held.status.value for e in endings],
        [json.dumps(e.artefacts) for e in endings],
        [move.changes.get("youtube_url") for move in finished], actor, lease_s, now,
        sorted(auto_approved), carry)
    results: list[Boundary | PipelineError] = []
    for e, move, row in zip(endings, finished, sorted(rows, key=lambda r: r[0]), strict=True):
        if row[1] is None:
            results.append(await _miss(conn, e.held.task_id, move.current, move.target,
                                       e.held.token))
        else:
            results.append(Boundary(TaskStatus(row[1]), _taken(row, 2)))
    return results


async def fail(conn: asyncpg.Connection, held: Claim, *, message: str, actor: str,
               now: datetime, max_attempts: int, backoff_s: float) -> TaskStatus:
    """Record the stage's failure (its error state, the retry scheduled while attempts remain);
    returns that state."""
    move = moves.fail(held, message=message, max_attempts=max_attempts, backoff_s=backoff_s,
                      now=now)
    return await _held(conn, held, move, actor=actor, now=now)


async def hand_back(conn: asyncpg.Connection, held: Claim, *, reason: str, actor: str,
                    now: datetime, not_before: datetime | None = None) -> TaskStatus:
    """Give the stage back unfinished, not spending the attempt (``moves.hand_back``)."""
    status = await _held(conn, held, moves.hand_back(held, reason=reason, now=now,
                                                     not_before=not_before),
                         actor=actor, now=now)
    instruments.handed_back(held.status)
    return status


async def pause_quotas(conn: asyncpg.Connection, task_id: uuid.UUID, *, stage: str,
                       seconds: float) -> int:
    """Pause every quota a start of ``stage`` of the task counts against (its channel's and
    the shared ones: a provider's rate limit); how many buckets were paused."""
    return int(await conn.fetchval(statements.PAUSE_QUOTAS, task_id, stage, seconds) or 0)


async def renew(conn: asyncpg.Connection, held: Claim, *, lease_s: float,
                now: datetime) -> Renewal:
    """Extend the lease while the token still matches: the claim kept, lost, or kept on a
    task an operator has put on hold."""
    return Renewal.found(await conn.fetchval(statements.RENEW_IF_HELD, held.task_id, held.token,
                                             held.status.value,
                                             now + timedelta(seconds=lease_s)))


async def _held(conn: asyncpg.Connection, held: Claim, move: Move, *, actor: str,
                now: datetime) -> TaskStatus:
    if move.target is not move.current:
        _check(held.task_id, move.current, move.target)
    sql, params = statements.move_if_held(move, held.task_id, held.token, actor=actor, now=now)
    if await conn.fetchval(sql, *params) is None:
        raise await _miss(conn, held.task_id, move.current, move.target, held.token)
    return move.target


def _check(task_id: uuid.UUID, current: TaskStatus, target: TaskStatus) -> None:
    if not lifecycle.is_allowed(current, target):
        raise InvalidTransition(task_id, current, target)


async def _miss(conn: asyncpg.Connection, task_id: uuid.UUID, expected: TaskStatus,
                target: TaskStatus, token: uuid.UUID | None) -> InvalidTransition:
    row = await conn.fetchrow(statements.FOUND, task_id)
    found = None if row is None else (TaskStatus(row[0]), row[1])
    return miss_error(task_id, expected, target, token, found)
