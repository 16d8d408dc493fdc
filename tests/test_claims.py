"""The claim function in-process: order (priority, FIFO, channel turns), capacity under a held
claim transaction, continuation, retries of errored tasks, and the reaper."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Channel, Task
from app.lifecycle import PriorityLevel, TaskStatus
from app.moves import Renewal
from app.services import claims, transitions
from tests.factories import make_channel, make_task

Sessions = async_sessionmaker[AsyncSession]


async def _isolate(sessions: Sessions) -> None:
    """Claims see every channel: park everything other tests left runnable."""
    async with sessions() as session, session.begin():
        await session.execute(sa.update(Channel).values(is_active=False))


async def _claim(sessions: Sessions, **kw: object) -> claims.Claim | None:
    async with sessions() as session, session.begin():
        return await claims.claim_next(session, worker_id="w", lease_s=30,
                                       now=transitions.utcnow(), **kw)  # type: ignore[arg-type]


async def _drain(sessions: Sessions, n: int) -> list[uuid.UUID]:
    out = []
    for _ in range(n):
        claim = await _claim(sessions)
        assert claim is not None
        out.append(claim.task_id)
    return out


async def test_priority_then_fifo(pg_sessions: Sessions) -> None:
    await _isolate(pg_sessions)
    base = transitions.utcnow() - timedelta(hours=1)
    async with pg_sessions() as session, session.begin():
        channel = await make_channel(session)
        old_low = await make_task(session, channel, priority=PriorityLevel.low, created_at=base)
        normals = [await make_task(session, channel, created_at=base + timedelta(seconds=i))
                   for i in range(3)]
        high = await make_task(session, channel, priority=PriorityLevel.high,
                               created_at=base + timedelta(minutes=5))
    order = await _drain(pg_sessions, 5)
    assert order == [high.id, *(t.id for t in normals), old_low.id]
    assert await _claim(pg_sessions) is None


async def test_one_task_channels_beat_a_backlog(pg_sessions: Sessions) -> None:
    await _isolate(pg_sessions)
    base = transitions.utcnow() - timedelta(hours=1)
    async with pg_sessions() as session, session.begin():
        flood = await make_channel(session)
        for i in range(1000):
            await make_task(session, flood, created_at=base + timedelta(milliseconds=i))
        small = [await make_task(session, await make_channel(session),
                                 created_at=base + timedelta(minutes=10)) for _ in range(9)]
    order = await _drain(pg_sessions, 12)
    async with pg_sessions() as session:
        channel_of = dict((await session.execute(
            sa.select(Task.id, Task.channel_id).where(Task.id.in_(order)))).all())
    flood_positions = [i for i, t in enumerate(order) if channel_of[t] == flood.id]
    assert set(t.id for t in small) <= set(order)
    assert len(flood_positions) >= 3 and flood_positions[2] > max(
        order.index(t.id) for t in small)


async def test_capacity_is_serialised_per_channel(pg_sessions: Sessions) -> None:
    """Worker A holds its claim transaction open on a channel with one free slot: worker B
    takes other work, never a second slot of that channel."""
    await _isolate(pg_sessions)
    async with pg_sessions() as session, session.begin():
        limited = await make_channel(session, max_concurrent=1)
        other = await make_channel(session)
        await make_task(session, limited)
        await make_task(session, limited)
        other_task = await make_task(session, other)
        await session.execute(sa.update(Channel).where(Channel.id == limited.id)
                              .values(turn=None))
        await session.execute(sa.update(Channel).where(Channel.id == other.id)
                              .values(turn=1))
    async with pg_sessions() as a, a.begin():
        first = await claims.claim_next(a, worker_id="A", lease_s=30, now=transitions.utcnow())
        assert first is not None                      # A's slot on the limited channel
        b_claim = await _claim(pg_sessions)           # B, while A's transaction is open
        assert b_claim is not None and b_claim.task_id == other_task.id
    assert await _claim(pg_sessions) is None          # after A commits: the channel is full


async def test_a_channel_at_its_cap_is_left_out_of_the_ranking(pg_sessions: Sessions) -> None:
    """A full channel with the fewest pick-ups and a backlog is neither picked nor locked by a
    pick-up (a lock would read as a pick in flight and hold the others back); a stage handed
    back there is still taken, in its slot."""
    await _isolate(pg_sessions)
    async with pg_sessions() as session, session.begin():
        full = await make_channel(session, max_concurrent=1)
        other = await make_channel(session, picks=5)
        running = await make_task(session, full, TaskStatus.generating_video,
                                  claim_token=uuid.uuid4(), claimed_by="w",
                                  lease_expires_at=transitions.utcnow() + timedelta(minutes=5))
        for _ in range(3):
            await make_task(session, full)
        other_task = await make_task(session, other)
    async with pg_sessions() as a, a.begin():
        claim = await claims.claim_next(a, worker_id="A", lease_s=30, now=transitions.utcnow())
        assert claim is not None and claim.task_id == other_task.id
        async with pg_sessions() as b, b.begin():     # the full channel's row is free
            await b.execute(sa.select(Channel.id).where(Channel.id == full.id)
                            .with_for_update(nowait=True))
    async with pg_sessions() as session, session.begin():   # its holder hands it back
        await session.execute(sa.update(Task).where(Task.id == running.id).values(
            claim_token=None, claimed_by=None, lease_expires_at=None))
    taken = await _claim(pg_sessions)
    assert taken is not None and (taken.task_id, taken.status) == (
        running.id, TaskStatus.generating_video)
    assert await _claim(pg_sessions) is None          # full again: the backlog waits


async def test_concurrent_claimers_never_exceed_capacity(pg_sessions: Sessions) -> None:
    await _isolate(pg_sessions)
    async with pg_sessions() as session, session.begin():
        channel = await make_channel(session, max_concurrent=2)
        for _ in range(20):
            await make_task(session, channel)
    results = await asyncio.gather(*(_claim(pg_sessions) for _ in range(10)))
    assert sum(r is not None for r in results) == 2


async def test_continuation_and_retry_of_failed_stage(pg_sessions: Sessions) -> None:
    await _isolate(pg_sessions)
    async with pg_sessions() as session, session.begin():
        channel = await make_channel(session)
        ready = await make_task(session, channel, TaskStatus.composites_ready)
        failed = await make_task(session, channel, TaskStatus.assembling)
    async with pg_sessions() as session, session.begin():
        await transitions.transition(session, failed.id, TaskStatus.video_error, actor="w")
    claim = await _claim(pg_sessions, task_id=ready.id)
    assert claim is not None and claim.status is TaskStatus.generating_video
    assert await _claim(pg_sessions) is None          # error without a due retry: waits
    async with pg_sessions() as session, session.begin():
        await transitions.requeue(session, failed.id, actor="ops", reason="fixed")
    retry = await _claim(pg_sessions)
    assert retry is not None and (retry.task_id, retry.status) == (failed.id,
                                                                   TaskStatus.assembling)


async def test_reaper_returns_claimed_and_fails_active(pg_sessions: Sessions) -> None:
    await _isolate(pg_sessions)
    past = transitions.utcnow() - timedelta(minutes=1)
    async with pg_sessions() as session, session.begin():
        channel = await make_channel(session)
        claimed = await make_task(session, channel, TaskStatus.claimed, claim_token=uuid.uuid4(),
                                  lease_expires_at=past, claimed_by="dead")
        active = await make_task(session, channel, TaskStatus.generating_audio, attempts=1,
                                 claim_token=uuid.uuid4(), lease_expires_at=past)
        alive = await make_task(session, channel, TaskStatus.uploading, claim_token=uuid.uuid4(),
                                lease_expires_at=past + timedelta(hours=1))
    async with pg_sessions() as session, session.begin():
        reaped = await claims.reap_expired(session, now=transitions.utcnow(), actor="reaper",
                                           max_attempts=3, backoff_s=5)
    assert {(r.task_id, r.to) for r in reaped} == {(claimed.id, TaskStatus.queued),
                                                   (active.id, TaskStatus.audio_error)}
    async with pg_sessions() as session:
        errored = await session.get(Task, active.id)
        untouched = await session.get(Task, alive.id)
    assert errored is not None and errored.retry_at is not None
    assert "lease expired" in (errored.error_log or "")
    assert untouched is not None and untouched.status is TaskStatus.uploading


async def _batch(sessions: Sessions, limit: int, worker: str = "w") -> list[claims.Claim]:
    async with sessions() as session, session.begin():
        return await claims.claim_batch(session, worker_id=worker, lease_s=30,
                                        now=transitions.utcnow(), limit=limit)


async def test_batch_returns_nothing_when_nothing_is_runnable(pg_sessions: Sessions) -> None:
    await _isolate(pg_sessions)
    async with pg_sessions() as session, session.begin():
        channel = await make_channel(session)
        await make_task(session, channel, TaskStatus.draft)
        await make_task(session, channel, TaskStatus.assets_ready)
    assert await _batch(pg_sessions, 5) == []


async def test_batch_respects_capacity(pg_sessions: Sessions) -> None:
    await _isolate(pg_sessions)
    async with pg_sessions() as session, session.begin():
        limited = await make_channel(session, max_concurrent=2)
        other = await make_channel(session)
        await make_task(session, limited, TaskStatus.generating_video, claim_token=uuid.uuid4(),
                        lease_expires_at=transitions.utcnow() + timedelta(minutes=5))
        limited_ids = {(await make_task(session, limited)).id for _ in range(4)}
        other_ids = {(await make_task(session, other)).id for _ in range(3)}
    batch = await _batch(pg_sessions, 10)
    taken = {c.task_id for c in batch}
    assert len(taken & limited_ids) == 1              # one slot left beside the running task
    assert other_ids <= taken and len(batch) == 4
    assert await _batch(pg_sessions, 10) == []


async def test_batch_priority_order_and_fairness(pg_sessions: Sessions) -> None:
    await _isolate(pg_sessions)
    base = transitions.utcnow() - timedelta(hours=1)
    async with pg_sessions() as session, session.begin():
        mixed = await make_channel(session)
        low = await make_task(session, mixed, priority=PriorityLevel.low, created_at=base)
        normal = await make_task(session, mixed, created_at=base + timedelta(seconds=1))
        high = await make_task(session, mixed, priority=PriorityLevel.high,
                               created_at=base + timedelta(seconds=2))
    assert [c.task_id for c in await _batch(pg_sessions, 5)] == [high.id, normal.id, low.id]

    async with pg_sessions() as session, session.begin():
        flood = await make_channel(session)
        for i in range(100):
            await make_task(session, flood, created_at=base + timedelta(milliseconds=i))
        small = [await make_task(session, await make_channel(session),
                                 created_at=base + timedelta(minutes=10)) for _ in range(5)]
    order = [c.task_id for c in await _batch(pg_sessions, 8)]
    small_positions = [order.index(t.id) for t in small]
    flood_positions = [i for i, t in enumerate(order) if t not in {s.id for s in small}]
    assert len(flood_positions) == 3 and flood_positions[2] > max(small_positions)


async def test_concurrent_batches_never_share_a_task(pg_sessions: Sessions) -> None:
    await _isolate(pg_sessions)
    async with pg_sessions() as session, session.begin():
        channels_ = [await make_channel(session) for _ in range(4)]
        ids = {(await make_task(session, c)).id for c in channels_ for _ in range(10)}
    first, second = await asyncio.gather(_batch(pg_sessions, 15, "A"),
                                         _batch(pg_sessions, 15, "B"))
    a, b = {c.task_id for c in first}, {c.task_id for c in second}
    assert not a & b and len(a) == len(first) and len(b) == len(second)
    assert len(a) + len(b) >= 15
    async with pg_sessions() as session:
        claimed = dict((await session.execute(
            sa.select(Task.id, Task.claimed_by).where(Task.id.in_(ids),
                                                      Task.status == TaskStatus.claimed))).all())
    assert set(claimed) == a | b
    assert all(claimed[t] == "A" for t in a) and all(claimed[t] == "B" for t in b)


async def test_renew_lease_holds_only_while_the_token_does(pg_sessions: Sessions) -> None:
    await _isolate(pg_sessions)
    async with pg_sessions() as session, session.begin():
        task = await make_task(session, await make_channel(session))
    claim = await _claim(pg_sessions)
    assert claim is not None and claim.task_id == task.id
    later = transitions.utcnow() + timedelta(minutes=10)
    async with pg_sessions() as session, session.begin():
        assert await claims.renew_lease(session, claim, lease_s=60, now=later) \
            is Renewal.kept
        row = await session.get(Task, task.id)
        assert row is not None and row.lease_expires_at == later + timedelta(seconds=60)
    async with pg_sessions() as session, session.begin():
        await claims.reap_expired(session, now=later + timedelta(minutes=2), actor="reaper",
                                  max_attempts=3, backoff_s=0)
    async with pg_sessions() as session, session.begin():
        assert await claims.renew_lease(session, claim, lease_s=60, now=later) \
            is Renewal.lost
