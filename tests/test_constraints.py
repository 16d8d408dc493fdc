"""What the database itself enforces: FK actions, uniqueness, NOT NULLs, lengths, timestamps.

Run on both dialects where SQLite can enforce the same thing (it ignores VARCHAR lengths, so
over-long input is refused by the schemas there, see ``test_schemas``)."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Channel, Task, TaskEvent
from app.lifecycle import TaskStatus
from tests.factories import make_channel, make_task, page_id

Sessions = async_sessionmaker[AsyncSession]


def _key(sessions: Sessions, value: uuid.UUID) -> object:
    """Raw SQL parameters: SQLite stores UUIDs as 32 hex chars."""
    return value if sessions.kw["bind"].dialect.name == "postgresql" else value.hex


async def _channel_with_task(sessions: Sessions) -> tuple[Channel, Task]:
    async with sessions() as session, session.begin():
        channel = await make_channel(session)
        task = await make_task(session, channel)
        session.add(TaskEvent(task_id=task.id, to_status=TaskStatus.queued, actor="t"))
    return channel, task


async def test_channel_delete_restricted_tasks_intact(sessions: Sessions) -> None:
    channel, task = await _channel_with_task(sessions)
    with pytest.raises(IntegrityError):
        async with sessions() as session, session.begin():
            await session.execute(sa.delete(Channel).where(Channel.id == channel.id))
    async with sessions() as session:
        assert await session.get(Task, task.id) is not None


async def test_task_delete_cascades_to_events(sessions: Sessions) -> None:
    _, task = await _channel_with_task(sessions)
    async with sessions() as session, session.begin():
        await session.execute(sa.delete(Task).where(Task.id == task.id))
    async with sessions() as session:
        count = await session.scalar(
            sa.select(sa.func.count()).where(TaskEvent.task_id == task.id))
        assert count == 0


async def test_notion_page_id_unique(sessions: Sessions) -> None:
    pid = page_id()
    async with sessions() as session, session.begin():
        channel = await make_channel(session)
        await make_task(session, channel, notion_page_id=pid)
    with pytest.raises(IntegrityError):
        async with sessions() as session, session.begin():
            await make_task(session, channel, notion_page_id=pid)


@pytest.mark.parametrize("column", ["channel_id", "notion_page_id", "title", "status",
                                    "priority"])
async def test_not_null(sessions: Sessions, column: str) -> None:
    async with sessions() as session, session.begin():
        channel = await make_channel(session)
    values = {"id": uuid.uuid4(), "channel_id": channel.id, "notion_page_id": page_id(),
              "title": "t", "status": "queued", "priority": "normal"}
    values[column] = None
    with pytest.raises(IntegrityError):
        async with sessions() as session, session.begin():
            await session.execute(sa.insert(Task).values(values))


async def test_over_long_title_refused(pg_sessions: Sessions) -> None:
    async with pg_sessions() as session, session.begin():
        channel = await make_channel(session)
    with pytest.raises(DBAPIError, match="too long"):
        async with pg_sessions() as session, session.begin():
            await make_task(session, channel, title="x" * 256)


async def test_unknown_enum_value_refused(sessions: Sessions) -> None:
    _, task = await _channel_with_task(sessions)
    with pytest.raises(DBAPIError):
        async with sessions() as session, session.begin():
            await session.execute(sa.text("UPDATE tasks SET priority = 'urgent' WHERE id = :id"),
                                  {"id": _key(sessions, task.id)})


async def test_updated_at_moves_on_raw_update_created_at_does_not(sessions: Sessions) -> None:
    _, task = await _channel_with_task(sessions)
    old = sa.text("UPDATE tasks SET created_at = '2000-01-01', updated_at = '2000-01-01'"
                  " WHERE id = :id")
    async with sessions() as session, session.begin():
        # Try to age the row; PostgreSQL's trigger pins created_at and sets updated_at anyway.
        await session.execute(old, {"id": _key(sessions, task.id)})
    async with sessions() as session:
        before = (await session.execute(sa.select(Task.created_at, Task.updated_at)
                                        .where(Task.id == task.id))).one()
    async with sessions() as session, session.begin():
        await session.execute(sa.text("UPDATE tasks SET title = 'renamed' WHERE id = :id"),
                              {"id": _key(sessions, task.id)})
    async with sessions() as session:
        after = (await session.execute(sa.select(Task.created_at, Task.updated_at)
                                       .where(Task.id == task.id))).one()
    assert after.created_at == before.created_at
    assert after.updated_at > before.updated_at


async def test_event_ids_never_reused(sessions: Sessions) -> None:
    _, task = await _channel_with_task(sessions)
    async with sessions() as session, session.begin():
        first = TaskEvent(task_id=task.id, to_status=TaskStatus.queued, actor="t")
        session.add(first)
        await session.flush()
        first_id = first.id
        await session.delete(first)
    async with sessions() as session, session.begin():
        second = TaskEvent(task_id=task.id, to_status=TaskStatus.queued, actor="t")
        session.add(second)
        await session.flush()
        assert second.id > first_id


async def test_claim_start_in_one_write_only_as_a_claim(pg_sessions: Sessions) -> None:
    """``queued → generating_assets`` is the path through ``claimed`` that a claim starting its
    stage takes in one write (``lifecycle.CLAIM_STARTS``): the guard passes it only when the
    write is a claim's (a new claim token, a worker, a lease, one more attempt)."""
    _, task = await _channel_with_task(pg_sessions)
    move = "UPDATE tasks SET status = 'generating_assets'{claim} WHERE id = :id"
    async with pg_sessions() as session, session.begin():       # a token from an old claim
        await session.execute(sa.text("UPDATE tasks SET claim_token = gen_random_uuid()"
                                      " WHERE id = :id"), {"id": task.id})
    claim = {"claim_token": "gen_random_uuid()", "claimed_by": "'w1'",
             "lease_expires_at": "now() + interval '30 seconds'", "attempts": "attempts + 1"}
    refused = [{}, {**claim, "claim_token": "claim_token"}, {**claim, "claim_token": "NULL"},
               *({k: v for k, v in claim.items() if k != left_out} for left_out in claim)]
    for values in refused:
        sets = "".join(f", {column} = {value}" for column, value in values.items())
        with pytest.raises(DBAPIError, match="illegal task transition queued -> generating_assets"):
            async with pg_sessions() as session, session.begin():
                await session.execute(sa.text(move.format(claim=sets)), {"id": task.id})
    async with pg_sessions() as session, session.begin():
        sets = "".join(f", {column} = {value}" for column, value in claim.items())
        await session.execute(sa.text(move.format(claim=sets)), {"id": task.id})
    async with pg_sessions() as session:
        moved = await session.get(Task, task.id)
        assert moved is not None and moved.status is TaskStatus.generating_assets
        assert (moved.claimed_by, moved.attempts) == ("w1", 1)


