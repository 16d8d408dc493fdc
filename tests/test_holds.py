"""Holding tasks and releasing them: through the service layer, the real console script and
real worker processes (a running stage stopped at its next heartbeat and handed back)."""

from __future__ import annotations

import signal
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from app.db.models import Task, TaskEvent
from app.errors import CannotHold
from app.execution import wakeups
from app.lifecycle import TaskStatus
from app.services import claims, holds
from tests import workerprocs
from tests.factories import make_channel, make_task
from tests.test_cli import Cli, _events, _tasks, assert_one_line_error, channel_id, cli
from tests.workerprocs import Sessions, Workers, eventually, status_of, wait_published

db, queue, workers = workerprocs.db, workerprocs.queue, workerprocs.workers   # fixtures
__all__ = ["cli"]                                                              # a fixture

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


async def _claim(sessions: Sessions) -> uuid.UUID | None:
    async with sessions() as session, session.begin():
        claim = await claims.claim_next(session, worker_id="w", lease_s=30, now=NOW)
    return None if claim is None else claim.task_id


async def test_no_claim_takes_a_held_task_and_a_release_frees_it(
        db: tuple[str, Sessions]) -> None:
    _, sessions = db
    async with sessions() as session, session.begin():
        channel = await make_channel(session)
        first = await make_task(session, channel)
        errored = await make_task(session, channel, TaskStatus.video_error, retry_at=NOW,
                                  failed_stage="video")
        later = await make_task(session, channel)
        done = await make_task(session, channel, TaskStatus.published)
    async with sessions() as session, session.begin():
        held = await holds.hold(session, [first.id, errored.id], actor="cli:ops",
                                reason="wrong script", now=NOW)
        assert held == [first.id, errored.id]
        again = await holds.hold(session, [first.id], actor="cli:ops", reason=None, now=NOW)
        assert again == []                                   # already on hold: left as it is
        with pytest.raises(CannotHold, match="published"):
            await holds.hold(session, [later.id, done.id], actor="cli:ops", reason=None, now=NOW)
    async with sessions() as session:
        blocked = (await claims.claimable(session, now=NOW)).blocked
        assert blocked[claims.BLOCKED_HOLD] == 2
        assert (await session.get(Task, later.id)).hold_since is None    # type: ignore[union-attr]
    assert await _claim(sessions) == later.id
    assert await _claim(sessions) is None                    # both others are on hold

    async with sessions() as session, session.begin():
        assert await holds.release(session, [first.id, later.id], actor="cli:ops",
                                   reason="fixed", now=NOW) == [first.id]
    assert await _claim(sessions) == first.id
    async with sessions() as session:
        notes = (await session.execute(
            sa.select(TaskEvent.from_status, TaskEvent.to_status, TaskEvent.actor, TaskEvent.note)
            .where(TaskEvent.task_id == first.id).order_by(TaskEvent.id))).all()
    assert notes[:2] == [(TaskStatus.queued, TaskStatus.queued, "cli:ops", "hold: wrong script"),
                         (TaskStatus.queued, TaskStatus.queued, "cli:ops", "release: fixed")]


