"""Plans made on an empty table: a worker's connection plans the statements inside the claim
and the stage boundary the first time it calls them, and keeps those plans for its life. A new
database has no statistics yet, so those first plans are made believing ``tasks`` tiny. They
must still read the indexes made for them once the table holds a real history: otherwise every
pick-up and every carry reads each channel's whole history until the next ``ANALYZE`` (which a
server without autovacuum never runs). Real PostgreSQL, buffers counted by ``auto_explain``."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from app.db import connect_kwargs, statements
from app.db.ddl import boundary, claim_task
from app.execution import hotpath
from app.moves import Claim
from tests import dbtools

WORKER = "plans-test"
#: Every gate passed at once, so a boundary carries its task on.
AUTO = frozenset({"assets", "audio", "final", "video"})

#: Finished tasks per channel: the history a plan must not read.
HISTORY = 20_000
CHANNELS = 4
#: Reading more than this per call means a probe walked a history (the plans made for the
#: indexes read a few hundred; the plans this guards against read tens of thousands).
MOST_BUFFERS = 2_000

#: How the statement of ``pick_channels`` that reads each channel's first tasks begins.
RANKED_TOGETHER = "SELECT coalesce(array_agg(r.ch"
_BUFFERS = re.compile(r"Buffers: shared hit=(\d+)(?: read=(\d+))?")
_AUTO_EXPLAIN = ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                 "SET auto_explain.log_analyze = on", "SET auto_explain.log_buffers = on",
                 "SET auto_explain.log_nested_statements = on",
                 "SET auto_explain.log_timing = off", "SET auto_explain.log_level = notice")


@pytest.fixture
async def fresh(pg_server_url: str) -> AsyncIterator[str]:
    """A migrated database whose tables were never analyzed."""
    async with dbtools.scratch_database(pg_server_url, migrate=True) as url:
        yield url


def _now() -> datetime:
    return datetime.now(UTC)


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a JSON plan."""
    return [plan] + [node for child in plan.get("Plans", []) for node in _nodes(child)]


async def _pick_up(conn: asyncpg.Connection, count: int) -> list[Claim]:
    taken = await hotpath.take_many(conn, count, worker_id=WORKER, lease_s=30.0, now=_now())
    return [one.claim for one in taken]


async def _carry(conn: asyncpg.Connection, held: list[Claim]) -> int:
    """Stage boundaries of ``held`` in one call, every gate auto-approved; how many carried on."""
    results = await hotpath.boundaries(
        conn, [hotpath.Ending(claim, {"plans": 1}) for claim in held], actor=WORKER,
        lease_s=30.0, now=_now(), auto_approved=AUTO, carry=True)
    return sum(1 for r in results if isinstance(r, hotpath.Boundary) and r.taken is not None)


async def _buffers(conn: asyncpg.Connection, run: Callable[[], Awaitable[object]],
                   parts: tuple[str, ...]) -> int:
    """Buffers read by what ``run`` sends: its statements that start with one of ``parts``,
    their nested statements included (``auto_explain`` logs no ``CALL``: for a procedure,
    ``parts`` names the statements inside it)."""
    plans: list[str] = []

    def listen(_conn: object, message: object) -> None:
        plans.append(str(getattr(message, "message", "")))

    conn.add_log_listener(listen)
    try:
        for statement in _AUTO_EXPLAIN:
            await conn.execute(statement)
        await run()
        await conn.execute("SET auto_explain.log_min_duration = -1")
    finally:
        conn.remove_log_listener(listen)
    texts = [(p.split("Query Text: ", 1)[1], p) for p in plans if "Query Text: " in p]
    mine = [p for text, p in texts if any(text.startswith(part) for part in parts)]
    assert mine, f"no plan was logged for {parts}: {[t[:40] for t, _ in texts]}"
    total = 0
    for plan in mine:
        found = _BUFFERS.search(plan)
        total += int(found.group(1)) + int(found.group(2) or 0) if found else 0
    return total


async def _planned_on_one_task(admin: asyncpg.Connection, worker: asyncpg.Connection, *,
                               cap: int | None) -> tuple[list[uuid.UUID], list[Claim]]:
    """``CHANNELS`` channels with ``cap``; the worker's connection plans the rankings (of one
    pick-up, and of several together) on an empty table, then claims the one task queued. The
    channels, and that claim."""
    channels = [r["id"] for r in await admin.fetch(
        "INSERT INTO channels (channel_id, channel_name, max_concurrent)"
        " SELECT 'UC-plans-' || g, 'Plans ' || g, $2 FROM generate_series(1, $1) g"
        " RETURNING id", CHANNELS, cap)]
    assert await _pick_up(worker, 1) == []
    assert await _pick_up(worker, boundary.PICKS_TOGETHER) == []
    await admin.execute(
        "INSERT INTO tasks (channel_id, notion_page_id, title, status)"
        " VALUES ($1, md5('first'), 'First', 'queued')", channels[0])
    first = await _pick_up(worker, 1)
    assert len(first) == 1
    return channels, first