async def test_a_carry_in_one_write_only_as_a_boundary_writes_it(pg_sessions: Sessions) -> None:
    """``generating_video → generating_audio`` is the path through ``video_ready`` and
    ``video_approved`` that a stage boundary carrying its task straight on takes in one write
    (``lifecycle.CARRIES``): the guard passes it only with a new claim token, a worker, a lease
    and a fresh attempt budget."""
    _, task = await _channel_with_task(pg_sessions)
    async with pg_sessions() as session, session.begin():
        for status in ("claimed", "generating_assets", "assets_ready", "assets_approved",
                       "generating_composites", "composites_ready", "generating_video"):
            await session.execute(sa.text("UPDATE tasks SET status = :s WHERE id = :id"),
                                  {"s": status, "id": task.id})
        await session.execute(sa.text("UPDATE tasks SET claim_token = gen_random_uuid(),"
                                      " attempts = 2, stage_runs = 2 WHERE id = :id"),
                              {"id": task.id})
    move = "UPDATE tasks SET status = 'generating_audio'{carry} WHERE id = :id"
    carry = {"claim_token": "gen_random_uuid()", "claimed_by": "'w1'",
             "lease_expires_at": "now() + interval '30 seconds'", "attempts": "1",
             "stage_runs": "1"}
    refused = [{}, {**carry, "claim_token": "claim_token"}, {**carry, "attempts": "3"},
               *({k: v for k, v in carry.items() if k != left_out} for left_out in carry)]
    for values in refused:
        sets = "".join(f", {column} = {value}" for column, value in values.items())
        with pytest.raises(DBAPIError,
                           match="illegal task transition generating_video -> generating_audio"):
            async with pg_sessions() as session, session.begin():
                await session.execute(sa.text(move.format(carry=sets)), {"id": task.id})
    async with pg_sessions() as session, session.begin():
        sets = "".join(f", {column} = {value}" for column, value in carry.items())
        await session.execute(sa.text(move.format(carry=sets)), {"id": task.id})
    async with pg_sessions() as session:
        moved = await session.get(Task, task.id)
        assert moved is not None and moved.status is TaskStatus.generating_audio
