"""A worker's per-stage database calls, each one statement on a raw asyncpg connection.

Claiming, loading, finishing and moving a task on happen for every stage of every task, so
they skip the ORM: each is one autocommitted statement (prepared once per connection by
asyncpg's statement cache) that writes its ``task_events`` row in the same statement. Through
``AsyncSession`` the same work took several times as long in Python as in the database
(``bench/RESULTS.md``). The rules are the service layer's: a move is checked against
``app.lifecycle`` first, guarded by the expected status (and by the claim token for a worker's
own task), and a write that matches no row is explained by ``transitions.miss_error``
(``StaleClaim``, ``InvalidTransition`` or ``TaskNotFound``). Rare moves (failures, the reaper,
operator actions) stay in ``app.services``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information

from app import lifecycle
from app.errors import InvalidTransition, TaskNotFound
from app.lifecycle import TaskStatus
from app.services import transitions
from app.services.claims import Claim

#: ``claim_task`` (see ``app.db.ddl.claim_task``); ``$5`` starts a claimed queued task's first
#: stage.
CLAIM = ("SELECT task_id, from_status, to_status, claim_token"
         " FROM claim_task($1, $2, $3, $4, $5)")

#: What a stage handler is given, and how many times the task entered the stage's state.
LOAD = """
SELECT t.title, t.topic, t.story_direction, t.artifacts,
       (SELECT count(*) FROM task_events e WHERE e.task_id = t.id AND e.to_status = $2) AS runs
FROM tasks t WHERE t.id = $1"""

#: A stage's success: its done state, the artefacts merged in, the claim ended; fenced by the
#: claim token; the event row in the same statement.
FINISH = """
WITH done AS (
  UPDATE tasks SET status = $3, attempts = 0, claimed_by = NULL, claimed_at = NULL,
         claim_token = NULL, lease_expires_at = NULL, updated_at = $5,
         artifacts = artifacts || jsonb_build_object($6::text, $7::jsonb),
         youtube_url = coalesce($8, youtube_url),
         published_at = CASE WHEN $3 = 'published'::taskstatus THEN $5 ELSE published_at END
  WHERE id = $1 AND status = $2 AND claim_token = $4
  RETURNING id)
INSERT INTO task_events (task_id, from_status, to_status, actor, created_at)
SELECT id, $2, $3, $9, $5 FROM done RETURNING task_id"""

#: A move that changes nothing but the status (an automatic step, an auto-approved gate).
MOVE = """
WITH moved AS (
  UPDATE tasks SET status = $3, updated_at = $6 WHERE id = $1 AND status = $2 RETURNING id)
INSERT INTO task_events (task_id, from_status, to_status, actor, note, created_at)
SELECT id, $2, $3, $4, $5, $6 FROM moved RETURNING task_id"""

RENEW = ("UPDATE tasks SET lease_expires_at = $4"
         " WHERE id = $1 AND claim_token = $2 AND status = $3 RETURNING id")

FOUND = "SELECT status, claim_token FROM tasks WHERE id = $1"


async def claim(
    conn: asyncpg.Connection, *, worker_id: str, lease_s: float, now: datetime,
    task_id: uuid.UUID | None = None, start: bool = True,
) -> Claim | None:
    """``claims.claim_next`` in one statement; with ``start`` a queued task comes back already
    in its first stage (one commit for the claim and the start)."""
    row = await conn.fetchrow(CLAIM, worker_id, lease_s, now, task_id, start)
    if row is None:
        return None
    return Claim(row[0], TaskStatus(row[1]), TaskStatus(row[2]), row[3])


@dataclass(frozen=True)
class Loaded:
    title: str
    topic: str | None
    story_direction: str | None
    artifacts: dict[str, Any]
    #: Times the task entered the stage's active state, this run included.
    runs: int


async def load(conn: asyncpg.Connection, task_id: uuid.UUID, active: TaskStatus) -> Loaded:
    row = await conn.fetchrow(LOAD, task_id, active.value)
    if row is None:
        raise TaskNotFound(task_id)
    return Loaded(row[0], row[1], row[2], json.loads(row[3]), int(row[4]))


async def finish(
    conn: asyncpg.Connection, held: Claim, *, stage: str, artefacts: dict[str, Any],
    actor: str, now: datetime,
) -> TaskStatus:
    """Record the stage's success (its done state); returns that state."""
    done = lifecycle.STAGE_BY_ACTIVE[held.status].done
    _check(held.task_id, held.status, done)
    url = artefacts.get("youtube_url") if done is TaskStatus.published else None
    landed = await conn.fetchval(
        FINISH, held.task_id, held.status.value, done.value, held.token, now, stage,
        json.dumps(artefacts), url if isinstance(url, str) else None, actor)
    if landed is None:
        raise await _miss(conn, held.task_id, held.status, done, held.token)
    return done


async def move(
    conn: asyncpg.Connection, task_id: uuid.UUID, current: TaskStatus, target: TaskStatus, *,
    actor: str, note: str | None, now: datetime,
) -> None:
    """A status-only move, guarded by the current status (not by a claim: no claim is held
    at a gate or an automatic step)."""
    _check(task_id, current, target)
    if transitions.side_effects(current, target, note=note, now=now).keys() != \
            {"status", "updated_at"}:
        raise ValueError(f"{current.value} → {target.value} changes more than the status")
    landed = await conn.fetchval(MOVE, task_id, current.value, target.value, actor, note, now)
    if landed is None:
        raise await _miss(conn, task_id, current, target, None)


async def renew(conn: asyncpg.Connection, held: Claim, *, lease_s: float,
                now: datetime) -> bool:
    """Extend the lease while the token still matches; False means the claim was lost."""
    return await conn.fetchval(RENEW, held.task_id, held.token, held.status.value,
                               now + timedelta(seconds=lease_s)) is not None


def _check(task_id: uuid.UUID, current: TaskStatus, target: TaskStatus) -> None:
    if not lifecycle.is_allowed(current, target):
        raise InvalidTransition(task_id, current, target)


async def _miss(conn: asyncpg.Connection, task_id: uuid.UUID, expected: TaskStatus,
                target: TaskStatus, token: uuid.UUID | None) -> InvalidTransition:
    row = await conn.fetchrow(FOUND, task_id)
    found = None if row is None else (TaskStatus(row[0]), row[1])
    return transitions.miss_error(task_id, expected, target, token, found)
