"""``pick_channels`` decides several pick-ups in one call; ``pick_channel`` decides one. Two paths
that must agree: in random states of channels and queued tasks (priorities, ages, pick counts,
turns, reservations standing or lapsed or no longer live, holds, inactive channels, channels
skipped, and sometimes a cap, a spent quota or other runnable work, where it decides one at a
time), n pick-ups made together are the n that n calls one after the other make, and leave
every channel's row alike: the same picks, counts, reservations and order of turns. Real
PostgreSQL, a database of its own."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import pytest

from app.db import connect_kwargs
from tests import dbtools

PRIORITIES = ("high", "normal", "low")
#: Random states tried (each compared both ways).
CASES = 60
#: A picked channel's row as compared: its count, reservations, and whether it has a turn.
Row = tuple[int, list[uuid.UUID], bool]


@pytest.fixture
async def url(pg_server_url: str) -> AsyncIterator[str]:
    async with dbtools.scratch_database(pg_server_url, migrate=True) as scratch:
        yield scratch


@pytest.fixture
async def conn(url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(**connect_kwargs(url))
    try:
        yield connection
    finally:
        await connection.close()


async def _state(conn: asyncpg.Connection, rng: random.Random, case: int) -> list[uuid.UUID]:
    """A random state of channels and tasks, made from nothing; the channels' ids."""
    await conn.execute("TRUNCATE tasks, channels, quotas, quota_usage CASCADE")
    # Turns drawn from here on come after every turn below, in both runs.
    await conn.execute("SELECT setval('task_events_id_seq', greatest(1000,"
                       " (SELECT last_value FROM task_events_id_seq)))")
    channels: list[uuid.UUID] = []
    turns = rng.sample(range(1, 50), 6)
    for c in range(rng.randint(1, 6)):
        channel = await conn.fetchval(
            "INSERT INTO channels (channel_id, channel_name, is_active, picks, turn)"
            " VALUES ($1, $1, $2, $3, $4) RETURNING id", f"UC-{case}-{c}",
            rng.random() < 0.9, rng.randint(0, 4), turns[c] if rng.random() < 0.7 else None)
        channels.append(channel)
        tasks = []
        for k in range(rng.randint(0, 7)):
            status = "queued" if rng.random() < 0.85 else "claimed"
            tasks.append(await conn.fetchval(
                "INSERT INTO tasks (channel_id, notion_page_id, title, status, priority,"
                " created_at, updated_at, hold_since, claim_token)"
                " VALUES ($1, $2, 'T', $3, $4::prioritylevel,"
                " now() - make_interval(secs => $5), now() - make_interval(secs => $6), $7, $8)"
                " RETURNING id", channel, f"{case}-{c}-{k}", status, rng.choice(PRIORITIES),
                rng.randint(20, 60), rng.choice((30, 0)),     # 0: written after a reservation
                datetime.now() if rng.random() < 0.1 else None,
                uuid.uuid4() if status == "claimed" else None))
        reserved = rng.sample(tasks, rng.randint(0, min(3, len(tasks))))
        if reserved:                # standing (or lapsed, 12 s old) and until when
            ages = [rng.choice((1, 3, 6, 12)) for _ in reserved]
            await conn.execute(
                "UPDATE channels SET reserved = $2,"
                " reserved_at = ARRAY(SELECT now() - make_interval(secs => a)"
                " FROM unnest($3::integer[]) a),"
                " reserved_until = now() + make_interval(secs => $4) WHERE id = $1",
                channel, reserved, ages, rng.choice((-3, 4, 9)))
    if rng.random() < 0.15:         # a cap somewhere: one decision at a time
        await conn.execute("UPDATE channels SET max_concurrent = 3 WHERE id = $1",
                           rng.choice(channels))
    if rng.random() < 0.1:          # other runnable work: one decision at a time
        await conn.execute("INSERT INTO tasks (channel_id, notion_page_id, title, status)"
                           " VALUES ($1, $2, 'T', 'assets_approved')", rng.choice(channels),
                           f"{case}-approved")
    return channels


