"""``pick_up`` claims the reserved tasks of uncapped channels together (``claim_reserved``) and
gives the others to ``claim_task``: two paths that must agree. A task claimed together is left
as ``claim_task`` leaves its twin (row, events, the pick's ticket on the first event, the
result); a task the common case does not cover (a cap, an inactive channel, a hold, a task not
queued, a row another transaction holds, a quota with no room) is not touched, for
``claim_task`` to decide. Where quotas count the stage, the picks claimed together are those
``claim_task`` claims one by one in the same order, and their buckets end alike. Real
PostgreSQL, a database of its own (quotas apply to every channel)."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import pytest

from app import moves
from app.db import connect_kwargs
from app.db.ddl.claim_task import SHARED
from tests import dbtools

NOW = moves.utcnow()
LEASE_S = 3600.0
#: Columns that differ between twins whatever was done to them, or are written by each
#: claim's own clock.
OWN = {"id", "channel_id", "notion_page_id", "created_at", "updated_at", "claim_token",
       "claimed_at", "lease_expires_at"}
#: What a pick hands its claim: the channel, the pick's ticket, the task.
Pick = tuple[uuid.UUID, int, uuid.UUID]


@dataclass(frozen=True)
class Condition:
    cap: int | None = None
    active: bool = True
    hold: bool = False
    status: str = "queued"
    #: A quota: (stage, per channel, limit), over a day.
    quota: tuple[str, bool, int] | None = None
    #: The quota's bucket as it stands: "unspent" (made, no start), "spent" (a start a moment
    #: ago), "paused", or None: not made yet (the first start made against it makes it).
    bucket: str | None = None
    locked: bool = False            # another transaction holds the task's row
    #: Claimed together (else left untouched).
    together: bool = False


CONDITIONS = {
    "plain": Condition(together=True),
    "cap with room": Condition(cap=5),
    "inactive channel": Condition(active=False),
    "on hold": Condition(hold=True),
    "not queued": Condition(status="assets_approved"),
    "a quota on another stage": Condition(quota=("upload", True, 6), together=True),
    "a quota per channel with room": Condition(quota=("assets", True, 6), bucket="unspent",
                                               together=True),
    "a shared quota on every stage with room": Condition(quota=("*", False, 100),
                                                         bucket="unspent", together=True),
    "a quota whose bucket is not made yet": Condition(quota=("assets", False, 100),
                                                      together=True),
    "a shared quota spent": Condition(quota=("assets", False, 1), bucket="spent"),
    "a quota per channel spent": Condition(quota=("assets", True, 1), bucket="spent"),
    "a quota per channel paused": Condition(quota=("*", True, 100), bucket="paused"),
    "a shared quota paused": Condition(quota=("*", False, 100), bucket="paused"),
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


async def _pick(conn: asyncpg.Connection, cond: Condition) -> Pick:
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


async def _bucket(conn: asyncpg.Connection, channel: uuid.UUID, quota: int, stage: str,
                  state: str) -> None:
    """A quota's bucket, as ``state`` says (see ``Condition.bucket``)."""
    await conn.execute(
        "INSERT INTO quota_usage (channel_id, quota_id, stage, starts, paused_until,"
        " blocked_until) VALUES ($1, $2, $3, CASE WHEN $4 = 'spent' THEN ARRAY[now()] ELSE '{}'"
        " END, CASE WHEN $4 = 'paused' THEN now() + interval '1 hour' END,"
        " CASE WHEN $4 <> 'unspent' THEN now() + interval '1 hour' END)",
        channel, quota, stage, state)


async def _state(conn: asyncpg.Connection, task_id: uuid.UUID) -> tuple[Any, ...]:
    row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    events = await conn.fetch("SELECT from_status, to_status, actor, note FROM task_events"
                              " WHERE task_id = $1 ORDER BY id", task_id)
    return ({k: v for k, v in row.items() if k not in OWN}, [tuple(e) for e in events])


