"""Every statement that writes a task, in one place, each named after its guard.

A move's changes come from ``app.moves`` (pure); this module renders them twice, for the two
ways a move reaches the database:

- the worker's hot path (``app.execution.hotpath``): one autocommitted asyncpg statement per
  move that also writes its ``task_events`` row (``move_if_held``), plus
  the claim (the ``claim_task`` function, ``app.db.ddl.claim_task``), the stage boundary (the
  ``stage_boundary`` function, rendered from the same rules: ``app.db.ddl.boundary``), the load
  and the lease renewal;
- the service layer (``app.services``): SQLAlchemy Core (``guarded_update`` with
  ``core_values``), on PostgreSQL and SQLite, in the caller's transaction.

Both renderings of a move write the same row (``tests/test_moves_agree.py``). ``now`` is always
a parameter: tests and the reaper inject it.
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.dml import ReturningUpdate

from app.db.models import Task, TaskEvent, utc_now
from app.lifecycle import TERMINAL, TaskStatus
from app.moves import AppendLine, Changes, MergeArtifact, Move

# --- the hot path (asyncpg, positional parameters) ------------------------------------------

#: Up to ``$5`` pick-ups (``pick_up``: the channels whose turn it is, decided together and
#: committed, then each one's best task); ``$4`` starts a claimed queued task's first stage in
#: the same write. One row of arrays, one element per claim: the claims, then what each stage is
#: given (``titles, topics, story_directions, artifact_sets``); empty when nothing can be
#: claimed.
PICK_UP = "CALL pick_up($1, $2, $3, $4, $5)"

#: ``claim_task`` of one task only, ``$5`` as above; the same row as ``PICK_UP`` (the claim
#: returns the task's fields with it).
CLAIM = ("SELECT task_id, from_status, to_status, claim_token, attempt, run, title, topic,"
         " story_direction, artifacts FROM claim_task($1, $2, $3, $4, $5)")

#: Stage boundaries (``stage_boundaries``, ``app.db.ddl.boundary``): for each task of the
#: arrays ``$1`` to ``$5`` (the rest shared), its stage's success, the automatic moves after it
#: and, with ``$10``, the claim of its next stage; one statement, one commit. One row per task,
#: numbered as the arrays (``n``): where the task rests (NULL when its success was refused),
#: then the row of ``CLAIM`` (NULLs when it was not carried on).
BOUNDARIES = ("SELECT n, rest, task_id, from_status, to_status, claim_token, attempt, run,"
              " title, topic, story_direction, artifacts"
              " FROM stage_boundaries($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")

#: What a stage handler is given of a task (a claim returns the same with the task).
LOAD = "SELECT title, topic, story_direction, artifacts FROM tasks WHERE id = $1"

#: Pause the quotas a start of a stage of the task counts against (``quota_pause``, see
#: ``app.db.ddl.claim_task``): its channel's buckets and the shared ones.
PAUSE_QUOTAS = "SELECT quota_pause(channel_id, $2, $3) FROM tasks WHERE id = $1"

#: Extend the lease while the claim is still this worker's (token and status unchanged); the
#: row says whether an operator put the task on hold meanwhile (``moves.Renewal``).
RENEW_IF_HELD = ("UPDATE tasks SET lease_expires_at = $4"
                 " WHERE id = $1 AND claim_token = $2 AND status = $3"
                 " RETURNING hold_since IS NOT NULL")

#: Why a guarded write matched no row: the task's status and claim now.
FOUND = "SELECT status, claim_token FROM tasks WHERE id = $1"


@functools.lru_cache(maxsize=64)
def _move_sql(shape: tuple[tuple[str, str], ...]) -> str:
    """The text of a guarded move with its event row, for one shape of changes (so each kind
    of move has one text, prepared once per connection). ``$1`` id, ``$2`` current status,
    ``$3`` target, ``$4`` actor, ``$5`` note, ``$6`` now, ``$7`` claim token, then the values of
    the changes."""
    n = 8
    assignments = []
    for column, kind in shape:
        if kind == "append":       # one more line, inside the UPDATE (no read-modify-write)
            assignments.append(f"{column} = coalesce({column} || E'\\n', '') || ${n}")
        elif kind == "merge":      # one stage's output replaced, the others kept
            assignments.append(f"{column} = {column} || jsonb_build_object(${n}::text,"
                               f" ${n + 1}::jsonb)")
            n += 1
        else:
            assignments.append(f"{column} = ${n}")
        n += 1
    return f"""
WITH moved AS (
  UPDATE tasks SET {', '.join(assignments)}
  WHERE id = $1 AND status = $2 AND claim_token = $7
  RETURNING id)
