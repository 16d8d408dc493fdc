"""``stage_boundaries`` writes the common boundaries a set at a time and gives every other task
a ``stage_boundary`` call of its own: two paths that must agree. For every stage, under every
condition that decides a carry (a cap with room or reached, an inactive channel, a hold, a
quota on the next stage or on another, a lost claim) and with gates passed or not, carried on
or not, a task written in a batch ends as its twin written by ``stage_boundary`` alone: the
same row, the same events, the same result. Real PostgreSQL, a database of its own (quotas
apply to every channel)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import pytest

from app import lifecycle, moves
from app.db import connect_kwargs
from app.db.ddl import claim_task
from tests import dbtools

NOW = moves.utcnow()
LEASE_S = 3600.0
EVERY_GATE = sorted(gate.name for gate in lifecycle.GATES)
#: Columns that differ between twins whatever was done to them, or are written by each
#: claim's own clock.
OWN = {"id", "channel_id", "notion_page_id", "created_at", "updated_at", "claim_token",
       "claimed_at"}


@dataclass(frozen=True)
class Condition:
    cap: int | None = None          # the channel's max_concurrent
    others: int = 0                 # other tasks of the channel in a stage
    active: bool = True             # the channel's is_active
    hold: bool = False              # the task on hold
    quota: str | None = None        # a quota on this stage ("*": every stage)
    stale: bool = False             # the boundary's claim was lost


CONDITIONS = {
    "plain": Condition(),
    "cap with room": Condition(cap=3, others=1),
    "cap reached": Condition(cap=1, others=1),
    "inactive channel": Condition(active=False),
    "on hold": Condition(hold=True),
    "quota on every stage": Condition(quota=claim_task.EVERY_STAGE),
    "quota on the first stage only": Condition(quota="assets"),
    "lost claim": Condition(stale=True),
}
MODES = {"carried, every gate": (True, EVERY_GATE), "carried, no gate": (True, []),
         "not carried": (False, [])}


@pytest.fixture(scope="module")
async def conn(pg_server_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with dbtools.scratch_database(pg_server_url, migrate=True) as url:
        connection = await asyncpg.connect(**connect_kwargs(url))
        try:
            yield connection
        finally:
            await connection.close()


async def _task(conn: asyncpg.Connection, cond: Condition, status: lifecycle.TaskStatus
                ) -> tuple[uuid.UUID, uuid.UUID]:
    """A task held in ``status`` on a channel of its own set up as ``cond`` says; its id and
    the token a boundary presents."""
    channel = await conn.fetchval(
        "INSERT INTO channels (channel_id, channel_name, max_concurrent, is_active)"
        " VALUES ('UC' || md5(random()::text), 'Twin', $1, $2) RETURNING id",
        cond.cap, cond.active)
    held = ("claim_token, claimed_by, claimed_at, lease_expires_at, attempts, stage_runs,"
            " artifacts")
    values = ("gen_random_uuid(), 'other', $3::timestamptz, $3::timestamptz + interval '1 hour',"
              " 1, 1, '{\"before\": 1}'")
    for _ in range(cond.others):
        await conn.execute(
            f"INSERT INTO tasks (channel_id, notion_page_id, title, status, {held})"
            f" VALUES ($1, md5(random()::text), 'Other', $2, {values})",
            channel, lifecycle.TaskStatus.generating_video.value, NOW)
    row = await conn.fetchrow(
        f"INSERT INTO tasks (channel_id, notion_page_id, title, topic, status, hold_since,"
        f" hold_by, {held}) VALUES ($1, md5(random()::text), 'A video', 'Topic', $2,"
        f" CASE WHEN $4 THEN $3::timestamptz END, CASE WHEN $4 THEN 'op' END, {values})"
        " RETURNING id, claim_token", channel, status.value, NOW, cond.hold)
    return row["id"], uuid.uuid4() if cond.stale else row["claim_token"]


def _args(ids: list[uuid.UUID], tokens: list[uuid.UUID], statuses: list[str],
          carry: bool, auto: list[str]) -> list[Any]:
    outputs = [json.dumps({"uri": f"sim://{s}"}) for s in statuses]
    urls = ["https://youtu.be/x" if s == "uploading" else None for s in statuses]
    return [ids, tokens, statuses, outputs, urls, "w", LEASE_S, NOW, auto, carry]


async def _state(conn: asyncpg.Connection, task_id: uuid.UUID) -> tuple[Any, ...]:
    row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    events = await conn.fetch("SELECT from_status, to_status, actor, note FROM task_events"
                              " WHERE task_id = $1 ORDER BY id", task_id)
    starts = await conn.fetchval("SELECT coalesce(sum(cardinality(starts)), 0) FROM quota_usage"
                                 " WHERE channel_id = $1", row["channel_id"])
    return ({k: v for k, v in row.items() if k not in OWN}, [tuple(e) for e in events], starts)


def _result(row: asyncpg.Record | None, task_id: uuid.UUID) -> tuple[Any, ...] | None:
    """What a boundary returned, without what differs between twins."""
    if row is None or row["rest"] is None:
        return None
    return (row["rest"], row["task_id"] == task_id if row["task_id"] else None,
            row["from_status"], row["to_status"], row["attempt"], row["run"], row["title"],
            row["topic"], row["artifacts"])


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list(CONDITIONS))
async def test_a_batch_leaves_each_task_as_stage_boundary_alone_does(
        conn: asyncpg.Connection, name: str, mode: str) -> None:
    cond, (carry, auto) = CONDITIONS[name], MODES[mode]
    if cond.quota:
        await conn.execute("INSERT INTO quotas (stage, per_channel, max_starts, window_s)"
                           " VALUES ($1, true, 1000, 3600)", cond.quota)
    try:
        statuses = [stage.active.value for stage in lifecycle.STAGES]
        batched = [await _task(conn, cond, stage.active) for stage in lifecycle.STAGES]
        alone = [await _task(conn, cond, stage.active) for stage in lifecycle.STAGES]
        rows = await conn.fetch(
            "SELECT * FROM stage_boundaries($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            " ORDER BY n", *_args([i for i, _ in batched], [t for _, t in batched], statuses,
                                 carry, auto))
        singles = []
        for (i, t), s in zip(alone, statuses, strict=True):
            args = _args([i], [t], [s], carry, auto)
            singles.append(await conn.fetchrow(
                "SELECT * FROM stage_boundary($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                *[a[0] for a in args[:5]], *args[5:]))
        states = [(await _state(conn, b), await _state(conn, a))
                  for (b, _), (a, _) in zip(batched, alone, strict=True)]
    finally:
        await conn.execute("DELETE FROM quotas")
    assert [r["n"] for r in rows] == list(range(1, len(statuses) + 1))
    carried = 0
    for (b_id, _), (a_id, _), row, single, (mine, twin), status in zip(
            batched, alone, rows, singles, states, statuses, strict=True):
        assert _result(row, b_id) == _result(single, a_id), status
        assert mine == twin, status
        carried += row["task_id"] is not None
    # The conditions reach both paths: every stage but the last carried where nothing stops
    # it, none where something does.
    expected = len(statuses) - 1 if carry and name in (
        "plain", "cap with room", "quota on the first stage only", "quota on every stage") \
        and auto else None
    if expected is not None:
        assert carried == expected
    if not carry or cond.stale or name in ("cap reached", "inactive channel", "on hold"):
        assert carried == 0