async def test_plans_made_on_an_empty_table_read_the_claim_indexes_once_it_fills(
        fresh: str) -> None:
    admin = await asyncpg.connect(**connect_kwargs(fresh))
    worker = await asyncpg.connect(**connect_kwargs(fresh))
    try:
        # The claim and the boundary (with its capacity count) planned on a table of one task.
        channels, first = await _planned_on_one_task(admin, worker, cap=50)
        assert await _carry(worker, first) == 1

        await admin.execute(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status, published_at)"
            " SELECT ($1::uuid[])[1 + g % $2], md5('done' || g), 'Done ' || g, 'published',"
            " now() FROM generate_series(1, $3) g", channels, CHANNELS, HISTORY * CHANNELS)
        await admin.execute(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status)"
            " SELECT ($1::uuid[])[1 + g % $2], md5('queued' || g), 'Queued ' || g, 'queued'"
            " FROM generate_series(1, 200) g", channels, CHANNELS)
        held = await _pick_up(worker, 8) + await _pick_up(worker, 8)
        assert len(held) == 16

        picked = await _buffers(worker, lambda: _pick_up(worker, 1),
                                parts=("SELECT p.channel", "SELECT c.*"))
        carried = await _buffers(worker, lambda: _carry(worker, held[:8]),
                                 parts=(statements.BOUNDARIES[:30],))
    finally:
        await worker.close()
        await admin.close()
    assert picked < MOST_BUFFERS, f"a pick-up read {picked} buffers"
    assert carried < MOST_BUFFERS, f"eight carries read {carried} buffers"


async def test_plans_made_on_an_empty_table_take_each_task_by_its_key_once_the_queue_fills(
        fresh: str) -> None:
    """Channels without a cap: the pick-up decides its pick-ups together (``pick_channels``)
    and claims its reserved tasks together (``claim_reserved``), and a boundary carries its
    tasks a set at a time. Planned on an empty table, those statements must still find each
    task by its primary key (the pick-ups: each channel's first queued tasks through
    ``ix_tasks_queued``) once the queue holds thousands of tasks and thousands are in the same
    active state: not by reading every queued task (``ix_tasks_queued``) or every task in that
    state (``ix_tasks_status``)."""
    admin = await asyncpg.connect(**connect_kwargs(fresh))
    worker = await asyncpg.connect(**connect_kwargs(fresh))
    try:
        channels, _ = await _planned_on_one_task(admin, worker, cap=None)

        # A full queue, and as many tasks running their first stage under other workers.
        await admin.execute(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status)"
            " SELECT ($1::uuid[])[1 + g % $2], md5('queued' || g), 'Queued ' || g, 'queued'"
            " FROM generate_series(1, $3) g", channels, CHANNELS, HISTORY)
        await admin.execute(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status, claimed_by,"
            " claimed_at, claim_token, lease_expires_at, attempts, stage_runs)"
            " SELECT ($1::uuid[])[1 + g % $2], md5('running' || g), 'Running ' || g,"
            " 'generating_assets', 'elsewhere', now(), gen_random_uuid(),"
            " now() + interval '1 hour', 1, 1 FROM generate_series(1, $3) g",
            channels, CHANNELS, HISTORY)
        held = await _pick_up(worker, 8)
        assert len(held) == 8

        picked = await _buffers(worker, lambda: _pick_up(worker, 8),
                                parts=("SELECT r.* FROM claim_reserved",))
        ranked = await _buffers(worker, lambda: _pick_up(worker, 8),
                                parts=(RANKED_TOGETHER,))
        carried = await _buffers(worker, lambda: _carry(worker, held),
                                 parts=(statements.BOUNDARIES[:30],))
    finally:
        await worker.close()
        await admin.close()
    assert picked < MOST_BUFFERS, f"eight claims together read {picked} buffers"
    assert ranked < MOST_BUFFERS, f"eight pick-ups decided together read {ranked} buffers"
    assert carried < MOST_BUFFERS, f"eight carries read {carried} buffers"


