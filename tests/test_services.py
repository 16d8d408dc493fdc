"""The service layer admin scripts use: channels, idempotent enqueue, approve, requeue."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Task, TaskEvent
from app.errors import (
    ChannelExists,
    ChannelInactive,
    ChannelNotFound,
    InvalidTransition,
    TaskNotFound,
)
from app.lifecycle import STAGE_BY_NAME, TaskStatus
from app.schemas import ChannelCreate, TaskCreate
from app.services import channels, tasks, transitions
from app.services.tasks import Outcome
from tests.factories import make_channel, make_task, page_id

Sessions = async_sessionmaker[AsyncSession]


async def _channel(sessions: Sessions, **kw: object) -> str:
    async with sessions() as session, session.begin():
        return (await make_channel(session, **kw)).channel_id


def _page(channel: str, **kw: object) -> TaskCreate:
    values: dict[str, object] = {"notion_page_id": page_id(), "channel": channel,
                                 "title": "Deep sea", "topic": "oceans"}
    return TaskCreate.model_validate(values | kw)


async def _enqueue(sessions: Sessions, data: TaskCreate) -> tasks.EnqueueResult:
    async with sessions() as session, session.begin():
        return await tasks.enqueue(session, data, actor="test")


async def _events(sessions: Sessions, task_id: uuid.UUID) -> list[TaskEvent]:
    async with sessions() as session:
        return await tasks.history(session, task_id)


async def test_channels(sessions: Sessions, unique: str) -> None:
    data = ChannelCreate(channel_id=f"UC{unique}", channel_name="Main", max_concurrent=2)
    async with sessions() as session, session.begin():
        created = await channels.create_channel(session, data)
    assert created.is_active and created.max_concurrent == 2
    with pytest.raises(ChannelExists):
        async with sessions() as session, session.begin():
            await channels.create_channel(session, data)
    async with sessions() as session, session.begin():
        await channels.deactivate_channel(session, data.channel_id)
    with pytest.raises(ChannelInactive):
        await _enqueue(sessions, _page(data.channel_id))
    with pytest.raises(ChannelNotFound):
        await _enqueue(sessions, _page("UCnope"))


async def test_enqueue_creates_then_is_idempotent(sessions: Sessions) -> None:
    channel = await _channel(sessions)
    page = _page(channel)
    first = await _enqueue(sessions, page)
    assert (first.outcome, first.status, first.queued_now) == (Outcome.created,
                                                               TaskStatus.queued, True)
    async with sessions() as session:
        before = await session.get(Task, first.task_id)
    again = await _enqueue(sessions, page)
    assert (again.task_id, again.outcome, again.queued_now) == (first.task_id,
                                                                Outcome.unchanged, False)
    async with sessions() as session:
        after = await session.get(Task, first.task_id)
    assert before is not None and after is not None
    assert after.updated_at == before.updated_at          # nothing was rewritten
    assert [e.to_status for e in await _events(sessions, first.task_id)] == [TaskStatus.queued]


async def test_resend_updates_fields_never_moves_status_back(sessions: Sessions) -> None:
    channel = await _channel(sessions)
    page = _page(channel)
    created = await _enqueue(sessions, page)
    async with sessions() as session, session.begin():
        await transitions.transition(session, created.task_id, TaskStatus.claimed, actor="w")
    edited = page.model_copy(update={"title": "Deeper sea", "status": TaskStatus.draft})
    result = await _enqueue(sessions, edited)
    assert (result.outcome, result.status) == (Outcome.updated, TaskStatus.claimed)
    async with sessions() as session:
        task = await session.get(Task, created.task_id)
    assert task is not None and task.title == "Deeper sea" and task.status is TaskStatus.claimed


async def test_draft_then_queued(sessions: Sessions) -> None:
    channel = await _channel(sessions)
    page = _page(channel, status="draft")
    created = await _enqueue(sessions, page)
    assert (created.status, created.queued_now) == (TaskStatus.draft, False)
    queued = await _enqueue(sessions, page.model_copy(update={"status": TaskStatus.queued}))
    assert (queued.status, queued.queued_now) == (TaskStatus.queued, True)
    events = await _events(sessions, created.task_id)
    assert [(e.from_status, e.to_status) for e in events] == [
        (None, TaskStatus.draft), (TaskStatus.draft, TaskStatus.queued)]


async def test_concurrent_enqueue_of_one_page_inserts_once(pg_sessions: Sessions) -> None:
    import asyncio
    channel = await _channel(pg_sessions)
    page = _page(channel)
    results = await asyncio.gather(*(_enqueue(pg_sessions, page) for _ in range(8)))
    assert len({r.task_id for r in results}) == 1
    assert sum(r.outcome is Outcome.created for r in results) == 1


async def test_approve_passes_the_gate(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        task = await make_task(session, await make_channel(session), TaskStatus.video_ready)
    with pytest.raises(InvalidTransition, match="not waiting at assets_ready"):
        async with sessions() as session, session.begin():
            await transitions.approve(session, task.id, actor="cli", gate="assets")
    async with sessions() as session, session.begin():
        approved = await transitions.approve(session, task.id, actor="cli", gate="video")
    assert approved.status is TaskStatus.video_approved
    with pytest.raises(InvalidTransition, match="not waiting at a review gate"):
        async with sessions() as session, session.begin():
            await transitions.approve(session, task.id, actor="cli")


async def _failed_in(sessions: Sessions, stage: str) -> uuid.UUID:
    """A task whose ``stage`` failed: walked through the real transition so history exists."""
    st = STAGE_BY_NAME[stage]
    async with sessions() as session, session.begin():
        task = await make_task(session, await make_channel(session), st.active, attempts=3)
    async with sessions() as session, session.begin():
        await transitions.transition(session, task.id, st.error, actor="w", note="boom")
    return task.id


async def test_requeue_makes_retry_due_and_records_actor_and_reason(sessions: Sessions) -> None:
    task_id = await _failed_in(sessions, "composites")
    async with sessions() as session:
        plan = await transitions.plan_requeue(session, task_id)
    assert (plan.status, plan.stage.name, plan.resumes_at) == (
        TaskStatus.asset_error, "composites", TaskStatus.generating_composites)
    async with sessions() as session, session.begin():
        await transitions.requeue(session, task_id, actor="ops@cli", reason="model fixed")
    async with sessions() as session:
        task = await session.get(Task, task_id)
    assert task is not None
    assert task.status is TaskStatus.asset_error       # a worker takes the retry edge
    assert task.attempts == 0 and task.retry_at is not None
    last = (await _events(sessions, task_id))[-1]
    assert (last.from_status, last.to_status, last.actor) == (
        TaskStatus.asset_error, TaskStatus.asset_error, "ops@cli")
    assert last.note is not None and "model fixed" in last.note and "composites" in last.note


async def test_requeue_refuses_tasks_not_in_error(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        task = await make_task(session, await make_channel(session), TaskStatus.assets_ready)
    with pytest.raises(InvalidTransition, match="not in an error state"):
        async with sessions() as session, session.begin():
            await transitions.requeue(session, task.id, actor="cli")
    with pytest.raises(TaskNotFound):
        async with sessions() as session, session.begin():
            await transitions.requeue(session, uuid.uuid4(), actor="cli")
    assert await _events(sessions, task.id) == []


async def test_requeue_without_history_retries_first_stage_of_that_kind(
        sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        task = await make_task(session, await make_channel(session), TaskStatus.audio_error)
    async with sessions() as session:
        plan = await transitions.plan_requeue(session, task.id)
    assert plan.stage.name == "audio"


async def test_list_and_filters(sessions: Sessions) -> None:
    channel = await _channel(sessions)
    created = [await _enqueue(sessions, _page(channel)) for _ in range(3)]
    async with sessions() as session:
        found = await tasks.list_tasks(session, statuses=[TaskStatus.queued],
                                       channel_id=channel)
        total = await session.scalar(sa.select(sa.func.count()).select_from(Task))
    assert [t.id for t in found] == [c.task_id for c in created]
    assert total is not None and total >= 3
