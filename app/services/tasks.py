"""Tasks: idempotent enqueue, look-ups and history. Never commits.

Enqueue is one ``INSERT … ON CONFLICT (notion_page_id)``: the database decides between insert
and update, and a re-sent page never moves its status backwards (only ``draft → queued``
forwards, through ``transitions.transition``).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import statements
from app.db.models import Task, TaskEvent
from app.errors import AmbiguousTask, BadTaskRef, TaskNotFound
from app.lifecycle import ACTIVE, TaskStatus
from app.schemas import TaskCreate
from app.services import channels, transitions


class Outcome(enum.StrEnum):
    created = "created"
    updated = "updated"
    unchanged = "unchanged"


#: Tasks a worker holds now: in an active state, with its claim token (a stage handed back is
#: active with none). The status comes first so the condition reads ``ix_tasks_status``.
HELD = sa.and_(Task.status.in_(ACTIVE), Task.claim_token.is_not(None))

@dataclass(frozen=True)
class EnqueueResult:
    task_id: uuid.UUID
    status: TaskStatus
    outcome: Outcome
    #: True when this call made the task runnable (created queued, or draft → queued).
    queued_now: bool


async def enqueue(session: AsyncSession, data: TaskCreate, *, actor: str) -> EnqueueResult:
    """Create the task for a Notion page, or update the page's fields if it exists.

    A page sent as ``queued`` whose task is still ``draft`` is queued; any other status is left
    as it is. Raises ``ChannelNotFound`` / ``ChannelInactive`` before writing anything.
    """
    channel = await channels.get_channel(session, data.channel, require_active=True)
    new_id = uuid.uuid4()
    fields = {"notion_page_id": data.notion_page_id, "channel_id": channel.id,
              "title": data.title, "topic": data.topic,
              "story_direction": data.story_direction, "priority": data.priority}
    stmt = statements.upsert_task(session.get_bind().dialect.name, new_id=new_id, fields=fields,
                               status=data.status)
    row = (await session.execute(stmt)).one_or_none()
    if row is not None and row.id == new_id:
        session.add(TaskEvent(task_id=new_id, from_status=None, to_status=data.status,
                              actor=actor, note="created"))
        return EnqueueResult(new_id, data.status, Outcome.created,
                             data.status is TaskStatus.queued)
    outcome = Outcome.updated if row is not None else Outcome.unchanged
    task_id, status = row if row is not None else await _id_and_status(session, data)
    if status is TaskStatus.draft and data.status is TaskStatus.queued:
        await transitions.transition(session, task_id, TaskStatus.queued, actor=actor,
                                     note="queued", expected=TaskStatus.draft)
        return EnqueueResult(task_id, TaskStatus.queued, Outcome.updated, True)
    return EnqueueResult(task_id, status, outcome, False)


async def _id_and_status(session: AsyncSession, data: TaskCreate) -> tuple[uuid.UUID, TaskStatus]:
    row = (await session.execute(sa.select(Task.id, Task.status)
                                 .where(Task.notion_page_id == data.notion_page_id))).one()
    return row.id, row.status


async def get_task(session: AsyncSession, task_id: uuid.UUID) -> Task:
    task = await session.get(Task, task_id)
    if task is None:
        raise TaskNotFound(task_id)
    return task


#: The shortest task id prefix accepted (8 hex digits: one in four billion ids share one).
MIN_PREFIX = 8
_HEX = frozenset("0123456789abcdef")


async def find_task(session: AsyncSession, ref: str) -> uuid.UUID:
    """The task ``ref`` names: its id, a unique prefix of it (8 hex digits or more, dashes
    allowed), or its Notion page id (with or without dashes). ``TaskNotFound``,
    ``AmbiguousTask`` or ``BadTaskRef``."""
    digits = ref.strip().replace("-", "").lower()
    if not digits or set(digits) - _HEX:
        raise BadTaskRef(ref, "not a task id, an id prefix or a Notion page id (hex digits)")
    if len(digits) > 32:
        raise BadTaskRef(ref, "longer than a task id")
    if len(digits) < MIN_PREFIX:
        raise BadTaskRef(ref, f"an id prefix needs at least {MIN_PREFIX} hex digits")
    if len(digits) == 32:
        found = set(await session.scalars(sa.select(Task.id).where(sa.or_(
            Task.id == uuid.UUID(digits), Task.notion_page_id == digits))))
        if len(found) == 1:
            return found.pop()
        if found:
            raise AmbiguousTask(ref, sorted(found))
        raise TaskNotFound(ref)
    # A prefix is a range of the primary key: ids sort as their hex digits do.
    low, high = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
    matches = list(await session.scalars(sa.select(Task.id).where(Task.id.between(low, high))
                                         .order_by(Task.id).limit(4)))
    if not matches:
        raise TaskNotFound(ref)
    if len(matches) > 1:
        raise AmbiguousTask(ref, matches)
    return matches[0]


async def list_tasks(
    session: AsyncSession, *, statuses: list[TaskStatus] | None = None,
    channel_id: str | None = None, search: str | None = None, page_id: str | None = None,
    newest_first: bool = False, limit: int | None = None, offset: int = 0,
    on_hold: bool | None = None, after: tuple[datetime, uuid.UUID] | None = None,
) -> list[Task]:
    """Tasks by creation time (oldest first unless ``newest_first``), filtered by status,
    YouTube channel id, a text in the title (any case), Notion page id and/or hold.
    ``after`` (a task's ``(created_at, id)``) starts past that task in this order: a keyset
    page, which neither skips nor repeats a task when others are added between pages."""
    order = (Task.created_at.desc(), Task.id.desc()) if newest_first else (Task.created_at,
                                                                          Task.id)
    stmt = sa.select(Task).order_by(*order)
    if statuses:
        stmt = stmt.where(Task.status.in_(statuses))
    if channel_id is not None:
        channel = await channels.get_channel(session, channel_id)
        stmt = stmt.where(Task.channel_id == channel.id)
    if search:
        stmt = stmt.where(Task.title.icontains(search, autoescape=True))
    if page_id is not None:
        stmt = stmt.where(Task.notion_page_id == page_id.replace("-", "").strip().lower())
    if on_hold is not None:
        stmt = stmt.where(Task.hold_since.is_not(None) if on_hold else Task.hold_since.is_(None))
    if after is not None:
        key = sa.tuple_(Task.created_at, Task.id)
        stmt = stmt.where(key < sa.tuple_(*after) if newest_first else key > sa.tuple_(*after))
    if offset:
        stmt = stmt.offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(await session.scalars(stmt))


async def history(session: AsyncSession, task_id: uuid.UUID) -> list[TaskEvent]:
    """The task's events in the order they happened."""
    await get_task(session, task_id)
    stmt = sa.select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
    return list(await session.scalars(stmt))
