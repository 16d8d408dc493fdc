"""Quotas with real worker processes: no window ever holds more starts than its quota, other
work flows while one is spent, and a provider's rate limit pauses the quota without an error
or a spent attempt. Plus the ``pipeline quota`` commands."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app import moves
from app.config import Settings
from app.db import make_pool
from app.db.models import QuotaUsage, Task, TaskEvent
from app.execution import hotpath
from app.lifecycle import TaskStatus
from app.services import claims, quotas
from tests.workerprocs import (
    REPO,
    Sessions,
    Workers,
    db,
    events,
    queue,
    seed,
    wait_published,
    workers,
)

__all__ = ["db", "queue", "workers"]

WINDOW_S = 3


async def _set(sessions: Sessions, stage: str, limit: int, *, per_channel: bool) -> None:
    async with sessions() as session, session.begin():
        await quotas.set_quota(session, stage=stage, per_channel=per_channel, max_starts=limit,
                               window_s=WINDOW_S)


def _most_in_a_window(starts: list[datetime]) -> int:
    """The most starts any window of ``WINDOW_S`` seconds holds, ending at each start."""
    starts = sorted(starts)
    window = timedelta(seconds=WINDOW_S)
    return max((sum(1 for s in starts if end - window < s <= end) for end in starts), default=0)


async def _starts(sessions: Sessions, status: TaskStatus) -> list[tuple[uuid.UUID, datetime]]:
    """Every start of the stage whose active state is ``status`` (a stage taken over too), with
    the task's channel, from the history."""
    async with sessions() as session:
        rows = (await session.execute(
            sa.select(Task.channel_id, TaskEvent.created_at)
            .join(Task, Task.id == TaskEvent.task_id)
            .where(TaskEvent.to_status == status,
                   sa.or_(TaskEvent.from_status != status,
                          TaskEvent.note == "claim: taken over")))).all()
    return [(row.channel_id, row.created_at) for row in rows]


def _by_channel(starts: list[tuple[uuid.UUID, datetime]]) -> dict[uuid.UUID, list[datetime]]:
    """Starts grouped by channel."""
    grouped: dict[uuid.UUID, list[datetime]] = defaultdict(list)
    for channel, at in starts:
        grouped[channel].append(at)
    return grouped


async def test_no_window_holds_more_starts_than_its_quota(
        db: tuple[str, Sessions], workers: Workers) -> None:
    _, sessions = db
    await seed(sessions, [None, None, None], 4, spaced=True)
    await _set(sessions, "upload", 2, per_channel=True)
    await _set(sessions, "video", 4, per_channel=False)
    for _ in range(4):
        workers.start(WORKER_CONCURRENCY="4")
    await wait_published(sessions, 12, timeout_s=90)

    uploads = await _starts(sessions, TaskStatus.uploading)
    by_channel = _by_channel(uploads)
    assert len(uploads) == 12 and len(by_channel) == 3
    assert all(_most_in_a_window(starts) == 2 for starts in by_channel.values())
    # One channel's spent upload quota held no other channel back.
    assert _most_in_a_window([at for _, at in uploads]) > 2
    videos = await _starts(sessions, TaskStatus.generating_video)
    assert len(videos) == 12
    assert _most_in_a_window([at for _, at in videos]) == 4
    # Other stages ran while the shared video quota was spent: the video starts took at least
    # two windows, and assets or audio started inside them.
    first, last = min(at for _, at in videos), max(at for _, at in videos)
    assert last - first > timedelta(seconds=WINDOW_S)
    others = [at for status in (TaskStatus.generating_audio, TaskStatus.generating_assets)
              for _, at in await _starts(sessions, status)]
    assert any(first < at < last for at in others)


async def test_first_stage_quotas_hold_when_pick_ups_claim_together(
        db: tuple[str, Sessions], workers: Workers) -> None:
    """Queued tasks picked up together are claimed together (``claim_reserved``), each start
    recorded under its buckets' locks: a per-channel and a shared quota on the first stage
    hold in every window with four workers of four claim loops each (each channel's two
    starts a window apart; two starts in the busiest window of all)."""
    _, sessions = db
    await seed(sessions, [None, None, None], 2, spaced=True)
    await _set(sessions, "assets", 1, per_channel=True)
    await _set(sessions, "assets", 2, per_channel=False)
    for _ in range(4):
        workers.start(WORKER_CONCURRENCY="4")
    await wait_published(sessions, 6, timeout_s=90)

    starts = await _starts(sessions, TaskStatus.generating_assets)
    by_channel = _by_channel(starts)
    assert len(starts) == 6 and len(by_channel) == 3
    assert [_most_in_a_window(at) for at in by_channel.values()] == [1, 1, 1], starts
    assert _most_in_a_window([at for _, at in starts]) == 2, starts