async def _quota(conn: asyncpg.Connection, cond: Condition,
                 channels: list[uuid.UUID]) -> None:
    """The quota of ``cond``, if any, with its buckets (the shared one, or each channel's)."""
    if not cond.quota:
        return
    stage, per_channel, _ = cond.quota
    quota = await conn.fetchval("INSERT INTO quotas (stage, per_channel, max_starts, window_s)"
                                " VALUES ($1, $2, $3, 86400) RETURNING id", *cond.quota)
    if cond.bucket:
        for bucket in channels if per_channel else [uuid.UUID(SHARED)]:
            await _bucket(conn, bucket, quota, stage, cond.bucket)


def _result(row: asyncpg.Record) -> tuple[Any, ...]:
    return (row["from_status"], row["to_status"], row["attempt"], row["run"], row["title"],
            row["topic"], row["artifacts"])


@pytest.mark.parametrize("count", [1, 3], ids=["one pick", "three picks"])
@pytest.mark.parametrize("start", [True, False], ids=["start", "claim only"])
@pytest.mark.parametrize("name", list(CONDITIONS))
async def test_a_reserved_claim_is_claim_task_or_nothing(
        conn: asyncpg.Connection, url: str, name: str, start: bool, count: int) -> None:
    """One pick (whose bucket, where one quota counts it, is locked by the statement that
    records its start) and three (whose buckets are locked first, in one order)."""
    cond = CONDITIONS[name]
    holder = await asyncpg.connect(**connect_kwargs(url))
    try:
        together = [await _pick(conn, cond) for _ in range(count)]
        alone = [await _pick(conn, cond) for _ in range(count)]
        await _quota(conn, cond, [channel for channel, _, _ in together + alone])
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
        if not cond.together:
            assert rows == []
            assert [await _state(conn, task) for _, _, task in together] == before
            return
        singles = [await conn.fetchrow(
            "SELECT * FROM claim_task('w', $1, $2, $3, $4, $5, $6)",
            LEASE_S, NOW, task, start, channel, ticket) for channel, ticket, task in alone]
        starts = await conn.fetch("SELECT channel_id, starts FROM quota_usage")
    finally:
        await holder.close()
        await conn.execute("DELETE FROM quotas")
    assert [r["n"] for r in rows] == list(range(1, count + 1))
    await _assert_twins(conn, together, alone, rows, singles)
    if cond.quota and cond.quota[0] != "upload":
        await _assert_stamped(conn, cond.quota[1], together, alone, starts)



@pytest.mark.parametrize("name", ["not queued", "on hold"])
async def test_a_reserved_task_it_cannot_claim_is_left_unlocked(
        conn: asyncpg.Connection, url: str, name: str) -> None:
    """A task the claim passes over (no longer queued, put on hold) is not locked by it: until
    the pick-up commits, its holder's writes and an operator's would otherwise wait."""
    picks = [await _pick(conn, CONDITIONS[name]) for _ in range(2)]
    other = await asyncpg.connect(**connect_kwargs(url))
    try:
        async with conn.transaction():
            rows = await conn.fetch(
                "SELECT * FROM claim_reserved('w', $1, $2, true, $3, $4, $5)",
                LEASE_S, NOW, *[list(column) for column in zip(*picks, strict=True)])
            assert rows == []
            async with other.transaction():
                locked = await other.fetch(
                    "SELECT id FROM tasks WHERE id = ANY($1::uuid[]) FOR UPDATE NOWAIT",
                    [task for _, _, task in picks])
    finally:
        await other.close()
    assert len(locked) == 2


async def _assert_twins(conn: asyncpg.Connection, together: list[Pick], alone: list[Pick],
                        rows: list[asyncpg.Record], singles: list[asyncpg.Record]) -> None:
    """Each task claimed together is left as its twin claimed alone."""
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


async def _assert_stamped(conn: asyncpg.Connection, per_channel: bool, together: list[Pick],
                          alone: list[Pick], buckets: list[asyncpg.Record]) -> None:
    """Each start recorded in its bucket, stamped as its claim (its task's and its events')."""
    stamps = {channel: await conn.fetchval("SELECT claimed_at FROM tasks WHERE id = $1", task)
              for channel, _, task in together + alone}
    if per_channel:
        assert {row["channel_id"]: row["starts"] for row in buckets} == {
            channel: [at] for channel, at in stamps.items()}
    else:
        [shared] = buckets
        assert sorted(shared["starts"]) == sorted(stamps.values())
    for channel, _, task in together:
        assert stamps[channel] == await conn.fetchval(
            "SELECT max(created_at) FROM task_events WHERE task_id = $1", task)


