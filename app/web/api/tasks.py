"""``GET /api/tasks`` (``pipeline list``'s filters, a page at a time), ``GET
/api/tasks/{ref}`` (``pipeline show``) and ``POST /api/tasks`` (``pipeline enqueue`` of a
JSON batch: the same judgement of each item, the good ones go in)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Query
from sqlalchemy.ext.asyncio import AsyncSession

from app.commands import enqueue, rows
from app.db import session_scope
from app.db.models import Channel, Task
from app.errors import PipelineError
from app.lifecycle import TaskStatus
from app.schemas import TaskEventResponse, TaskInDB
from app.services import claims, tasks
from app.web import pagination
from app.web.api.context import Ctx, rehearsal
from app.web.models import (
    MAX_PAGE,
    EnqueueBody,
    EnqueuedTask,
    EnqueueResult,
    ItemError,
    TaskDetail,
    TaskItem,
    TaskPage,
)

reads = APIRouter(tags=["tasks"])
writes = APIRouter(tags=["tasks"])


@reads.get("/tasks", response_model=TaskPage)
async def list_tasks(
    ctx: Ctx,
    status: Annotated[list[TaskStatus] | None, Query(description="repeat for several")] = None,
    channel: Annotated[str | None, Query(description="YouTube channel id")] = None,
    search: Annotated[str | None, Query(description="titles containing it (any case)")] = None,
    page_id: Annotated[str | None, Query(description="the task of this Notion page")] = None,
    held: Annotated[bool, Query(description="only tasks on hold")] = False,
    sort: Annotated[Literal["oldest", "newest"], Query()] = "oldest",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(description="`next` of the page before")] = None,
) -> TaskPage:
    """Tasks by creation time, as ``pipeline list`` filters them; ``next`` is the cursor of
    the following page (tasks added meanwhile neither shift nor repeat a page)."""
    newest = sort == "newest"
    after = pagination.decode(cursor, newest_first=newest) if cursor else None
    async with session_scope(ctx.sessions) as session:
        found = await tasks.list_tasks(session, statuses=status, channel_id=channel,
                                       search=search, page_id=page_id, newest_first=newest,
                                       limit=limit + 1, on_hold=True if held else None,
                                       after=after)
        names = await _channel_names(session)
    page = found[:limit]
    last = page[-1] if len(found) > limit else None
    return TaskPage(
        tasks=[_item(t, names[t.channel_id]) for t in page],
        next=pagination.encode(last.created_at, last.id, newest_first=newest) if last else None)


async def _channel_names(session: AsyncSession) -> dict[object, str]:
    pairs = await session.execute(sa.select(Channel.id, Channel.channel_id))
    return dict(pairs.tuples().all())


def _item(task: Task, channel: str) -> TaskItem:
    return TaskItem.model_validate({**TaskInDB.model_validate(task).__dict__,
                                    "channel": channel})


@reads.get("/tasks/{ref}", response_model=TaskDetail)
async def get_task(ctx: Ctx, ref: str) -> TaskDetail:
    """One task by id, unique id prefix (8+ hex digits) or Notion page id, as ``pipeline
    show`` finds it: its fields, artefacts by stage, error log and history."""
    async with session_scope(ctx.sessions) as session:
        task = await tasks.get_task(session, await tasks.find_task(session, ref))
        events = await tasks.history(session, task.id)
        channel = await session.get(Channel, task.channel_id)
        quota = await claims.quota_slot(session, task)
    assert channel is not None    # tasks.channel_id is a NOT NULL foreign key
    return TaskDetail.model_validate({
        **_item(task, channel.channel_id).__dict__, "quota_slot_at": quota,
        "events": [TaskEventResponse.model_validate(e) for e in events]})


@writes.post("/tasks", response_model=EnqueueResult)
async def enqueue_tasks(ctx: Ctx, body: EnqueueBody) -> EnqueueResult:
    """Enqueue a batch judged as ``pipeline enqueue`` judges a JSON file: each bad item is
    reported with its index and why, the good ones go in (idempotent on ``notion_page_id``).
    A dry run reports what would go in and keeps nothing."""
    parsed = rows.parse("tasks", json.dumps(body.tasks).encode())
    async with session_scope(ctx.sessions) as session:
        active = dict((await session.execute(
            sa.select(Channel.channel_id, Channel.is_active))).tuples().all())
    good, bad = enqueue.validate(parsed.rows, active)
    if body.dry_run:
        outcomes = await _rehearse(ctx, good)
    else:
        outcomes = await ctx.each(good, _enqueue_step(ctx.actor), label="enqueue",
                                  chunk=enqueue.CHUNK)
    done: list[EnqueuedTask] = []
    for (number, data), result in outcomes:
        if isinstance(result, PipelineError):      # e.g. the channel deactivated meanwhile
            bad.append(enqueue.RowError(number, enqueue.field_of(result), str(result)))
            continue
        done.append(EnqueuedTask(index=number - 1, task_id=result.task_id,
                                 notion_page_id=data.notion_page_id, status=result.status,
                                 outcome=result.outcome.value, queued_now=result.queued_now))
    queued = sum(1 for t in done if t.queued_now)
    if not body.dry_run:
        await ctx.wake(queued)
    outcome = Counter(t.outcome for t in done)
    return EnqueueResult(
        dry_run=body.dry_run, created=outcome["created"], updated=outcome["updated"],
        unchanged=outcome["unchanged"], queued=queued, tasks=done,
        errors=[ItemError(index=e.row - 1, field=e.field, message=e.message)
                for e in sorted(bad, key=lambda e: e.row)])


Outcomes = list[tuple[enqueue.Good, tasks.EnqueueResult | PipelineError]]


def _enqueue_step(actor: str) -> Callable[[AsyncSession, enqueue.Good],
                                          Awaitable[tasks.EnqueueResult]]:
    async def step(session: AsyncSession, item: enqueue.Good) -> tasks.EnqueueResult:
        return await tasks.enqueue(session, item[1], actor=actor)
    return step


async def _rehearse(ctx: Ctx, good: list[enqueue.Good]) -> Outcomes:
    """Every good item enqueued in one transaction, each in a savepoint, then rolled back."""
    step = _enqueue_step(ctx.actor)
    outcomes: Outcomes = []
    async with rehearsal(ctx.sessions) as session:
        for item in good:
            try:
                async with session.begin_nested():
                    outcomes.append((item, await step(session, item)))
            except PipelineError as exc:
                outcomes.append((item, exc))
    return outcomes
