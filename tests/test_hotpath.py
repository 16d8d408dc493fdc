"""The worker's single-statement calls on asyncpg: claim and start in one commit, finish and
move with their event rows, token fencing, refusals that write nothing, and a dropped
connection recognised as the database being unavailable."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import db
from app.config import Settings
from app.db.hotpool import HotPool
from app.db.models import Channel, Task, TaskEvent
from app.errors import StaleClaim, TaskNotFound
from app.execution import hotpath
from app.lifecycle import TaskStatus
from app.moves import Claim, Renewal
from app.services import claims, transitions
from tests.factories import make_channel, make_task

Sessions = async_sessionmaker[AsyncSession]
S = TaskStatus


async def _fresh(sessions: Sessions, status: TaskStatus = S.queued, **kw: object) -> Task:
    """A task on a new channel, with every other channel parked (claims see only it)."""
    async with sessions() as session, session.begin():
        await session.execute(sa.update(Channel).values(is_active=False))
        return await make_task(session, await make_channel(session), status, **kw)


async def _history(sessions: Sessions, task_id: uuid.UUID) -> list[tuple[object, ...]]:
    async with sessions() as session:
        rows = await session.execute(
            sa.select(TaskEvent.from_status, TaskEvent.to_status, TaskEvent.actor,
                      TaskEvent.note).where(TaskEvent.task_id == task_id)
            .order_by(TaskEvent.id))
        return [tuple(r) for r in rows]


async def _claim(conn: asyncpg.Connection, **kw: Any) -> Claim | None:
    """A claim by worker "w" with a 30 s lease, now."""
    return await hotpath.claim(conn, worker_id="w", lease_s=30, now=transitions.utcnow(),
                                **kw)


async def _task(sessions: Sessions, task_id: uuid.UUID) -> Task:
    async with sessions() as session:
        task = await session.get(Task, task_id)
        assert task is not None
        return task


async def test_claim_starts_a_queued_task_in_one_commit(pg_sessions: Sessions,
                                                        pg_pool: HotPool) -> None:
    task = await _fresh(pg_sessions)
    now = transitions.utcnow()
    async with pg_pool.acquire() as conn:
        held = await hotpath.claim(conn, worker_id="w1", lease_s=30, now=now)
    assert held is not None
    assert (held.task_id, held.from_status, held.status) == (task.id, S.queued,
                                                             S.generating_assets)
    row = await _task(pg_sessions, task.id)
    assert (row.status, row.claim_token, row.claimed_by, row.attempts) == (
        S.generating_assets, held.token, "w1", 1)
    assert row.lease_expires_at is not None
    assert abs((row.lease_expires_at - now).total_seconds() - 30) < 0.01
    assert await _history(pg_sessions, task.id) == [
        (S.queued, S.claimed, "w1", "claim"), (S.claimed, S.generating_assets, "w1", None)]


async def test_claim_without_start_stops_at_claimed(pg_sessions: Sessions,
                                                    pg_pool: HotPool) -> None:
    task = await _fresh(pg_sessions)
    async with pg_pool.acquire() as conn:
        held = await _claim(conn, start=False)
    assert held is not None and (held.task_id, held.status) == (task.id, S.claimed)


async def test_a_pick_that_finds_its_channel_full_is_given_back(pg_sessions: Sessions,
                                                                  pg_pool: HotPool) -> None:
    """Two pick-ups in flight on a channel with one free slot: the first claims, the second
    finds the channel full, gives its pick back and takes nothing; the claimer's next pick
    passes that channel over."""
    async with pg_sessions() as session, session.begin():
        await session.execute(sa.update(Channel).values(is_active=False))
        capped = await make_channel(session, max_concurrent=1)
        other = await make_channel(session)
        base = transitions.utcnow() - timedelta(minutes=1)
        first, _ = [await make_task(session, capped, created_at=base + timedelta(seconds=i))
                    for i in range(2)]
        spare = await make_task(session, other)
        await session.execute(sa.update(Channel).where(Channel.id == other.id)
                              .values(picks=5))      # so the capped channel is picked twice
    now = transitions.utcnow()
    pick = "SELECT channel, ticket FROM pick_channel($1, true)"
    claim = ("SELECT task_id, from_status, to_status, claim_token, attempt, run"
             " FROM claim_task($1, $2, $3, NULL, true, $4, $5)")
    async with pg_pool.acquire() as a, pg_pool.acquire() as b:
        picks = [await a.fetchrow(pick, now) for _ in range(2)]
        assert [p[0] for p in picks] == [capped.id, capped.id]
        claimed = await a.fetchrow(claim, "w", 30, now, *picks[0])
        assert claimed is not None and claimed[0] == first.id
        count = "SELECT picks FROM channels WHERE id = $1"
        before = await a.fetchval(count, capped.id)
        assert await b.fetchrow(claim, "w", 30, now, *picks[1]) is None
        assert await a.fetchval(count, capped.id) == before - 1
        held = await _claim(b)
    assert held is not None and held.task_id == spare.id


async def test_a_carry_keeps_its_slot_without_the_channel_lock_and_stops_at_a_lowered_cap(
        pg_sessions: Sessions, pg_pool: HotPool) -> None:
    """A channel at its cap of two: a stage boundary carries its task on (it keeps the slot it
    holds), even while another transaction holds the channel's row, which a claim of a new slot
    would wait for. Once the cap is lowered to one, the other task's slot is all it allows: the
    next boundary leaves its task resting, runnable, with the success and the move recorded."""
    async with pg_sessions() as session, session.begin():
        await session.execute(sa.update(Channel).values(is_active=False))
        capped = await make_channel(session, max_concurrent=2)
        base = transitions.utcnow() - timedelta(minutes=1)
        for i in range(2):
            await make_task(session, capped, created_at=base + timedelta(seconds=i))
    boundary = {"actor": "w", "lease_s": 30, "auto_approved": frozenset({"assets"}),
                "carry": True}
    async with pg_pool.acquire() as conn, pg_pool.acquire() as other:
        first, second = await _claim(conn), await _claim(conn)
        assert first is not None and second is not None
        async with other.transaction():
            await other.execute("SELECT 1 FROM channels WHERE id = $1 FOR UPDATE", capped.id)
            carried = await asyncio.wait_for(hotpath.boundary(
                conn, first, artefacts={"n": 1}, now=transitions.utcnow(), **boundary), 10)
        assert carried.rest is S.generating_composites and carried.taken is not None
        await conn.execute("UPDATE channels SET max_concurrent = 1 WHERE id = $1", capped.id)
        rested = await hotpath.boundary(conn, carried.taken.claim, artefacts={"n": 2},
                                        now=transitions.utcnow(), **boundary)
    assert (rested.rest, rested.taken) == (S.composites_ready, None)
    row = await _task(pg_sessions, first.task_id)
    assert (row.status, row.claim_token) == (S.composites_ready, None)
    assert [h[:2] for h in await _history(pg_sessions, first.task_id)][-1] == (
        S.generating_composites, S.composites_ready)


async def test_claim_of_a_continuing_task_enters_its_stage(pg_sessions: Sessions,
                                                           pg_pool: HotPool) -> None:
    task = await _fresh(pg_sessions, S.composites_ready)
    async with pg_pool.acquire() as conn:
        held = await _claim(conn, task_id=task.id)
    assert held is not None and held.status is S.generating_video
    assert await _history(pg_sessions, task.id) == [
        (S.composites_ready, S.generating_video, "w", "claim")]


async def test_finish_merges_artefacts_and_ends_the_claim(pg_sessions: Sessions,
                                                          pg_pool: HotPool) -> None:
    task = await _fresh(pg_sessions, artifacts={"earlier": {"k": 1}})
    async with pg_pool.acquire() as conn:
        taken = await hotpath.take(conn, worker_id="w", lease_s=30, now=transitions.utcnow())
        assert taken is not None
        held, loaded = taken.claim, taken.given
        done = await hotpath.finish(conn, held, artefacts={"files": 3},
                                     actor="w", now=transitions.utcnow())
    assert (loaded.title, held.attempt, held.run, loaded.artifacts) == (
        "A video", 1, 1, {"earlier": {"k": 1}})
    assert done is S.assets_ready
    row = await _task(pg_sessions, task.id)
    assert row.status is S.assets_ready and row.attempts == 0
    assert (row.claim_token, row.claimed_by, row.lease_expires_at) == (None, None, None)
    assert row.artifacts == {"earlier": {"k": 1}, "assets": {"files": 3}}


def test_a_stages_input_is_decoded_when_first_read_and_loses_nothing() -> None:
    """The claim's JSON text is kept as read and decoded at the first look (a handler that
    reads nothing pays nothing); integers beyond 64 bits and nesting come back as stored."""
    text = '{"assets": {"files": 3, "size": 123456789012345678901234567890}, "video": null}'
    given = hotpath.Artefacts(text)
    assert given._value is None
    assert len(given) == 2 and given._value is not None
    assert given == {"assets": {"files": 3, "size": 123456789012345678901234567890},
                     "video": None}
    assert given["assets"]["size"] == 123456789012345678901234567890
    assert list(given) == ["assets", "video"] and "video" in given and "audio" not in given
    assert given.get("audio") is None and dict(given)["video"] is None
    with pytest.raises(KeyError):
        given["audio"]
    with pytest.raises(TypeError):
        given["audio"] = {}  # type: ignore[index]  # read-only, as the type says
    assert repr(hotpath.Artefacts("{}")) == "Artefacts({})"


async def test_finishing_the_upload_publishes(pg_sessions: Sessions,
                                              pg_pool: HotPool) -> None:
    task = await _fresh(pg_sessions, S.approved)
    async with pg_pool.acquire() as conn:
        held = await _claim(conn, task_id=task.id)
        assert held is not None and held.status is S.uploading
        await hotpath.finish(conn, held,
                              artefacts={"youtube_url": "https://youtu.be/abc"}, actor="w",
                              now=transitions.utcnow())
    row = await _task(pg_sessions, task.id)
    assert row.status is S.published and row.youtube_url == "https://youtu.be/abc"
    assert row.published_at is not None


async def test_a_reaped_claim_cannot_finish_or_renew(pg_sessions: Sessions,
                                                     pg_pool: HotPool) -> None:
    task = await _fresh(pg_sessions)
    async with pg_pool.acquire() as conn:
        held = await _claim(conn)
    assert held is not None
    async with pg_sessions() as session, session.begin():
        reaped = await claims.reap_expired(session, now=transitions.utcnow() + timedelta(
            minutes=5), actor="reaper", max_attempts=3, backoff_s=0)
    assert (task.id, S.asset_error) in {(r.task_id, r.to) for r in reaped}
    before = await _history(pg_sessions, task.id)
    async with pg_pool.acquire() as conn:
        assert await hotpath.renew(conn, held, lease_s=30, now=transitions.utcnow()) \
            is Renewal.lost
        with pytest.raises(StaleClaim, match="asset_error now"):
            await hotpath.finish(conn, held, artefacts={}, actor="w",
                                  now=transitions.utcnow())
    assert await _history(pg_sessions, task.id) == before
    assert (await _task(pg_sessions, task.id)).status is S.asset_error


async def test_a_boundary_is_checked_before_anything_is_written(
        pg_sessions: Sessions, pg_pool: HotPool) -> None:
    """A boundary of a task that is gone names it; one that was never claimed is refused as
    a lost claim; the task's row and history stay as they were."""
    task = await _fresh(pg_sessions, S.generating_sfx)
    now = transitions.utcnow()
    never = Claim(task.id, S.generating_sfx, S.generating_sfx, uuid.uuid4(), 1, 1)
    async with pg_pool.acquire() as conn:
        with pytest.raises(TaskNotFound):
            await hotpath.boundary(conn, dataclasses.replace(never, task_id=uuid.uuid4()),
                                   artefacts={}, actor="w", lease_s=30, now=now,
                                   auto_approved=frozenset(), carry=True)
        with pytest.raises(StaleClaim):
            await hotpath.boundary(conn, never, artefacts={}, actor="w", lease_s=30, now=now,
                                   auto_approved=frozenset(), carry=True)
        with pytest.raises(TaskNotFound):
            await hotpath.load(conn, uuid.uuid4())
    assert await _history(pg_sessions, task.id) == []
    assert (await _task(pg_sessions, task.id)).status is S.generating_sfx