#: Where quotas count the stage: (quotas as (stage, per channel, limit), the starts a bucket
#: already holds as (channel index or None for the shared one, quota index, minutes ago), the
#: picks' channels) → the picks claimed together (1-based).
ROOM = {
    "a shared quota with room for two of three": (
        [("assets", False, 2)], [], [0, 1, 2], [1, 2]),
    "a channel's quota of one, two picks of it": (
        [("assets", True, 1)], [], [0, 0, 1], [1, 3]),
    "a start in the window leaves room for one": (
        [("assets", True, 2)], [(0, 0, 5)], [0, 0], [1]),
    "starts out of the window leave room": (
        [("assets", True, 2)], [(0, 0, 2000), (0, 0, 1500)], [0, 0], [1, 2]),
    "two quotas of each channel, one spent": (
        [("assets", True, 1), ("*", True, 2)], [(1, 1, 5), (1, 1, 4)], [0, 1, 2], [1, 3]),
    "a channel's and a shared quota": (
        [("assets", True, 1), ("*", False, 2)], [], [0, 0, 1, 2], [1, 3]),
}


async def _scenario(conn: asyncpg.Connection, quotas: list[tuple[str, bool, int]],
                    starts: list[tuple[int | None, int, int]], picks: list[int],
                    unmade: frozenset[tuple[int | None, int]] = frozenset(),
                    ) -> list[Pick]:
    """Channels, quotas over a day, their buckets (but ``unmade``: channel index or None for
    the shared one, quota index) with their starts, and one queued task per pick."""
    channels = [(await _pick(conn, Condition()))[0] for _ in range(max(picks) + 1)]
    ids = [await conn.fetchval("INSERT INTO quotas (stage, per_channel, max_starts, window_s)"
                               " VALUES ($1, $2, $3, 86400) RETURNING id", *quota)
           for quota in quotas]
    for q, (stage, per_channel, _) in enumerate(quotas):
        for c in range(len(channels)) if per_channel else [None]:
            if (c, q) not in unmade:
                await _bucket(conn, uuid.UUID(SHARED) if c is None else channels[c], ids[q],
                              stage, "unspent")
    for channel, quota, minutes in sorted(starts, key=lambda s: -s[2]):
        bucket = uuid.UUID(SHARED) if channel is None else channels[channel]
        await conn.execute(
            "INSERT INTO quota_usage (channel_id, quota_id, stage, starts) VALUES ($1, $2, $3,"
            " ARRAY[now() - make_interval(mins => $4)]) ON CONFLICT (channel_id, quota_id)"
            " DO UPDATE SET starts = quota_usage.starts || EXCLUDED.starts",
            bucket, ids[quota], quotas[quota][0], minutes)
    # A bucket keeps its newest max_starts starts, and when it frees.
    await conn.execute("UPDATE quota_usage u SET starts = u.starts[greatest(cardinality(u.starts)"
                       " - q.max_starts + 1, 1):] FROM quotas q WHERE q.id = u.quota_id")
    await conn.execute("UPDATE quota_usage u SET blocked_until = CASE WHEN cardinality(u.starts)"
                       " >= q.max_starts THEN u.starts[cardinality(u.starts) - q.max_starts + 1]"
                       " + make_interval(secs => q.window_s) END FROM quotas q"
                       " WHERE q.id = u.quota_id")
    made = []
    for channel in picks:
        task = await conn.fetchval(
            "INSERT INTO tasks (channel_id, notion_page_id, title, topic, status) VALUES ($1,"
            " md5(random()::text), 'A video', 'Topic', 'queued') RETURNING id",
            channels[channel])
        made.append((channels[channel], await conn.fetchval("SELECT nextval('task_events_id_seq')"),
                     task))
    return made


async def _together(conn: asyncpg.Connection,
                    picks: list[Pick]) -> list[int]:
    rows = await conn.fetch(
        "SELECT n FROM claim_reserved('w', $1, $2, true, $3, $4, $5) ORDER BY n", LEASE_S, NOW,
        *[list(column) for column in zip(*picks, strict=True)])
    return [row["n"] for row in rows]


