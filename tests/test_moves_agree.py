"""One rulebook, two renderings: for every stage and outcome the worker's hot path (asyncpg)
and the service layer (SQLAlchemy) leave identical rows and events, and the claim function
takes every runnable state where ``app.moves.claim_target`` says. Real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import lifecycle, moves
from app.db.hotpool import HotPool
from app.db.models import Channel, Task, TaskEvent
from app.execution import hotpath
from app.lifecycle import STAGES, TaskStatus
from app.moves import Claim
from app.services import claims, transitions
from tests.factories import make_channel, make_task

Sessions = async_sessionmaker[AsyncSession]
S = TaskStatus
NOW = moves.utcnow().replace(microsecond=0) - timedelta(hours=1)
#: Columns that differ between any two tasks, whatever was done to them.
OWN = {"id", "notion_page_id", "created_at", "updated_at"}

#: outcome → (hot path call, service call), each given the held claim.
HotCall = Callable[[asyncpg.Connection, Claim], Awaitable[object]]
ServiceCall = Callable[[AsyncSession, Claim], Awaitable[object]]
ART = {"uri": "sim://x", "youtube_url": "https://youtu.be/abc"}
OUTCOMES: dict[str, tuple[HotCall, ServiceCall]] = {
    "finish": (
        lambda c, h: hotpath.finish(c, h, artefacts=ART, actor="w", now=NOW),
        lambda s, h: claims.finish_stage(s, h, artefacts=ART, actor="w", now=NOW)),
    "fail": (
        lambda c, h: hotpath.fail(c, h, message="boom", actor="w", now=NOW, max_attempts=3,
                                  backoff_s=5),
        lambda s, h: claims.fail_stage(s, h, actor="w", message="boom", now=NOW,
                                       max_attempts=3, backoff_s=5)),
    "hand back": (
        lambda c, h: hotpath.hand_back(c, h, reason="worker stopping", actor="w", now=NOW),
        lambda s, h: claims.hand_back(s, h, actor="w", reason="worker stopping", now=NOW)),
}


async def _held_twins(sessions: Sessions, status: TaskStatus, attempt: int) -> list[Claim]:
    """Two tasks in ``status``, alike in every rule-relevant column, each held by a claim."""
    held = []
    async with sessions() as session, session.begin():
        channel = await make_channel(session)
        for _ in range(2):
            token = uuid.uuid4()
            task = await make_task(session, channel, status, claim_token=token,
                                   claimed_by="w", claimed_at=NOW, attempts=attempt,
                                   stage_runs=attempt + 2, error_log="earlier line",
                                   artifacts={"before": {"k": 1}},
                                   lease_expires_at=NOW + timedelta(minutes=5))
            held.append(Claim(task.id, status, status, token, attempt, attempt + 2))
    return held


async def _row_and_events(sessions: Sessions, task_id: uuid.UUID) -> tuple[
        dict[str, Any], list[tuple[Any, ...]]]:
    async with sessions() as session:
        task = await session.get(Task, task_id)
        assert task is not None
        row = {c.key: getattr(task, c.key) for c in sa.inspect(Task).mapper.column_attrs
               if c.key not in OWN}
        events = [tuple(r) for r in await session.execute(
            sa.select(TaskEvent.from_status, TaskEvent.to_status, TaskEvent.actor,
                      TaskEvent.note, TaskEvent.created_at)
            .where(TaskEvent.task_id == task_id).order_by(TaskEvent.id))]
    return row, events


@pytest.mark.parametrize("outcome", list(OUTCOMES))
@pytest.mark.parametrize("attempt", [1, 3], ids=["attempts-left", "last-attempt"])
@pytest.mark.parametrize("stage", STAGES, ids=lambda st: st.name)
async def test_hot_path_and_services_leave_identical_rows(
        pg_sessions: Sessions, pg_pool: HotPool, stage: lifecycle.Stage, attempt: int,
        outcome: str) -> None:
    by_hot_path, by_service = await _held_twins(pg_sessions, stage.active, attempt)
    hot, service = OUTCOMES[outcome]
    async with pg_pool.acquire() as conn:
        await hot(conn, by_hot_path)
    async with pg_sessions() as session, session.begin():
        await service(session, by_service)
    row, events = await _row_and_events(pg_sessions, by_hot_path.task_id)
    assert (row, events) == await _row_and_events(pg_sessions, by_service.task_id)
    assert len(events) == 1
    expected = {"finish": stage.done, "fail": stage.error, "hand back": stage.active}[outcome]
    assert row["status"] is expected


async def _claim_one(pool: HotPool, task_id: uuid.UUID, *, start: bool) -> Claim | None:
    async with pool.acquire() as conn:
        return await hotpath.claim(conn, worker_id="w", lease_s=30, now=moves.utcnow(),
                                   task_id=task_id, start=start)


def _case_id(case: tuple[tuple[TaskStatus, str | None, bool], TaskStatus]) -> str:
    (status, failed, start), _ = case
    return f"{status.value}-{failed}-{'start' if start else 'claim'}"


@pytest.mark.parametrize("case", list(moves.claim_targets().items()), ids=_case_id)
async def test_the_claim_function_takes_each_state_where_the_rule_says(
        pg_sessions: Sessions, pg_pool: HotPool,
        case: tuple[tuple[TaskStatus, str | None, bool], TaskStatus]) -> None:
    (status, failed, start), target = case
    async with pg_sessions() as session, session.begin():
        task = await make_task(session, await make_channel(session), status,
                               failed_stage=failed, attempts=1,
                               retry_at=NOW if status in lifecycle.ERROR else None)
    held = await _claim_one(pg_pool, task.id, start=start)
    assert held is not None and held.status is target
    row, _ = await _row_and_events(pg_sessions, task.id)
    assert (row["status"], row["claim_token"], row["failed_stage"], row["retry_at"]) == (
        target, held.token, None, None)
    assert row["attempts"] == (1 if target is S.claimed else 2) == held.attempt


async def test_an_errored_task_without_history_resumes_and_does_not_block_its_channel(
        pg_sessions: Sessions, pg_pool: HotPool) -> None:
    """Walked to an error state by legal raw updates (no failed stage, no events), requeued:
    the next claim takes it at the earliest stage of its kind, and the one after takes the
    task queued behind it (the channel is not passed over)."""
    async with pg_sessions() as session, session.begin():
        await session.execute(sa.update(Channel).values(is_active=False))   # only this one
        channel = await make_channel(session)
        stuck = await make_task(session, channel, S.queued)
        behind = await make_task(session, channel, S.queued,
                                 created_at=moves.utcnow() + timedelta(seconds=1))
    async with pg_sessions() as session, session.begin():
        for status in (S.claimed, S.generating_assets, S.asset_error):
            await session.execute(sa.text("UPDATE tasks SET status = :s WHERE id = :id"),
                                  {"s": status.value, "id": stuck.id})
        await session.execute(sa.delete(TaskEvent).where(TaskEvent.task_id == stuck.id))
    async with pg_sessions() as session, session.begin():
        plan = await transitions.requeue(session, stuck.id, actor="ops", reason="retry")
    assert plan.resumes_at is S.generating_assets
    async with pg_pool.acquire() as conn:
        first = await hotpath.claim(conn, worker_id="w", lease_s=30, now=moves.utcnow())
        second = await hotpath.claim(conn, worker_id="w", lease_s=30, now=moves.utcnow())
    assert first is not None and (first.task_id, first.status) == (stuck.id,
                                                                   S.generating_assets)
    assert first.attempt == 1                       # the requeue's fresh budget
    assert second is not None and second.task_id == behind.id