async def test_a_shared_first_stage_quota_holds_when_picks_record_together(
        db: tuple[str, Sessions], workers: Workers) -> None:
    """One shared quota on the first stage, four workers of four claim loops each: the picks
    of a pick-up count against the one bucket, which records as many of them as it has room
    for in one write (``quota_admit``), the buckets locked as read. No window holds more than
    the limit, and every task gets through."""
    _, sessions = db
    await seed(sessions, [None, None, None], 3, spaced=True)
    await _set(sessions, "assets", 2, per_channel=False)
    for _ in range(4):
        workers.start(WORKER_CONCURRENCY="4")
    await wait_published(sessions, 9, timeout_s=90)

    starts = await _starts(sessions, TaskStatus.generating_assets)
    assert len(starts) == 9 and len(_by_channel(starts)) == 3
    assert _most_in_a_window([at for _, at in starts]) == 2, starts


async def test_a_lone_first_stage_quota_holds_when_its_bucket_is_locked_by_the_record(
        db: tuple[str, Sessions], workers: Workers) -> None:
    """One quota on the first stage and one claim loop a worker, so every pick-up makes one
    pick: ``claim_reserved`` locks its bucket by the ``UPDATE`` that records the start, reading
    its room on the version it locks. With four workers racing for three channels' buckets, no
    window holds more than the limit: each channel's two starts a window apart."""
    _, sessions = db
    await seed(sessions, [None, None, None], 2, spaced=True)
    await _set(sessions, "assets", 1, per_channel=True)
    for _ in range(4):
        workers.start(WORKER_CONCURRENCY="1")
    await wait_published(sessions, 6, timeout_s=90)

    starts = await _starts(sessions, TaskStatus.generating_assets)
    by_channel = _by_channel(starts)
    assert len(starts) == 6 and len(by_channel) == 3
    assert [_most_in_a_window(at) for at in by_channel.values()] == [1, 1, 1], starts


async def test_rate_limited_pauses_the_quota_and_spends_no_attempt(
        db: tuple[str, Sessions], workers: Workers) -> None:
    _, sessions = db
    [limited, other] = await seed(sessions, [None], 2, spaced=True)
    async with sessions() as session, session.begin():
        await session.execute(sa.update(Task).where(Task.id == limited)
                              .values(title="Video [ratelimit:video:2]"))
        await quotas.set_quota(session, stage="video", per_channel=False, max_starts=100,
                               window_s=3600)
    workers.start(WORKER_CONCURRENCY="1")
    await wait_published(sessions, 2, timeout_s=60)

    history = await events(sessions, limited)
    back = [e for e in history if e.note and e.note.startswith("handed back: rate limited")]
    assert len(back) == 1
    assert not [e for e in history if e.to_status in (TaskStatus.video_error,)]
    async with sessions() as session:
        task = await session.get(Task, limited)
        assert task is not None and not task.error_log
        # The run that met the limit was not counted: the stage's output says run 1.
        assert task.artifacts["video"]["attempt"] == 1
    # No video started anywhere while the shared quota was paused.
    starts = [at for _, at in await _starts(sessions, TaskStatus.generating_video)]
    paused_from = back[0].created_at
    assert not [at for at in starts if paused_from < at < paused_from + timedelta(seconds=1.9)]
    assert other  # the second task went through too (both published)