@pytest.mark.parametrize("cap", [None, 50], ids=["uncapped", "capped"])
async def test_plans_made_while_nothing_was_queued_read_each_channels_first_tasks_only(
        fresh: str, cap: int | None) -> None:
    """Statistics taken while nothing was queued (a quiet hour: every task published) say a
    channel has no queued task, so every way of finding its first ones looks equally cheap:
    reading them in order from ``ix_tasks_queued``, or reading every queued task of every
    channel from ``ix_tasks_status`` and sorting them. A burst of work too small for
    autovacuum to analyze again (or a server without it) then made every pick-up read the
    whole queue once per channel. The claims read the queue in the claim indexes' order
    whatever the statistics: a pick-up alone, several together, and the ranking of capped
    channels (one pick at a time); the carries of those tasks into their next stage too."""
    admin = await asyncpg.connect(**connect_kwargs(fresh))
    worker = await asyncpg.connect(**connect_kwargs(fresh))
    try:
        await admin.execute("ALTER TABLE tasks SET (autovacuum_enabled = off)")
        channels = [r["id"] for r in await admin.fetch(
            "INSERT INTO channels (channel_id, channel_name, max_concurrent)"
            " SELECT 'UC-quiet-' || g, 'Quiet ' || g, $2 FROM generate_series(1, $1) g"
            " RETURNING id", CHANNELS, cap)]
        await admin.execute(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status, published_at)"
            " SELECT ($1::uuid[])[1 + g % $2], md5('done' || g), 'Done ' || g, 'published',"
            " now() FROM generate_series(1, $3) g", channels, CHANNELS, HISTORY)
        await admin.execute("ANALYZE tasks")
        await admin.execute(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status)"
            " SELECT ($1::uuid[])[1 + g % $2], md5('burst' || g), 'Burst ' || g, 'queued'"
            " FROM generate_series(1, $3) g", channels, CHANNELS, 3 * HISTORY)
        # The worker's connection plans the statements (its first calls), then claims.
        assert len(await _pick_up(worker, 1) + await _pick_up(worker, 8)) == 9

        alone = await _buffers(worker, lambda: _pick_up(worker, 1),
                               parts=("SELECT p.channel", "SELECT c.*", "SELECT r.*"))
        held: list[Claim] = []

        async def pick_eight() -> None:
            held.extend(await _pick_up(worker, 8))

        together = await _buffers(
            worker, pick_eight,
            parts=("SELECT coalesce(array_agg(p.channel", "SELECT c.*", "SELECT r.*"))
        carried = await _buffers(worker, lambda: _carry(worker, held),
                                 parts=(statements.BOUNDARIES[:30],))
        taken = await worker.fetchval("SELECT count(*) FROM tasks WHERE claimed_by = $1",
                                      WORKER)
    finally:
        await worker.close()
        await admin.close()
    assert taken == 18
    assert alone < MOST_BUFFERS, f"a pick-up read {alone} buffers"
    assert together < MOST_BUFFERS, f"eight pick-ups at once read {together} buffers"
    assert carried < MOST_BUFFERS, f"eight carries read {carried} buffers"


async def test_the_queue_readers_plan_without_a_sort_and_their_callees_with(fresh: str) -> None:
    """The functions that read a channel's first tasks run with ``claim_task.QUEUE_ORDER``
    (a re-created function loses its ``SET`` clauses, and the test above would then pass only
    while the statistics happen to favour the claim index); a function's setting holds in the
    functions it calls, so ``claim_task``, which calls ``quota_take``, runs without it."""
    conn = await asyncpg.connect(**connect_kwargs(fresh))
    try:
        settings = dict(await conn.fetch(
            "SELECT p.proname, coalesce(p.proconfig, '{}') FROM pg_proc p"
            " WHERE p.proname = ANY ($1::text[])",
            ["pick_channel", "pick_channels", "claim_task", "quota_take"]))
    finally:
        await conn.close()
    name, value = claim_task.QUEUE_ORDER
    assert [r.split("(")[0] for r in claim_task.QUEUE_READERS] == ["pick_channel",
                                                                    "pick_channels"]
    for reader in ("pick_channel", "pick_channels"):
        assert f"{name}={value}" in settings[reader], settings
    for callee in ("claim_task", "quota_take"):
        assert not any(s.startswith(f"{name}=") for s in settings[callee]), settings


