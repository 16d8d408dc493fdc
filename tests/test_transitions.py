"""Every one of the 26x26 status pairs, through the service layer and through raw SQL, on
PostgreSQL and SQLite: legal moves succeed (with an event row), illegal ones are refused and the
row is left unchanged."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import lifecycle
from app.db.models import Task, TaskEvent
from app.errors import InvalidTransition, StaleClaim, TaskNotFound
from app.lifecycle import TaskStatus
from app.services import transitions
from tests import dbtools
from tests.factories import make_channel, make_task

PAIRS = list(itertools.product(TaskStatus, TaskStatus))
Sessions = async_sessionmaker[AsyncSession]


def _pair_id(pair: tuple[TaskStatus, TaskStatus]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


async def _task_in(sessions: Sessions, status: TaskStatus) -> uuid.UUID:
    async with sessions() as session, session.begin():
        task = await make_task(session, await make_channel(session), status)
        return task.id


async def _row(sessions: Sessions, task_id: uuid.UUID) -> tuple[TaskStatus, int]:
    async with sessions() as session:
        status = await session.scalar(sa.select(Task.status).where(Task.id == task_id))
        events = await session.scalar(
            sa.select(sa.func.count()).where(TaskEvent.task_id == task_id))
        assert status is not None and events is not None
        return status, events


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
async def test_service_pair(sessions: Sessions, pair: tuple[TaskStatus, TaskStatus]) -> None:
    src, dst = pair
    task_id = await _task_in(sessions, src)
    if lifecycle.is_allowed(src, dst):
        async with sessions() as session, session.begin():
            task = await transitions.transition(session, task_id, dst, actor="test", note="n")
            assert task.status is dst
        assert await _row(sessions, task_id) == (dst, 1)
    else:
        with pytest.raises(InvalidTransition):
            async with sessions() as session, session.begin():
                await transitions.transition(session, task_id, dst, actor="test")
        assert await _row(sessions, task_id) == (src, 0)


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
async def test_raw_sql_pair(sessions: Sessions, pair: tuple[TaskStatus, TaskStatus]) -> None:
    src, dst = pair
    task_id = await _task_in(sessions, src)
    raw = sa.text("UPDATE tasks SET status = :dst WHERE id = :id")
    params = {"dst": dst.value, "id": task_id if _is_pg(sessions) else task_id.hex}
    if src is dst or lifecycle.is_allowed(src, dst):
        async with sessions() as session, session.begin():
            assert (await session.execute(raw, params)).rowcount == 1  # type: ignore[attr-defined]
        assert (await _row(sessions, task_id))[0] is dst
    else:
        with pytest.raises(DBAPIError, match="illegal task transition"):
            async with sessions() as session, session.begin():
                await session.execute(raw, params)
        assert (await _row(sessions, task_id))[0] is src


def _is_pg(sessions: Sessions) -> bool:
    bind = sessions.kw["bind"]
    return bool(bind.dialect.name == "postgresql")


async def test_database_allowed_set_equals_python_table(pg_sessions: Sessions) -> None:
    """The guard function installed by the migration agrees with ``lifecycle`` on all pairs."""
    async with pg_sessions() as session:
        rows = await session.execute(sa.text(
            "SELECT f::text, t::text FROM unnest(enum_range(NULL::taskstatus)) f,"
            " unnest(enum_range(NULL::taskstatus)) t WHERE task_transition_allowed(f, t)"))
        in_db = {(TaskStatus(f), TaskStatus(t)) for f, t in rows}
    assert in_db == set(lifecycle.allowed_pairs())


async def test_expected_status_must_match(sessions: Sessions) -> None:
    task_id = await _task_in(sessions, TaskStatus.queued)
    with pytest.raises(InvalidTransition, match="expected draft, found queued"):
        async with sessions() as session, session.begin():
            await transitions.transition(session, task_id, TaskStatus.queued, actor="t",
                                         expected=TaskStatus.draft)
    assert await _row(sessions, task_id) == (TaskStatus.queued, 0)


async def test_claim_token_fences_writes(sessions: Sessions) -> None:
    token = uuid.uuid4()
    async with sessions() as session, session.begin():
        task = await make_task(session, await make_channel(session),
                               TaskStatus.generating_video, claim_token=token)
    with pytest.raises(StaleClaim):
        async with sessions() as session, session.begin():
            await transitions.transition(session, task.id, TaskStatus.video_ready, actor="w",
                                         expected=TaskStatus.generating_video,
                                         claim_token=uuid.uuid4())
    async with sessions() as session, session.begin():
        done = await transitions.transition(session, task.id, TaskStatus.video_ready, actor="w",
                                            expected=TaskStatus.generating_video,
                                            claim_token=token)
    assert done.claim_token is None and done.lease_expires_at is None
    with pytest.raises(StaleClaim, match="the task is video_ready now"):    # a late duplicate
        async with sessions() as session, session.begin():
            await transitions.transition(session, task.id, TaskStatus.video_error, actor="w",
                                         expected=TaskStatus.generating_video,
                                         claim_token=token)


async def test_unknown_task(sessions: Sessions) -> None:
    with pytest.raises(TaskNotFound):
        async with sessions() as session, session.begin():
            await transitions.transition(session, uuid.uuid4(), TaskStatus.queued, actor="t")


async def test_error_log_appends_and_published_time(sessions: Sessions) -> None:
    task_id = await _task_in(sessions, TaskStatus.uploading)
    async with sessions() as session, session.begin():
        await transitions.transition(session, task_id, TaskStatus.upload_error, actor="w",
                                     note="quota exceeded")
    async with sessions() as session, session.begin():
        await transitions.transition(session, task_id, TaskStatus.uploading, actor="w")
        await transitions.transition(session, task_id, TaskStatus.upload_error, actor="w",
                                     note="timeout")
    async with sessions() as session, session.begin():
        await transitions.transition(session, task_id, TaskStatus.uploading, actor="w")
        task = await transitions.transition(session, task_id, TaskStatus.published, actor="w")
    lines = (task.error_log or "").splitlines()
    assert len(lines) == 2
    assert "upload_error (from uploading): quota exceeded" in lines[0]
    assert lines[1].endswith("timeout")
    assert task.published_at is not None


async def test_concurrent_transitions_exactly_one_wins(pg_sessions: Sessions) -> None:
    """Two movers of one task from the same status: the row lock serialises them and the
    loser's ``WHERE status = :from`` matches nothing once the winner commits."""
    task_id = await _task_in(pg_sessions, TaskStatus.queued)

    async def mover(name: str) -> str:
        try:
            async with pg_sessions() as session, session.begin():
                await transitions.transition(session, task_id, TaskStatus.claimed, actor=name,
                                             expected=TaskStatus.queued)
            return "won"
        except InvalidTransition:
            return "lost"

    async with pg_sessions() as first, first.begin():
        await transitions.transition(first, task_id, TaskStatus.claimed, actor="a",
                                     expected=TaskStatus.queued)
        second = asyncio.create_task(mover("b"))
        await dbtools.wait_for_lock_waiters(pg_sessions, 1)  # b is blocked on a's row lock
    assert await second == "lost"
    assert await _row(pg_sessions, task_id) == (TaskStatus.claimed, 1)