async def _picks(conn: asyncpg.Connection, together: bool, count: int,
                 skip: list[uuid.UUID]) -> tuple[list[tuple[uuid.UUID, uuid.UUID]],
                                                 dict[uuid.UUID, Row], list[uuid.UUID]]:
    """The picks made (channel, task), each channel's row after them, and the channels in the
    order of their turns; nothing of it kept."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        made: list[Any] = []
        if together:
            made = await conn.fetch("SELECT * FROM pick_channels(now(), $1, $2)", count, skip)
        else:
            for _ in range(count):
                one = await conn.fetchrow("SELECT * FROM pick_channel(now(), true, $1)", skip)
                if one is None:
                    break
                made.append(one)
        tickets = [r["ticket"] for r in made]
        assert tickets == sorted(tickets) and len(set(tickets)) == len(tickets)
        rows = await conn.fetch("SELECT id, picks, reserved, turn FROM channels ORDER BY id")
        after = {r["id"]: (r["picks"], list(r["reserved"] or []), r["turn"] is not None)
                 for r in rows}
        order = [r["id"] for r in sorted((r for r in rows if r["turn"] is not None),
                                         key=lambda r: (r["turn"], r["id"]))]
        return [(r["channel"], r["task"]) for r in made], after, order
    finally:
        await transaction.rollback()


async def test_picks_made_together_are_the_picks_made_one_after_the_other(
        conn: asyncpg.Connection) -> None:
    rng = random.Random(20261206)
    together_made = 0
    for case in range(CASES):
        channels = await _state(conn, rng, case)
        count = rng.randint(1, 9)
        skip = rng.sample(channels, 1) if rng.random() < 0.2 else []
        one_by_one = await _picks(conn, False, count, skip)
        together = await _picks(conn, True, count, skip)
        assert together == one_by_one, f"case {case}: {count} pick-ups, skipping {skip}"
        together_made += len(together[0])
    assert together_made > CASES          # the cases pick, not only find nothing


async def test_a_channel_another_transaction_holds_is_passed_over_as_one_at_a_time(
        conn: asyncpg.Connection, url: str) -> None:
    """Where another transaction holds a picked channel's row, the picks are made one at a
    time, each passing over the channel it finds held (as ``pick_channel`` does)."""
    channels = []
    for c in range(3):
        channel = await conn.fetchval("INSERT INTO channels (channel_id, channel_name)"
                                      " VALUES ($1, $1) RETURNING id", f"UC-held-{c}")
        channels.append(channel)
        for k in range(3):
            await conn.execute("INSERT INTO tasks (channel_id, notion_page_id, title, status,"
                               " priority) VALUES ($1, $2, 'T', 'queued', $3::prioritylevel)",
                               channel, f"held-{c}-{k}", "high" if c == 0 else "normal")
    holder = await asyncpg.connect(**connect_kwargs(url))
    try:
        async with holder.transaction():          # the best channel's row, held
            await holder.execute("SELECT 1 FROM channels WHERE id = $1 FOR UPDATE",
                                 channels[0])
            one_by_one = await _picks(conn, False, 4, [])
            together = await _picks(conn, True, 4, [])
    finally:
        await holder.close()
    assert together == one_by_one
    assert len(together[0]) == 4
    assert all(channel != channels[0] for channel, _ in together[0])


async def test_picks_reach_past_a_channels_reservations(conn: asyncpg.Connection) -> None:
    """One channel, its two oldest tasks reserved by pick-ups in flight: three pick-ups take
    the three after them, as three calls one after the other do."""
    channel = await conn.fetchval("INSERT INTO channels (channel_id, channel_name)"
                                  " VALUES ('UC-ahead', 'A') RETURNING id")
    tasks = [await conn.fetchval(
        "INSERT INTO tasks (channel_id, notion_page_id, title, status, created_at, updated_at)"
        " VALUES ($1, $2, 'T', 'queued', now() - make_interval(secs => 60 - $3),"
        " now() - interval '1 minute') RETURNING id", channel, f"ahead-{k}", k)
        for k in range(6)]
    await conn.execute("UPDATE channels SET reserved = $2, reserved_at = ARRAY[now(), now()],"
                       " reserved_until = now() + interval '5 seconds' WHERE id = $1",
                       channel, tasks[:2])
    one_by_one = await _picks(conn, False, 3, [])
    together = await _picks(conn, True, 3, [])
    assert together == one_by_one
    assert [task for _, task in together[0]] == tasks[2:5]
