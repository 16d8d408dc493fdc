"""``pick_up`` claims the reserved tasks that need no lock but their own together
(``claim_reserved``) and gives the others to ``claim_task``: two paths that must agree. A task
claimed together is left as ``claim_task`` leaves its twin (row, events, the pick's ticket on
the first event, the result); a task the common case does not cover (a cap, an inactive
channel, a hold, a quota, a task not queued, a row another transaction holds) is not touched,
for ``claim_task`` to decide. Real PostgreSQL, a database of its own (quotas apply to every
channel)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import pytest

from app import moves
from app.db import connect_kwargs
from tests import dbtools

NOW = moves.utcnow()
LEASE_S = 3600.0
#: Columns that differ between twins whatever was done to them, or are written by each
#: claim's own clock.
OWN = {"id", "channel_id", "notion_page_id", "created_at", "updated_at", "claim_token",
       "claimed_at", "lease_expires_at"}


@dataclass(frozen=True)
class Condition:
    cap: int | None = None
    active: bool = True
    hold: bool = False
    status: str = "queued"
    quota: bool = False
    locked: bool = False            # another transaction holds the task's row


CONDITIONS = {
    "plain": Condition(),
    "cap with room": Condition(cap=5),
    "inactive channel": Condition(active=False),
    "on hold": Condition(hold=True),
    "not queued": Condition(status="assets_approved"),
    "a quota somewhere": Condition(quota=True),
    "row held elsewhere": Condition(locked=True),
}


@pytest.fixture(scope="module")
async def url(pg_server_url: str) -> AsyncIterator[str]:
    async with dbtools.scratch_database(pg_server_url, migrate=True) as made:
        yield made


@pytest.fixture
async def conn(url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(**connect_kwargs(url))
    try:
        yield connection
    finally:
        await connection.close()


async def _pick(conn: asyncpg.Connection, cond: Condition) -> tuple[uuid.UUID, int, uuid.UUID]:
    """A channel, a task in it as ``cond`` says and a ticket: what a pick hands its claim."""
    channel = await conn.fetchval(
        "INSERT INTO channels (channel_id, channel_name, max_concurrent, is_active)"
        " VALUES ('UC' || md5(random()::text), 'Twin', $1, $2) RETURNING id",
        cond.cap, cond.active)
    task = await conn.fetchval(
        "INSERT INTO tasks (channel_id, notion_page_id, title, topic, status, hold_since,"
        " hold_by) VALUES ($1, md5(random()::text), 'A video', 'Topic', $2,"
        " CASE WHEN $3 THEN $4::timestamptz END, CASE WHEN $3 THEN 'op' END) RETURNING id",
        channel, cond.status, cond.hold, NOW)
    ticket = await conn.fetchval("SELECT nextval('task_events_id_seq')")
    return channel, ticket, task


async def _state(conn: asyncpg.Connection, task_id: uuid.UUID) -> tuple[Any, ...]:
    row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    events = await conn.fetch("SELECT from_status, to_status, actor, note FROM task_events"
                              " WHERE task_id = $1 ORDER BY id", task_id)
    return ({k: v for k, v in row.items() if k not in OWN}, [tuple(e) for e in events])


def _result(row: asyncpg.Record) -> tuple[Any, ...]:
    return (row["from_status"], row["to_status"], row["attempt"], row["run"], row["title"],
            row["topic"], row["artifacts"])


@pytest.mark.parametrize("start", [True, False], ids=["start", "claim only"])
@pytest.mark.parametrize("name", list(CONDITIONS))
async def test_a_reserved_claim_is_claim_task_or_nothing(
        conn: asyncpg.Connection, url: str, name: str, start: bool) -> None:
    cond = CONDITIONS[name]
    if cond.quota:
        await conn.execute("INSERT INTO quotas (stage, per_channel, max_starts, window_s)"
                           " VALUES ('upload', true, 6, 86400)")
    holder = await asyncpg.connect(**connect_kwargs(url))
    try:
        together = [await _pick(conn, cond) for _ in range(3)]
        alone = [await _pick(conn, cond) for _ in range(3)]
        before = [await _state(conn, task) for _, _, task in together]
        if cond.locked:
            await holder.execute("BEGIN")
            await holder.execute("SELECT 1 FROM tasks WHERE id = ANY($1::uuid[]) FOR UPDATE",
                                 [task for _, _, task in together])
        rows = await conn.fetch(
            "SELECT * FROM claim_reserved('w', $1, $2, $3, $4, $5, $6) ORDER BY n",
            LEASE_S, NOW, start, *[list(column) for column in zip(*together, strict=True)])
        if cond.locked:
            await holder.execute("ROLLBACK")
        if name != "plain":
            assert rows == []
            assert [await _state(conn, task) for _, _, task in together] == before
            return
        singles = [await conn.fetchrow(
            "SELECT * FROM claim_task('w', $1, $2, $3, $4, $5, $6)",
            LEASE_S, NOW, task, start, channel, ticket) for channel, ticket, task in alone]
    finally:
        await holder.close()
        await conn.execute("DELETE FROM quotas")
    assert [r["n"] for r in rows] == [1, 2, 3]
    for (_, ticket, task), (_, twin_ticket, twin), row, single in zip(
            together, alone, rows, singles, strict=True):
        assert row["task_id"] == task and single["task_id"] == twin
        assert _result(row) == _result(single)
        assert await _state(conn, task) == await _state(conn, twin)
        first = await conn.fetchval("SELECT min(id) FROM task_events WHERE task_id = $1", task)
        twin_first = await conn.fetchval("SELECT min(id) FROM task_events WHERE task_id = $1",
                                         twin)
        assert (first, twin_first) == (ticket, twin_ticket)
        token, lease = await conn.fetchrow(
            "SELECT claim_token, lease_expires_at FROM tasks WHERE id = $1", task)
        assert token == row["claim_token"] and lease is not None