async def test_claim_and_boundary_functions_are_never_jit_compiled(fresh: str) -> None:
    """A kept plan over the JIT's cost threshold is compiled again at every execution (20 ms
    per pick-up). The functions turn the JIT off themselves, so a session with the JIT on (a
    connection through PgBouncer, which cannot pass ``jit = off`` at start) runs them
    uncompiled, even with every plan over the threshold."""
    conn = await asyncpg.connect(**connect_kwargs(fresh))
    try:
        settings = dict(await conn.fetch(
            "SELECT p.proname, array_to_string(p.proconfig, ',') FROM pg_proc p"
            " WHERE p.proname = ANY ($1::text[])",
            ["pick_channel", "pick_channels", "claim_task", "stage_boundary",
             "stage_boundaries"]))
        assert len(settings) == 5
        assert all("jit=off" in (config or "") for config in settings.values()), settings
        channel = await conn.fetchval(
            "INSERT INTO channels (channel_id, channel_name) VALUES ('UC-jit', 'JIT')"
            " RETURNING id")
        await conn.execute(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status)"
            " SELECT $1, md5('jit' || g), 'JIT ' || g, 'queued' FROM generate_series(1, 3) g",
            channel)
        await conn.execute("SET jit = on")
        await conn.execute("SET jit_above_cost = 0")
        plans: list[str] = []
        conn.add_log_listener(lambda _c, m: plans.append(str(getattr(m, "message", ""))))
        for statement in _AUTO_EXPLAIN:
            await conn.execute(statement)
        held = await _pick_up(conn, 2)
        assert len(held) == 2
        assert await _carry(conn, held) == 2
        await conn.execute(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status)"
            " SELECT $1, md5('jit more' || g), 'JIT ' || g, 'queued'"
            " FROM generate_series(1, $2) g", channel, boundary.PICKS_TOGETHER)
        assert len(await _pick_up(conn, boundary.PICKS_TOGETHER)) == boundary.PICKS_TOGETHER
        await conn.execute("SET auto_explain.log_min_duration = -1")
        available = await conn.fetchval("SELECT pg_jit_available()")
    finally:
        await conn.close()
    # The statements inside the functions: the ranking, the row's write and its events (the
    # caller's own statements, a CALL's and the SELECT that calls a function, are cheap plans
    # that a JIT threshold of its default never reaches).
    inside = [p for p in plans if any(f"Query Text: {start}" in p for start in (
        "SELECT c.id AS channel", RANKED_TOGETHER, "UPDATE tasks t SET",
        "INSERT INTO task_events"))]
    assert len(inside) >= 3, [p.split("\n", 2)[:2] for p in plans]
    compiled = [p.split("\n", 2)[1] for p in inside if "JIT:" in p]
    # Where the server has no JIT nothing can be compiled; the settings above still hold.
    assert not compiled or not available, compiled


async def test_the_stage_of_a_state_is_inlined_where_it_is_called(fresh: str) -> None:
    """``task_stage`` (which the claim, the carry and the ranking call once quotas exist) is an
    SQL function the planner inlines. One it cannot inline (declared immutable over an enum's
    text, which is only stable) runs as a query of its own, parsed and planned again at every
    execution of the statement that calls it: a fifth of a stage boundary's fixed cost."""
    conn = await asyncpg.connect(**connect_kwargs(fresh))
    try:
        plan = await conn.fetchval(
            "EXPLAIN (VERBOSE, FORMAT JSON) SELECT task_stage(s, f)"
            " FROM unnest($1::taskstatus[], $2::text[]) x (s, f)",
            ["asset_error", "generating_video"], ["composites", None])
        stages = await conn.fetch(
            "SELECT task_stage(s, f) FROM unnest($1::taskstatus[], $2::text[]) x (s, f)",
            ["asset_error", "generating_video"], ["composites", None])
    finally:
        await conn.close()
    output = json.loads(plan)[0]["Plan"]["Output"]
    assert not any("task_stage" in column for column in output), output
    assert [r[0] for r in stages] == ["composites", "video"]


async def test_the_quota_blocks_are_inlined_and_read_through_their_index(fresh: str) -> None:
    """``quota_blocks`` (read at every pick-up and claim once a quota exists) is inlined into the
    statement that reads it and can read ``ix_quota_usage_blocked_until``: compared with the
    clock (volatile), it was planned anew at every call and scanned the whole table, which
    every start rewrites. Only blocked buckets come back."""
    conn = await asyncpg.connect(**connect_kwargs(fresh))
    try:
        quota = await conn.fetchval("INSERT INTO quotas (stage, per_channel, max_starts, window_s)"
                                    " VALUES ('video', true, 1, 60) RETURNING id")
        await conn.execute(
            "INSERT INTO quota_usage (channel_id, quota_id, stage, blocked_until)"
            " SELECT gen_random_uuid(), $1, 'video', CASE WHEN i = 1 THEN now() + interval"
            " '1 minute' WHEN i = 2 THEN now() - interval '1 second' END"
            " FROM generate_series(1, 3) i", quota)
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = await conn.fetchval("EXPLAIN (FORMAT JSON) SELECT * FROM quota_blocks()")
        blocks = await conn.fetch("SELECT * FROM quota_blocks()")
        await conn.execute("DELETE FROM quotas")
    finally:
        await conn.close()
    nodes = _nodes(json.loads(plan)[0]["Plan"])
    assert not [n for n in nodes if n.get("Function Name") == "quota_blocks"], nodes
    assert {n.get("Index Name") for n in nodes} >= {"ix_quota_usage_blocked_until"}, nodes
    assert [b["stage"] for b in blocks] == ["video"]
