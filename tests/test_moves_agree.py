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
from app.errors import StaleClaim
from app.execution import hotpath
from app.lifecycle import STAGE_BY_ACTIVE, STAGES, TaskStatus
from app.moves import Claim
from app.services import claims, transitions
from tests.factories import make_channel, make_task

Sessions = async_sessionmaker[AsyncSession]
S = TaskStatus
NOW = moves.utcnow().replace(microsecond=0) - timedelta(hours=1)
#: Leases here outlast the test run (``NOW`` is an hour ago): no reaper of another test takes
#: these tasks back.
LEASE_S = 2 * 86_400
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
    "boundary": (    # carrying nothing on: the success and the automatic moves, no gate passed
        lambda c, h: hotpath.boundary(c, h, artefacts=ART, actor="w", lease_s=LEASE_S, now=NOW,
                                      auto_approved=frozenset(), carry=False),
        lambda s, h: _finish_and_step(s, h)),
    "hand back": (
        lambda c, h: hotpath.hand_back(c, h, reason="worker stopping", actor="w", now=NOW),
        lambda s, h: claims.hand_back(s, h, actor="w", reason="worker stopping", now=NOW)),
}


async def _finish_and_step(session: AsyncSession, held: Claim) -> None:
    """The success, then the automatic moves after it (no gate is auto-approved)."""
    await claims.finish_stage(session, held, artefacts=ART, actor="w", now=NOW)
    status = STAGE_BY_ACTIVE[held.status].done
    while (step := moves.automatic_step(status, frozenset())):
        await transitions.transition(session, held.task_id, step.target, expected=status,
                                     actor="w", note=step.note, now=NOW)
        status = step.target


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
                                   lease_expires_at=NOW + timedelta(days=2))
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
    stepped = lifecycle.AUTOMATIC.get(stage.done, stage.done)
    assert len(events) == 1 + (outcome == "boundary" and stepped is not stage.done)
    expected = {"finish": stage.done, "boundary": stepped, "fail": stage.error,
                "hand back": stage.active}[outcome]
    assert row["status"] is expected


#: Written by the claim's own clock: differ between any two claims.
CLAIM_OWN = {"claim_token", "claimed_at"}
EVERY_GATE = frozenset(gate.name for gate in lifecycle.GATES)


@pytest.mark.parametrize("stage", STAGES, ids=lambda st: st.name)
async def test_a_stage_boundary_is_the_moves_it_composes(
        pg_sessions: Sessions, pg_pool: HotPool, stage: lifecycle.Stage) -> None:
    """One ``stage_boundary`` call (every gate auto-approved, carried on) leaves the row and
    history that the success, each automatic move and the claim of the next stage leave when
    made one by one."""
    by_boundary, by_moves = await _held_twins(pg_sessions, stage.active, 1)
    async with pg_pool.acquire() as conn:
        done = await hotpath.boundary(conn, by_boundary, artefacts=ART, actor="w", lease_s=LEASE_S,
                                      now=NOW, auto_approved=EVERY_GATE, carry=True)
    async with pg_sessions() as session, session.begin():
        await claims.finish_stage(session, by_moves, artefacts=ART, actor="w", now=NOW)
    status = stage.done
    async with pg_sessions() as session, session.begin():
        while (step := moves.automatic_step(status, EVERY_GATE)):
            await transitions.transition(session, by_moves.task_id, step.target,
                                         expected=status, note=step.note, now=NOW,
                                         actor=moves.AUTO_APPROVER if step.approval else "w")
            status = step.target
    carried = None
    if status in lifecycle.RUNNABLE:
        async with pg_pool.acquire() as conn:
            carried = await hotpath.claim(conn, worker_id="w", lease_s=LEASE_S, now=NOW,
                                          task_id=by_moves.task_id)
    assert carried is not None or status is S.published
    assert done.rest is (status if carried is None else carried.status)
    assert (done.taken is None) == (carried is None)
    row, events = await _row_and_events(pg_sessions, by_boundary.task_id)
    twin_row, twin_events = await _row_and_events(pg_sessions, by_moves.task_id)
    assert {k: v for k, v in row.items() if k not in CLAIM_OWN} == \
        {k: v for k, v in twin_row.items() if k not in CLAIM_OWN}
    assert [e[:4] for e in events] == [e[:4] for e in twin_events]
    if done.taken is not None:
        assert done.taken.given.artifacts == row["artifacts"]
        assert (done.taken.given.title, done.taken.claim.attempt, done.taken.claim.run) == (
            row["title"], row["attempts"], row["stage_runs"])


async def test_boundaries_in_one_statement_are_the_boundaries_one_by_one(
        pg_sessions: Sessions, pg_pool: HotPool) -> None:
    """``hotpath.boundaries`` (one statement, one commit) leaves each task as a boundary of its
    own would; a refused one (a lost claim) is reported in its place, nothing of it written."""
    pairs = [await _held_twins(pg_sessions, stage.active, 1) for stage in STAGES]
    lost, _ = await _held_twins(pg_sessions, S.generating_video, 1)
    before = await _row_and_events(pg_sessions, lost.task_id)
    stale = Claim(lost.task_id, lost.status, lost.status, uuid.uuid4(), 1, 3)
    endings = [hotpath.Ending(batched, ART) for batched, _ in pairs]
    endings.insert(3, hotpath.Ending(stale, ART))
    async with pg_pool.acquire() as conn:
        results = await hotpath.boundaries(conn, endings, actor="w", lease_s=LEASE_S, now=NOW,
                                           auto_approved=EVERY_GATE, carry=True)
        singles = [await hotpath.boundary(conn, alone, artefacts=ART, actor="w", lease_s=LEASE_S,
                                          now=NOW, auto_approved=EVERY_GATE, carry=True)
                   for _, alone in pairs]
    assert isinstance(results.pop(3), StaleClaim)
    assert await _row_and_events(pg_sessions, lost.task_id) == before
    for (batched, alone), result, single in zip(pairs, results, singles, strict=True):
        assert isinstance(result, hotpath.Boundary)
        assert result.rest is single.rest and (result.taken is None) == (single.taken is None)
        row, events = await _row_and_events(pg_sessions, batched.task_id)
        twin_row, twin_events = await _row_and_events(pg_sessions, alone.task_id)
        assert {k: v for k, v in row.items() if k not in CLAIM_OWN} == \
            {k: v for k, v in twin_row.items() if k not in CLAIM_OWN}
        assert [e[:4] for e in events] == [e[:4] for e in twin_events]


async def test_a_refused_boundary_writes_nothing(pg_sessions: Sessions, pg_pool: HotPool) -> None:
    """A boundary with a lost claim (another token) is refused as a stale claim, nothing
    written."""
    held, _ = await _held_twins(pg_sessions, S.generating_video, 1)
    before = await _row_and_events(pg_sessions, held.task_id)
    stale = Claim(held.task_id, held.status, held.status, uuid.uuid4(), 1, 3)
    async with pg_pool.acquire() as conn:
        with pytest.raises(StaleClaim):
            await hotpath.boundary(conn, stale, artefacts=ART, actor="w", lease_s=LEASE_S, now=NOW,
                                   auto_approved=EVERY_GATE, carry=True)
    assert await _row_and_events(pg_sessions, held.task_id) == before


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