async def test_hold_and_release_through_the_console_script(cli: Cli) -> None:
    cid = channel_id()
    async with cli.sessions() as session, session.begin():
        owner = await make_channel(session, channel_id=cid)
        first, *rest = [await make_task(session, owner, title=title)
                        for title in ("First", "Second", "Third\x1b[31m")]
        published = (await make_task(session, owner, TaskStatus.published)).id
    channel, others, first = owner.id, [t.id for t in rest], first.id

    one = cli("hold", str(first)[:8], "--reason", "wrong voice", "--json")
    assert one.code == 0, one
    assert [t["task_id"] for t in one.json()["held"]] == [str(first)]
    shown = cli("show", str(first))
    assert "on hold" in shown.out and "wrong voice" in shown.out
    listed = cli("list", "--held", "--channel", cid)
    assert str(first) in listed.out and "held" in listed.out
    assert str(others[0]) not in listed.out

    preview = cli("hold", "--status", "queued", "--channel", cid, "--dry-run")
    assert preview.code == 0 and "2 task(s) would be held, 0 already on hold" in preview.out
    assert "\x1b" not in preview.out and "Third\\x1b[31m" in preview.out
    assert [t.hold_since for t in await _tasks(cli, channel_id=channel)].count(None) == 3

    rerun = cli("hold", str(first), *map(str, others))
    assert rerun.code == 0 and "2 task(s) held, 1 already on hold" in rerun.out
    stats = cli("stats")
    assert "on hold" in stats.out

    # Bad input: one line, exit 2, nothing changed (the good names included).
    assert_one_line_error(cli("hold", str(uuid.uuid4()), str(first)), "not found",
                          "nothing was held")
    assert_one_line_error(cli("hold", str(published)), "a finished task cannot be held")
    assert_one_line_error(cli("release", str(first), "--channel", cid),
                          "--channel goes with --status")
    usage = cli("hold", "--status", "published")
    assert usage.code == 2 and usage.err.startswith("usage: pipeline hold"), usage

    freed = cli("release", "--status", "queued", "--channel", cid, "--reason", "re-recorded",
                "--json")
    assert freed.code == 0
    assert len(freed.json()["released"]) == 3
    assert all(t.hold_since is None for t in await _tasks(cli, channel_id=channel))
    history = [(e.actor, e.note) for e in await _events(cli, first)]
    assert history[-2][1] == "hold: wrong voice" and history[-1][1] == "release: re-recorded"
    assert history[-1][0].startswith("cli")
    again = cli("release", str(first))
    assert again.code == 0 and "0 task(s) released, 1 not on hold" in again.out


async def test_a_running_stage_is_handed_back_at_its_next_heartbeat(
        db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str) -> None:
    """A hold of a task mid-stage: the worker stops the stage at its next heartbeat and hands
    it back (no error state, no attempt spent); a burst worker leaves it alone; once
    released, a worker takes the stage over and the task is published."""
    _, sessions = db
    [task_id] = await workerprocs.seed(sessions, [None], per_channel=1)
    slow = workers.start(SIMULATED_STAGE_SECONDS="120", LEASE_SECONDS="3")
    await wakeups.wake_url(redis_url, 1, queue_name=queue)

    async def in_stage() -> bool:
        status, holder = await status_of(sessions, task_id)
        return status is TaskStatus.generating_assets and holder is not None

    await eventually(in_stage, timeout_s=60, what="the worker in its first stage")
    async with sessions() as session, session.begin():
        assert await holds.hold(session, [task_id], actor="cli:ops", reason="check",
                                now=datetime.now(UTC)) == [task_id]

    async def handed_back() -> bool:
        return await status_of(sessions, task_id) == (TaskStatus.generating_assets, None)

    await eventually(handed_back, timeout_s=30, what="the stage handed back")
    await slow.wait_for_line("is on hold", timeout_s=10)
    assert slow.alive
    slow.proc.send_signal(signal.SIGTERM)
    assert await slow.exited(timeout_s=30) == 0
    burst = workers.start((*workerprocs.PIPELINE_WORKER, "--burst"))
    assert await burst.exited(timeout_s=60) == 0
    assert "1 blocked (1 on hold)" in burst.text()
    async with sessions() as session:
        task = await session.get(Task, task_id)
        assert task is not None
        assert (task.status, task.attempts, task.claim_token) == (
            TaskStatus.generating_assets, 0, None)
        assert task.error_log is None and task.hold_since is not None

    workers.start(**workerprocs.FAST)
    async with sessions() as session, session.begin():
        assert await holds.release(session, [task_id], actor="cli:ops", reason=None,
                                   now=datetime.now(UTC)) == [task_id]
    await wakeups.wake_url(redis_url, 1, queue_name=queue)
    await wait_published(sessions, 1, timeout_s=60)
    path = [(e.from_status, e.to_status, e.note) for e in await workerprocs.events(sessions,
                                                                                    task_id)]
    assert (TaskStatus.generating_assets, TaskStatus.generating_assets,
            "handed back: on hold") in path
    assert not any(dst.value.endswith("_error") for _, dst, _ in path)
    assert (TaskStatus.generating_assets, TaskStatus.generating_assets,
            "claim: taken over") in path
