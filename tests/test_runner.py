"""The runner in-process, with handlers of the test's own: per-stage lease lengths."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.hotpool import HotPool
from app.db.models import Task, TaskEvent
from app.execution.runner import Runner
from app.handlers import StageInput
from app.lifecycle import STAGE_BY_NAME, TaskStatus
from app.services import transitions
from tests.factories import make_channel, make_task

Sessions = async_sessionmaker[AsyncSession]


def test_stage_lease_overrides_are_validated() -> None:
    settings = Settings(_env_file=None, LEASE_SECONDS=20,  # type: ignore[call-arg]
                        stage_lease_seconds="upload=300, video=90")
    assert settings.lease_for(TaskStatus.uploading) == 300
    assert settings.lease_for(TaskStatus.generating_video) == 90
    assert settings.lease_for(TaskStatus.generating_assets) == 20
    assert settings.lease_for(TaskStatus.claimed) == 20
    for bad, reason in (("vid=3", "stage among"), ("upload=soon", "not a number"),
                        ("upload=0", "longer than 0"), ("upload", "stage=seconds")):
        with pytest.raises(ValueError, match=reason):
            Settings(_env_file=None, stage_lease_seconds=bad)  # type: ignore[call-arg]


async def test_each_stage_runs_under_its_own_lease(pg_sessions: Sessions,
                                                  pg_pool: HotPool) -> None:
    """Leases seen from inside the stages: the override for assets and upload (one reached
    from ``claimed``, one claimed straight into its stage), the default for the others."""
    settings = Settings(_env_file=None, LEASE_SECONDS=7,  # type: ignore[call-arg]
                        stage_lease_seconds="assets=300,upload=120", AUTO_APPROVE_GATES="all")
    seen: dict[str, float] = {}

    async def lease_left(task: StageInput) -> dict[str, Any]:
        async with pg_sessions() as session:
            row = (await session.execute(sa.select(Task.lease_expires_at, sa.func.now())
                                         .where(Task.id == task.task_id))).one()
        expires, now = row
        assert isinstance(expires, datetime)
        seen[task.stage] = (expires - now).total_seconds()
        return {"youtube_url": "https://youtu.be/x"} if task.stage == "upload" else {}

    runner = Runner(settings, pg_sessions, {name: lease_left for name in STAGE_BY_NAME},
                    pg_pool)
    async with pg_sessions() as session, session.begin():
        task = await make_task(session, await make_channel(session), TaskStatus.queued)
    lease = await runner.claim(task.id)
    assert lease is not None
    await runner.run(lease)
    async with pg_sessions() as session:
        assert await transitions.current_status(session, task.id) is TaskStatus.published
    assert 250 < seen["assets"] <= 300 and 100 < seen["upload"] <= 120
    assert all(0 < seen[name] <= 7 for name in ("composites", "video", "audio", "sfx",
                                                 "assembly"))


async def test_a_stage_carried_on_while_its_job_is_cancelled_is_handed_back(
        pg_sessions: Sessions, pg_pool: HotPool) -> None:
    """The job is cancelled while its stage's boundary write waits (another transaction holds
    the task's row): the write still lands, carrying the task into its next stage, and that
    stage is handed back at once (no holder, no attempt spent), not left to its lease."""
    settings = Settings(_env_file=None, AUTO_APPROVE_GATES="all")  # type: ignore[call-arg]

    async def done(task: StageInput) -> dict[str, Any]:
        return {"stage": task.stage}

    runner = Runner(settings, pg_sessions, {name: done for name in STAGE_BY_NAME}, pg_pool)
    async with pg_sessions() as session, session.begin():
        task = await make_task(session, await make_channel(session), TaskStatus.queued)
    lease = await runner.claim(task.id)
    assert lease is not None and lease.claim.status is TaskStatus.generating_assets
    async with pg_sessions() as blocker:
        await blocker.execute(sa.select(Task.id).where(Task.id == task.id).with_for_update())
        running = asyncio.create_task(runner.run(lease))
        async with pg_sessions() as watcher:
            waiting = sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type ="
                              " 'Lock' AND query LIKE '%stage_boundar%'")
            async with asyncio.timeout(30):
                while not (await watcher.execute(waiting)).scalar_one():
                    await watcher.rollback()      # a fresh snapshot of the activity view
                    await asyncio.sleep(0.01)
        running.cancel()
        await blocker.rollback()                  # the write goes on
    with pytest.raises(asyncio.CancelledError):
        await running
    async with pg_sessions() as session:
        row = (await session.execute(sa.select(Task).where(Task.id == task.id))).scalar_one()
        notes = (await session.execute(
            sa.select(TaskEvent.to_status, TaskEvent.note).where(TaskEvent.task_id == task.id)
            .order_by(TaskEvent.id))).all()
    assert row.status is TaskStatus.generating_composites
    assert (row.claim_token, row.claimed_by, row.attempts) == (None, None, 0)
    assert row.artifacts == {"assets": {"stage": "assets"}}
    assert notes[-2:] == [(TaskStatus.generating_composites, "claim"),
                          (TaskStatus.generating_composites,
                           "handed back: claimed as the worker stopped")]
    assert task.id not in runner.running