def _pipeline(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_quota_commands(db: tuple[str, Sessions]) -> None:
    env = os.environ | {"DATABASE_URL": db[0]}
    done = _pipeline("quota", "set", "upload", "6/24h", "--per-channel", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "quota set: upload: 6 starts per 24h per channel"
    again = _pipeline("quota", "set", "upload", "5/24h", "--per-channel", env=env)
    assert again.stdout.strip() == "quota replaced: upload: 5 starts per 24h per channel"
    listed = _pipeline("quota", "list", env=env)
    assert "upload  per-channel      5  24h" in listed.stdout
    for args, message in (
            (("set", "uploads", "6/24h", "--shared"), "stage 'uploads': expected one of"),
            (("set", "upload", "6/day", "--shared"), "'6/day': expected LIMIT/WINDOW"),
            (("set", "upload", "0/1h", "--shared"), "'0/1h': the limit and the window"),
            (("set", "upload", "-1/1h", "--shared"), "'-1/1h': expected LIMIT/WINDOW"),
            (("remove", "video", "--shared"), "no shared quota on video")):
        bad = _pipeline("quota", *args, env=env)
        assert bad.returncode == 2 and bad.stderr.startswith(f"pipeline: {message}"), bad.stderr
    assert _pipeline("quota", "remove", "upload", "--per-channel", env=env).returncode == 0
    assert _pipeline("quota", "list", env=env).stdout.strip() == "no quotas"
    # A bad value is named before the database is looked at (here, one that does not exist).
    gone = env | {"DATABASE_URL": str(make_url(db[0]).set(database="no_such_database"))}
    for args, message in (
            (("set", "uplod", "5/1h", "--shared"), "stage 'uplod': expected one of"),
            (("set", "upload", "5/1w", "--shared"), "'5/1w': expected LIMIT/WINDOW"),
            (("remove", "uplod", "--shared"), "stage 'uplod': expected one of")):
        bad = _pipeline("quota", *args, env=gone)
        assert bad.returncode == 2 and bad.stderr.startswith(f"pipeline: {message}"), bad.stderr


async def test_work_waiting_for_a_quota_is_blocked_not_runnable(db: tuple[str, Sessions]) -> None:
    url, sessions = db
    [first, second] = await seed(sessions, [None], 2, spaced=True)
    async with sessions() as session, session.begin():
        await quotas.set_quota(session, stage="assets", per_channel=True, max_starts=1,
                               window_s=3600)
        channel = await session.scalar(sa.select(Task.channel_id).where(Task.id == first))
        await session.execute(sa.text("SELECT quota_take(:c, 'assets')"), {"c": channel})
        found = await claims.claimable(session, now=moves.utcnow())
        assert found.runnable == 0 and found.blocked == {claims.BLOCKED_QUOTA: 2}
        assert found.next_slot is not None
        # No claim takes the work while the quota is spent.
        assert await claims.claim_next(session, worker_id="w", lease_s=30,
                                       now=moves.utcnow(), start=True) is None
    env = os.environ | {"DATABASE_URL": url}
    stats = _pipeline("stats", env=env)
    assert "runnable now: 0   blocked: 2 quota (next slot " in stats.stdout, stats.stdout
    shown = _pipeline("show", str(second), env=env)
    assert "quota         spent: next slot " in shown.stdout, shown.stdout
    listed = _pipeline("list", env=env)
    assert listed.stdout.count("quota until ") == 2, listed.stdout


async def test_a_stage_handed_back_to_wait_is_not_claimed_before_its_time(
        db: tuple[str, Sessions]) -> None:
    _, sessions = db
    [task_id] = await seed(sessions, [None], 1)
    later = moves.utcnow() + timedelta(minutes=5)
    async with sessions() as session, session.begin():
        for status in (TaskStatus.claimed, TaskStatus.generating_assets):
            await session.execute(sa.update(Task).where(Task.id == task_id)
                                  .values(status=status, retry_at=later))
        found = await claims.claimable(session, now=moves.utcnow())
        assert (found.runnable, found.blocked) == (0, {claims.BLOCKED_RATE_LIMITED: 1})
        assert found.next_slot == later
        assert await claims.claim_next(session, worker_id="w", lease_s=30,
                                       now=moves.utcnow()) is None
        await session.execute(sa.update(Task).where(Task.id == task_id)
                              .values(retry_at=moves.utcnow() - timedelta(seconds=1)))
        assert (await claims.claimable(session, now=moves.utcnow())).runnable == 1
        claim = await claims.claim_next(session, worker_id="w", lease_s=30, now=moves.utcnow())
        assert claim is not None and claim.status is TaskStatus.generating_assets


async def test_buckets_are_cleaned_as_their_windows_pass(db: tuple[str, Sessions]) -> None:
    _, sessions = db
    [task_id] = await seed(sessions, [None], 1)
    async with sessions() as session, session.begin():
        quota, _ = await quotas.set_quota(session, stage="video", per_channel=True,
                                          max_starts=2, window_s=60)
        channel = await session.scalar(sa.select(Task.channel_id).where(Task.id == task_id))
        old, recent = moves.utcnow() - timedelta(minutes=5), moves.utcnow()
        session.add(QuotaUsage(channel_id=channel, quota_id=quota.id, stage="video",
                               starts=[old, recent], paused_until=old, blocked_until=old))
    async with sessions() as session, session.begin():
        assert await quotas.clean(session) == 1
    async with sessions() as session:
        bucket = await session.get(QuotaUsage, (channel, quota.id))
        assert bucket is not None
        assert (bucket.starts, bucket.paused_until, bucket.blocked_until) == ([recent], None,
                                                                             None)
    async with sessions() as session, session.begin():
        assert await quotas.clean(session) == 0        # nothing left to clean


async def test_boundaries_written_together_keep_quotas_and_caps(
        db: tuple[str, Sessions], settings: Settings) -> None:
    """Two stages of one capped channel end together and their boundaries share a statement:
    the composites quota (one start) carries one task on and leaves the other resting,
    runnable; every lock the carries take is taken first, in one order."""
    url, sessions = db
    await _set(sessions, "composites", 1, per_channel=True)
    await seed(sessions, [2], per_channel=2)
    pool = make_pool(settings, url, max_size=2)
    try:
        async with pool.acquire() as conn:
            held = [await hotpath.claim(conn, worker_id="w", lease_s=30, now=moves.utcnow())
                    for _ in range(2)]
            endings = [hotpath.Ending(h, {"n": 1}) for h in held if h is not None]
            assert len(endings) == 2
            results = await hotpath.boundaries(conn, endings, actor="w", lease_s=30,
                                               now=moves.utcnow(),
                                               auto_approved=frozenset({"assets"}), carry=True)
    finally:
        await pool.close()
    rests = sorted(r.rest.value for r in results if isinstance(r, hotpath.Boundary))
    assert rests == ["assets_approved", "generating_composites"]
    async with sessions() as session:
        buckets = (await session.execute(sa.select(QuotaUsage.starts))).scalars().all()
    assert [len(starts) for starts in buckets] == [1]