async def _one_by_one(conn: asyncpg.Connection, picks: list[Pick],
                      which: list[int]) -> list[int]:
    made = []
    for k in which:
        channel, ticket, task = picks[k - 1]
        if await conn.fetchrow("SELECT * FROM claim_task('w', $1, $2, $3, true, $4, $5)",
                               LEASE_S, NOW, task, channel, ticket):
            made.append(k)
    return made


async def _most_in_window(conn: asyncpg.Connection) -> list[bool]:
    """Every bucket holds at most its quota's limit of starts within its window."""
    rows = await conn.fetch(
        "SELECT (SELECT count(*) FROM unnest(u.starts) s WHERE s > now() - make_interval("
        "secs => q.window_s)) <= q.max_starts AS within FROM quota_usage u JOIN quotas q"
        " ON q.id = u.quota_id")
    return [row["within"] for row in rows]


@pytest.mark.parametrize("name", list(ROOM))
async def test_picks_claim_together_as_far_as_their_buckets_have_room(
        conn: asyncpg.Connection, name: str) -> None:
    quotas, starts, channels, expected = ROOM[name]
    async with conn.transaction():
        picks = await _scenario(conn, quotas, starts, channels)
        assert await _together(conn, picks) == expected
        assert all(await _most_in_window(conn))
        for k, (_, _, task) in enumerate(picks, 1):
            status = await conn.fetchval("SELECT status::text FROM tasks WHERE id = $1", task)
            assert status == ("generating_assets" if k in expected else "queued")
        await conn.execute("DELETE FROM quotas")


@pytest.mark.parametrize("seed", range(16))
async def test_claimed_together_as_one_by_one(conn: asyncpg.Connection, seed: int) -> None:
    """The picks claimed together are those ``claim_task`` claims one by one in the same order,
    in random cases of quotas per channel and shared, starts in and out of their windows,
    buckets not made yet, and picks sharing channels; and the buckets end alike."""
    rng = random.Random(seed)
    quotas = [(rng.choice(["assets", "*"]), rng.random() < 0.6, rng.randint(1, 3))
              for _ in range(rng.randint(1, 3))]
    quotas = list({(stage, per): (stage, per, limit) for stage, per, limit in quotas}.values())
    channels = [rng.randrange(3) for _ in range(rng.randint(1, 7))]
    starts: list[tuple[int | None, int, int]] = [
        (None if not quotas[q][1] else rng.randrange(max(channels) + 1), q,
         rng.choice([1, 30, 600, 2000]))
        for q in [rng.randrange(len(quotas)) for _ in range(rng.randint(0, 4))]]
    unmade = frozenset((c, q) for q in range(len(quotas))
                       for c in (range(max(channels) + 1) if quotas[q][1] else [None])
                       if rng.random() < 0.15 and (c, q) not in {(s[0], s[1]) for s in starts})
    outcomes = []
    for way in ("together", "one by one"):
        tr = conn.transaction()
        await tr.start()
        try:
            picks = await _scenario(conn, quotas, starts, channels, unmade)
            every = list(range(1, len(picks) + 1))
            made = await (_together(conn, picks) if way == "together"
                          else _one_by_one(conn, picks, every))
            assert all(await _most_in_window(conn))
            outcomes.append((made, await _fullness(conn, picks)))
        finally:
            await tr.rollback()
    assert outcomes[0] == outcomes[1]


async def _fullness(conn: asyncpg.Connection, picks: list[Pick]) -> list[tuple[Any, ...]]:
    """Each bucket, by its channel's place among the picks' (-1: shared) and its quota's limit:
    its number of starts and whether it is blocked."""
    order = list(dict.fromkeys(channel for channel, _, _ in picks))
    rows = await conn.fetch("SELECT u.channel_id, q.stage, q.max_starts, cardinality(u.starts) n,"
                            " u.blocked_until IS NOT NULL blocked FROM quota_usage u"
                            " JOIN quotas q ON q.id = u.quota_id")
    return sorted((order.index(r["channel_id"]) if r["channel_id"] in order else -1,
                   r["stage"], r["max_starts"], r["n"], r["blocked"]) for r in rows)
