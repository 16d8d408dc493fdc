"""Concurrency-critical statements, one function per statement, each clause's why in a comment.

Everything that decides who may write a task — the guarded status update, the idempotent
upsert — is built here so it can be reviewed (and EXPLAINed) in one place. Ordinary reads stay
in the services as ORM queries. ``now`` is always a parameter: tests and the reaper inject it.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import ReturningUpdate

from app.db.models import Task, utc_now
from app.lifecycle import TaskStatus


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


def append_error_line(line: str) -> sa.ColumnElement[str | None]:
    """``error_log`` grows by one line inside the UPDATE itself (no read-modify-write race)."""
    return sa.func.coalesce(Task.error_log + "\n", "") + line


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
