"""Strict turns: among channels with claimable work at the same priority, no channel gets its
(k+1)-th pick-up while another still waits for its k-th, however many claimers run at once:
in one process (many concurrent claims, as one worker's jobs make) and across worker
processes. Pick-ups are judged in the order their claim events were written."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa

from app.config import Settings
from app.db import make_pool
from app.db.hotpool import HotPool
from app.db.models import Channel, Task, TaskEvent
from app.execution import hotpath, wakeups
from app.lifecycle import PriorityLevel, TaskStatus
from app.moves import utcnow
from app.services import quotas
from tests.workerprocs import (
    PIPELINE_WORKER,
    Sessions,
    Workers,
    db,
    eventually,
    queue,
    seed,
    workers,
)

__all__ = ["db", "queue", "workers"]     # fixtures

S = TaskStatus


def violations(picks: Sequence[str], totals: dict[str, int]) -> list[str]:
    """Where the pick-up order breaks strict turns: a channel's (k+1)-th pick-up while another
    channel with work left still had fewer than k."""
    counts: Counter[str] = Counter()
    found = []
    for n, channel in enumerate(picks):
        k = counts[channel]
        behind = [other for other in totals if other != channel
                  and counts[other] < k and counts[other] < totals[other]]
        if behind:
            found.append(f"pick {n}: {channel} took its pick {k + 1} while {behind} had fewer")
        counts[channel] += 1
    return found


def test_the_judge_sees_a_second_pick_before_a_first() -> None:
    assert violations(["a", "b", "a", "b"], {"a": 2, "b": 2}) == []
    assert violations(["a", "a", "b"], {"a": 2, "b": 1}) != []
    assert violations(["a", "a", "b"], {"a": 2, "b": 0}) == []      # b had no work


async def _pickups(sessions: Sessions, channel_ids: Sequence[uuid.UUID]) -> list[str]:
    """The channels of the pick-ups of queued tasks, in the order their events were written."""
    async with sessions() as session:
        rows = await session.execute(
            sa.select(Channel.channel_id).select_from(TaskEvent)
            .join(Task, Task.id == TaskEvent.task_id).join(Channel, Channel.id == Task.channel_id)
            .where(TaskEvent.from_status == S.queued, Task.channel_id.in_(channel_ids))
            .order_by(TaskEvent.id))
        return list(rows.scalars())


async def _trial_channels(sessions: Sessions, channels: int, per_channel: int) -> tuple[
        list[uuid.UUID], dict[str, int]]:
    async with sessions() as session, session.begin():
        await session.execute(sa.update(Channel).values(is_active=False))
    await seed(sessions, [None] * channels, per_channel, spaced=True,
               priority=PriorityLevel.normal)
    async with sessions() as session:
        rows = (await session.execute(
            sa.select(Channel.id, Channel.channel_id).where(Channel.is_active))).all()
    return [r.id for r in rows], {r.channel_id: per_channel for r in rows}


async def _drain(pool: HotPool, channel_ids: list[uuid.UUID], *, claimers: int) -> None:
    """``claimers`` concurrent claim loops until the channels' queued tasks are all taken. A
    claim may find every channel with work held by the others: like a worker's next wake-up,
    it tries again a moment later."""
    async def claimer() -> None:
        while True:
            async with pool.acquire() as conn:
                held = await hotpath.claim(conn, worker_id="w", lease_s=30, now=utcnow())
                if held is None and not await conn.fetchval(
                        "SELECT count(*) FROM tasks WHERE status = 'queued'"
                        " AND channel_id = ANY($1::uuid[])", channel_ids):
                    return
            await asyncio.sleep(0 if held is not None else 0.001)

    await asyncio.gather(*(claimer() for _ in range(claimers)))


async def test_many_claimers_in_one_process_take_strict_turns(
        db: tuple[str, Sessions], settings: Settings) -> None:
    """Ten concurrent claims at a time (a worker's default concurrency), claiming as fast as
    they can, over 25 trials of five channels with six tasks each (one priority): not one
    pick-up out of turn."""
    url, sessions = db
    assert await _claim_trials(url, sessions, settings, trials=25) == []


async def _claim_trials(url: str, sessions: Sessions, settings: Settings, *,
                        trials: int) -> list[str]:
    """Trials of five fresh channels with six tasks each, drained by ten concurrent claim
    loops; the violations seen."""
    pool = make_pool(settings, url, max_size=10)
    seen: list[str] = []
    try:
        for _ in range(trials):
            ids, totals = await _trial_channels(sessions, 5, 6)
            await _drain(pool, ids, claimers=10)
            picks = await _pickups(sessions, ids)
            assert len(picks) == 30
            seen += violations(picks, totals)
    finally:
        await pool.close()
    return seen


async def test_strict_turns_hold_with_quotas(db: tuple[str, Sessions],
                                            settings: Settings) -> None:
    """Every pick-up counted against a per-channel quota and a shared one (neither spent), ten
    claims at a time: the turns are those without quotas."""
    url, sessions = db
    async with sessions() as session, session.begin():
        await quotas.set_quota(session, stage="assets", per_channel=True, max_starts=10_000,
                               window_s=3600)
        await quotas.set_quota(session, stage="all", per_channel=False, max_starts=10_000,
                               window_s=3600)
    assert await _claim_trials(url, sessions, settings, trials=10) == []
    async with sessions() as session:
        counted = await session.scalar(sa.text(
            "SELECT sum(cardinality(starts)) FROM quota_usage u JOIN quotas q"
            " ON q.id = u.quota_id WHERE q.per_channel"))
    assert counted == 300


async def _all_at_the_gate(sessions: Sessions, channel_ids: list[uuid.UUID]) -> bool:
    async with sessions() as session:
        done = await session.scalar(
            sa.select(sa.func.count()).select_from(Task)
            .where(Task.channel_id.in_(channel_ids), Task.status == S.assets_ready))
    return done == 6 * len(channel_ids)


async def _worker_trials(sessions: Sessions, workers: Workers, redis_url: str, queue: str,
                         *, processes: int, trials: int) -> list[str]:
    """Worker processes at their default concurrency, each trial four fresh channels with six
    queued tasks each that stop at the assets gate; the violations seen."""
    for _ in range(processes):
        workers.start(PIPELINE_WORKER, WORKER_CONCURRENCY="10", AUTO_APPROVE_GATES="")
    for process in workers.processes:
        await process.started()
    seen: list[str] = []
    for _ in range(trials):
        ids, totals = await _trial_channels(sessions, 4, 6)
        await wakeups.wake_url(redis_url, 10 * processes, queue_name=queue)

        await eventually(functools.partial(_all_at_the_gate, sessions, ids), timeout_s=60,
                         what="24 tasks at the assets gate", every_s=0.05)
        seen += violations(await _pickups(sessions, ids), totals)
    return seen


async def test_one_worker_at_its_default_concurrency_takes_strict_turns(
        db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str) -> None:
    assert await _worker_trials(db[1], workers, redis_url, queue, processes=1,
                                trials=6) == []


async def test_several_worker_processes_take_strict_turns(
        db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str) -> None:
    assert await _worker_trials(db[1], workers, redis_url, queue, processes=3,
                                trials=6) == []


async def test_a_late_claim_still_takes_the_task_of_its_turn(
        db: tuple[str, Sessions], settings: Settings) -> None:
    """A pick-up's claim that runs late (its process descheduled between the two steps) takes
    the task its pick reserved, under its own number: a later pick-up of the same channel
    cannot take that task first, and the channel offers nothing more while its last task is
    reserved. Before reservations the late claim found nothing and gave its turn back, so the
    channel's pick-up landed after the other channel's next one."""
    url, sessions = db
    await seed(sessions, [None, None], 2, spaced=True, priority=PriorityLevel.normal)
    pool = make_pool(settings, url, max_size=2)
    try:
        async with pool.acquire() as conn:
            async def pick() -> tuple[uuid.UUID, int, uuid.UUID] | None:
                row = await conn.fetchrow("SELECT * FROM pick_channel(now(), true)")
                return None if row is None else (row["channel"], row["ticket"], row["task"])

            async def claim(picked: tuple[uuid.UUID, int, uuid.UUID]) -> uuid.UUID | None:
                channel, ticket, task = picked
                return await conn.fetchval(  # type: ignore[no-any-return]
                    "SELECT task_id FROM claim_task('w', 30, now(), $1, true, $2, $3)",
                    task, channel, ticket)

            first, other, again = await pick(), await pick(), await pick()
            assert first and other and again
            assert first[0] == again[0] != other[0] and first[2] != again[2]
            assert await claim(again) == again[2]          # the later claim runs first
            assert await claim(other) == other[2]
            last = await pick()            # the other channel's (alone: nothing reserved)
            assert last is not None and last[0] == other[0]
            taken = await claim(last)
            assert taken is not None and taken not in (first[2], again[2])
            assert await pick() is None                    # the first's task is reserved
            assert await claim(first) == first[2]          # late, and still its own task
            events = await conn.fetch(
                "SELECT id, task_id FROM task_events WHERE from_status = 'queued' ORDER BY id")
    finally:
        await pool.close()
    assert [(e["id"], e["task_id"]) for e in events] == [
        (first[1], first[2]), (other[1], other[2]), (again[1], again[2]), (last[1], taken)]
