"""A claim inside ``pick_up`` that fails on a lock: it alone is lost (a warning says which task),
its pick stays counted, the claims made beside it are kept, and the call picks again without
that channel. Real PostgreSQL; the claim's lock wait is shortened for the test's own database
(``lock_timeout`` on ``claim_task``, 30 s in service).

A pick-up whose server connection dies between its two commits (the pick made, the claim not):
the task it reserved waits, queued and unclaimed, passed over by the channel's later pick-ups
until the reservation lapses (``RESERVE_S``), and is then taken.

A pick-up whose claims committed apart returns them on disk, even when its last commit wrote no
claim: the WAL is flushed when it returns, and a server killed at once still has the claim."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from app.db import connect_kwargs, migrate
from app.db.ddl.claim_task import RESERVE_S
from app.execution import hotpath
from tests import dbtools, workerprocs

WORKER = "pick-up-failures"
own_postgres = workerprocs.own_postgres


@pytest.fixture
async def url(pg_server_url: str) -> AsyncIterator[str]:
    async with dbtools.scratch_database(pg_server_url, migrate=True) as scratch:
        yield scratch


async def _connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(**connect_kwargs(url))
    return conn


async def _channel(conn: asyncpg.Connection, name: str, priorities: list[str]) -> uuid.UUID:
    channel: uuid.UUID = await conn.fetchval(
        "INSERT INTO channels (channel_id, channel_name) VALUES ($1, $1) RETURNING id", name)
    for i, priority in enumerate(priorities):
        await conn.execute(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status, priority, created_at)"
            " VALUES ($1, $2, 'T', 'queued', $3::prioritylevel,"
            " now() - make_interval(secs => 100 - $4))", channel, f"{name}-{i}", priority, i)
    return channel


async def test_a_claim_that_fails_on_a_lock_is_lost_alone(url: str) -> None:
    conn, holder = await _connect(url), await _connect(url)
    try:
        await conn.execute("ALTER FUNCTION claim_task SET lock_timeout = '200ms'")
        locked = await _channel(conn, "UC-locked", ["high", "normal"])   # ranked first
        free = await _channel(conn, "UC-free", ["normal", "normal", "normal"])
        warnings: list[str] = []
        conn.add_log_listener(lambda _c, message: warnings.append(str(message)))
        # Another transaction holds every task of the first channel, as an operator's
        # long-running statement could.
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM tasks WHERE channel_id = $1 FOR UPDATE", locked)

        taken = await hotpath.take_many(conn, 2, worker_id=WORKER, lease_s=30.0,
                                        now=datetime.now(UTC))

        channels = [await conn.fetchval("SELECT channel_id FROM tasks WHERE id = $1",
                                        one.claim.task_id) for one in taken]
        assert channels == [free, free]           # the claim beside it kept, one picked again
        assert any("pick_up: claim of task" in w and "not made" in w for w in warnings)
        assert await conn.fetchval("SELECT picks FROM channels WHERE id = $1", locked) == 1
        await held.rollback()
        # Nothing of the lost claim was written: the locked channel's tasks wait, unclaimed.
        rows = await conn.fetch("SELECT status, claim_token FROM tasks WHERE channel_id = $1",
                                locked)
        assert [(r["status"], r["claim_token"]) for r in rows] == [("queued", None)] * 2
        events = await conn.fetchval(
            "SELECT count(*) FROM task_events e JOIN tasks t ON t.id = e.task_id"
            " WHERE t.channel_id = $1", locked)
        assert events == 0
    finally:
        await holder.close()
        await conn.close()


async def test_a_pick_up_cut_off_between_its_pick_and_its_claim_leaves_its_task_to_a_later_one(
        url: str) -> None:
    conn, holder, doomed = await _connect(url), await _connect(url), await _connect(url)
    try:
        channel = await _channel(conn, "UC-cut", ["normal", "normal"])
        first, second = [r["id"] for r in await conn.fetch(
            "SELECT id FROM tasks WHERE channel_id = $1 ORDER BY created_at", channel)]
        # A quota on the first stage, its bucket made: the claim locks the bucket after the
        # pick has committed, so a transaction holding the bucket keeps the pick-up between
        # its two commits for as long as the test needs.
        quota = await conn.fetchval("INSERT INTO quotas (stage, per_channel, max_starts,"
                                    " window_s) VALUES ('assets', true, 100, 3600) RETURNING id")
        await conn.execute("INSERT INTO quota_usage (channel_id, quota_id, stage)"
                           " VALUES ($1, $2, 'assets')", channel, quota)
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM quota_usage FOR UPDATE")
        cut = asyncio.create_task(hotpath.take_many(doomed, 1, worker_id=WORKER, lease_s=30.0,
                                                    now=datetime.now(UTC)))
        async with asyncio.timeout(10):           # until the claim waits for the bucket
            while True:
                if await conn.fetchval("SELECT cardinality(pg_blocking_pids($1))",
                                       doomed.get_server_pid()):
                    break
                await asyncio.sleep(0.01)
        # The server ends the connection (a restart, a network cut, a pooler's timeout).
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", doomed.get_server_pid())
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await cut
        await held.rollback()

        # The pick was committed (its turn counted, the task reserved); the claim was not.
        row = await conn.fetchrow("SELECT picks, reserved FROM channels WHERE id = $1", channel)
        assert (row["picks"], row["reserved"]) == (1, [first])
        task = await conn.fetchrow("SELECT status, claim_token FROM tasks WHERE id = $1", first)
        assert (task["status"], task["claim_token"]) == ("queued", None)
        assert await conn.fetchval("SELECT cardinality(starts) FROM quota_usage") == 0

        async def take() -> list[uuid.UUID]:
            taken = await hotpath.take_many(conn, 2, worker_id=WORKER, lease_s=30.0,
                                            now=datetime.now(UTC))
            return [one.claim.task_id for one in taken]

        # While the reservation stands, later pick-ups pass over the reserved task.
        assert await take() == [second]
        assert await take() == []
        # RESERVE_S later (every stamp of the channel's reservations moved back as far):
        # the reservation has lapsed, and the task is taken.
        await conn.execute(
            "UPDATE channels SET reserved_at = ARRAY(SELECT a - make_interval(secs => $2)"
            " FROM unnest(reserved_at) a), reserved_until = reserved_until"
            " - make_interval(secs => $2) WHERE id = $1", channel, RESERVE_S + 1)
        assert await take() == [first]
        assert await conn.fetchval("SELECT cardinality(starts) FROM quota_usage") == 2
    finally:
        for c in (doomed, holder, conn):
            if not c.is_closed():
                await c.close()


async def test_claims_committed_apart_are_on_disk_when_the_call_returns(
        own_postgres: workerprocs.OwnServer) -> None:
    """With quotas in place, claims of one pick-up commit one by one, asynchronously, and the
    call's last commit makes them durable, even when it writes no claim of its own (a commit
    that wrote no WAL is not flushed, whatever its transaction id). Here the first picked
    claim is lost on a lock and nothing is left to pick afterwards. On a server of the test's
    own (no other session writes WAL meanwhile): the WAL is flushed when the call returns,
    and with the server crashed at once, the task is still claimed after recovery, under the
    token the worker was given."""
    await migrate.upgrade(own_postgres.url)
    conn, holder = await _connect(own_postgres.url), await _connect(own_postgres.url)
    await conn.execute("ALTER FUNCTION claim_task SET lock_timeout = '1ms'")
    # A quota on a later stage: it counts none of these claims, but its presence makes the
    # claims of one pick-up commit apart.
    await conn.execute("INSERT INTO quotas (stage, per_channel, max_starts, window_s)"
                       " VALUES ('upload', true, 6, 86400)")
    locked = await _channel(conn, "UC-locked", ["high"])       # picked first
    free = await _channel(conn, "UC-free", ["normal"])
    await holder.execute("BEGIN")
    await holder.execute("SELECT 1 FROM tasks WHERE channel_id = $1 FOR UPDATE", locked)
    [one] = await hotpath.take_many(conn, 2, worker_id=WORKER, lease_s=30.0,
                                    now=datetime.now(UTC))
    # Read at once, before the WAL writer's next round flushes what is pending.
    unflushed = await conn.fetchval(
        "SELECT pg_current_wal_insert_lsn() - pg_current_wal_flush_lsn()")
    own_postgres.crash()
    for c in (conn, holder):
        c.terminate()
    own_postgres.start()

    after = await _connect(own_postgres.url)
    try:
        row = await after.fetchrow("SELECT channel_id, status, claim_token FROM tasks"
                                   " WHERE id = $1", one.claim.task_id)
        assert row["channel_id"] == free
        assert (row["status"], row["claim_token"]) == ("generating_assets", one.claim.token), \
            f"the claim the pick-up returned was lost when the server was killed ({unflushed}" \
            " bytes of WAL not yet on disk when the call returned)"
        assert unflushed == 0, f"{unflushed} bytes of WAL, the claim's commit among them," \
                               " not yet on disk when the pick-up returned"
    finally:
        await after.close()