INSERT INTO task_events (task_id, from_status, to_status, actor, note, created_at)
SELECT id, $2, $3, $4, $5, $6 FROM moved RETURNING task_id"""


def _pg_params(changes: Changes) -> tuple[tuple[tuple[str, str], ...], list[Any]]:
    shape: list[tuple[str, str]] = []
    params: list[Any] = []
    for column, value in changes.items():
        if isinstance(value, AppendLine):
            shape.append((column, "append"))
            params.append(value.line)
        elif isinstance(value, MergeArtifact):
            shape.append((column, "merge"))
            params += [value.stage, json.dumps(value.value)]
        else:
            shape.append((column, "value"))
            params.append(value.value if isinstance(value, TaskStatus) else value)
    return tuple(shape), params


def move_if_held(move: Move, task_id: uuid.UUID, token: uuid.UUID, *, actor: str,
                 now: Any) -> tuple[str, list[Any]]:
    """A worker's move of the task it holds: guarded by the status and fenced by the claim
    token, so a worker whose lease was reaped writes nothing. Returns (text, parameters)."""
    shape, values = _pg_params(move.changes)
    return _move_sql(shape), [task_id, move.current.value, move.target.value, actor,
                                    move.note, now, token, *values]


# --- the service layer (SQLAlchemy Core, PostgreSQL and SQLite) -----------------------------


def guarded_update(
    task_id: uuid.UUID, *, expected: TaskStatus, values: dict[str, Any],
    claim_token: uuid.UUID | None = None,
) -> ReturningUpdate[Task]:
    """``UPDATE tasks … WHERE id = :id AND status = :expected [AND claim_token = :token]``.

    The expected status in the WHERE clause makes two concurrent movers of one task race on the
    row lock: the second re-evaluates the predicate after the first commits, matches nothing,
    and gets no row back. The claim token fences out a worker whose lease was reaped.
    """
    conditions = [Task.id == task_id, Task.status == expected]
    if claim_token is not None:
        conditions.append(Task.claim_token == claim_token)
    return (
        sa.update(Task).where(*conditions).values(**values).returning(Task)
        .execution_options(synchronize_session=False)
    )


def core_values(changes: Changes, dialect: str) -> dict[str, Any]:
    """A move's changes as ``UPDATE … SET`` values for SQLAlchemy."""
    values: dict[str, Any] = {}
    for column, value in changes.items():
        if isinstance(value, AppendLine):
            values[column] = append_error_line(value.line)
        elif isinstance(value, MergeArtifact):
            values[column] = merge_artifact(value, dialect)
        else:
            values[column] = value
    return values


def append_error_line(line: str) -> sa.ColumnElement[str | None]:
    """``error_log`` grows by one line inside the UPDATE itself (no read-modify-write race)."""
    return sa.func.coalesce(Task.error_log + "\n", "") + line


def merge_artifact(merge: MergeArtifact, dialect: str) -> sa.ColumnElement[Any]:
    """``artifacts[stage] = value`` inside the UPDATE, the other stages' outputs kept."""
    if dialect == "postgresql":
        return Task.artifacts.op("||")(
            sa.func.jsonb_build_object(merge.stage, sa.literal(dict(merge.value), JSONB)))
    return sa.func.json_set(Task.artifacts, f'$."{merge.stage}"',
                            sa.func.json(json.dumps(merge.value)))


def set_hold(task_ids: list[uuid.UUID], changes: Changes, *,
             on_hold: bool) -> ReturningUpdate[uuid.UUID, TaskStatus]:
    """A hold or a release of ``task_ids`` (``moves.hold`` / ``moves.release``), guarded by
    the hold as the caller saw it (``on_hold``: the tasks are held now), so a task another
    operator changed meanwhile is left alone and not reported. Returns (id, status) written."""
    guard = Task.hold_since.is_not(None) if on_hold else \
        sa.and_(Task.hold_since.is_(None), Task.status.not_in(TERMINAL))
    return (sa.update(Task).where(Task.id.in_(task_ids), guard).values(**changes)
            .returning(Task.id, Task.status).execution_options(synchronize_session=False))


def event(task_id: uuid.UUID, move: Move, *, actor: str, now: Any) -> sa.Insert:
    """The ``task_events`` row of a move (Core: no unit-of-work flush)."""
    return sa.insert(TaskEvent).values(task_id=task_id, from_status=move.current,
                                       to_status=move.target, actor=actor, note=move.note,
                                       created_at=now)


def notes(rows: list[tuple[uuid.UUID, TaskStatus]], *, note: str, actor: str,
          now: Any) -> tuple[sa.Insert, list[dict[str, Any]]]:
    """``task_events`` rows for an action that leaves each task's status as it is (a hold, a
    release), as one multi-row insert: (statement, parameters)."""
    return sa.insert(TaskEvent), [
        {"task_id": task_id, "from_status": status, "to_status": status, "actor": actor,
         "note": note, "created_at": now} for task_id, status in rows]


_UPSERT_FIELDS = ("channel_id", "title", "topic", "story_direction", "priority")


def upsert_task(
    dialect: str, *, new_id: uuid.UUID, fields: dict[str, Any], status: TaskStatus,
) -> sa.Insert:
    """``INSERT … ON CONFLICT (notion_page_id) DO UPDATE`` — idempotent enqueue in one statement.

    - the database arbitrates concurrent senders of one page (never check-then-insert);
    - a conflict updates the page's fields but never its status (moves go through transitions);
    - the ``WHERE … IS DISTINCT FROM`` skips the write entirely when nothing changed, so a
      re-sent page leaves no new row version and no ``updated_at`` bump;
    - RETURNING yields the row only when it was inserted or changed; the caller compares the
      returned id with ``new_id`` to tell an insert from an update.
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Task).values(id=new_id, status=status, **fields)
    excluded = stmt.excluded
    changed = sa.or_(*(getattr(Task, f).is_distinct_from(getattr(excluded, f))
                       for f in _UPSERT_FIELDS))
    return stmt.on_conflict_do_update(
        index_elements=[Task.notion_page_id],
        set_={f: getattr(excluded, f) for f in _UPSERT_FIELDS} | {"updated_at": utc_now()},
        where=changed,
    ).returning(Task.id, Task.status)