async def test_a_dropped_connection_reads_as_unavailable(pg_pool: HotPool,
                                                         pg_url: str) -> None:
    """What the runner retries on: the server ending the hot path's connection."""
    async with pg_pool.acquire() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        killer = await asyncpg.connect(**db.connect_kwargs(pg_url))
        try:
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await killer.close()
        with pytest.raises(Exception) as caught:
            await conn.fetchval("SELECT 1")
        assert db.is_unavailable(caught.value), repr(caught.value)
        with pytest.raises(Exception) as again:      # and used once more after that
            await conn.fetchval("SELECT 1")
        assert db.is_unavailable(again.value), repr(again.value)
    async with pg_pool.acquire() as conn:            # the pool replaces it
        assert await conn.fetchval("SELECT 1") == 1


async def test_the_pool_reuses_clean_connections_and_drops_doubtful_ones(
        pg_url: str, settings: Settings) -> None:
    pool = db.make_pool(settings, pg_url, max_size=1)
    pid = "SELECT pg_backend_pid()"
    try:
        async with pool.acquire() as conn:
            first = await conn.fetchval(pid)
        async with pool.acquire() as conn:                 # clean: the same one again
            assert await conn.fetchval(pid) == first
        with pytest.raises(StaleClaim):
            async with pool.acquire() as conn:             # our refusal: still clean
                assert await conn.fetchval(pid) == first
                raise StaleClaim(uuid.uuid4(), S.queued, S.claimed)
        with pytest.raises(RuntimeError):
            async with pool.acquire() as conn:             # anything else: closed
                assert await conn.fetchval(pid) == first
                raise RuntimeError("boom")
        async with pool.acquire() as conn:
            second = await conn.fetchval(pid)
        assert second != first
        async with pool.acquire():                         # size 1: a second caller waits
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2), pool.acquire():
                    pass
    finally:
        await pool.close()
    recycling = HotPool(lambda: asyncpg.connect(**db.connect_kwargs(pg_url)), 1, recycle_s=0)
    try:
        async with recycling.acquire() as conn:
            first = await conn.fetchval(pid)
        async with recycling.acquire() as conn:            # older than recycle_s: replaced
            assert await conn.fetchval(pid) != first
    finally:
        await recycling.close()
