"""The ranking of ``pick_channel`` is one rule rendered in eight forms (``claim_task.FORMS``):
each flag (caps, spent quotas, runnable work other than queued) keeps the part that handles its
case, and a form without it treats that part as its constant. Every form whose flags cover what
the data holds must choose what the full form chooses, and a form that leaves out what the data
holds must not be used (here it chooses otherwise, which is why the pick reads the flags). Real
PostgreSQL; each form runs as a temporary function over the same rows."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import asyncpg
import pytest

from app.db import connect_kwargs
from app.db.ddl import claim_task
from tests import dbtools

Form = tuple[bool, bool, bool]
FULL: Form = (True, True, True)


def _head() -> ModuleType:
    path = Path(__file__).parent.parent / "alembic" / "versions" / "0011_lean_pick.py"
    spec = importlib.util.spec_from_file_location("rev_0011", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function(form: Form) -> str:
    head = _head()
    capped, blocked, others = form
    ranking = claim_task._ranking(claim_task._list(head.STARTS), claim_task._list(head.ERRORS),
                                  claim_task._list(head.ACTIVE), head.FIRST, capped=capped,
                                  blocked=blocked, others=others)
    return f"""CREATE OR REPLACE FUNCTION pg_temp.rank_form()
RETURNS TABLE (ch uuid, tk uuid, top integer) LANGUAGE plpgsql AS $$
DECLARE
  cand record;
  held uuid[] := '{{}}';
  blk_ch uuid[];
  blk_st text[];
  p_now timestamptz := clock_timestamp();
BEGIN
  SELECT coalesce(array_agg(b.channel), '{{}}'), coalesce(array_agg(b.stage), '{{}}')
    INTO blk_ch, blk_st FROM quota_blocks() b;
  {ranking}
  IF FOUND THEN
    ch := cand.channel; tk := cand.task; top := cand.top;
    RETURN NEXT;
  END IF;
END
$$"""


@pytest.fixture
async def conn(pg_server_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with dbtools.scratch_database(pg_server_url, migrate=True) as url:
        connection = await asyncpg.connect(**connect_kwargs(url))
        try:
            yield connection
        finally:
            await connection.close()


async def _chosen(conn: asyncpg.Connection) -> dict[Form, tuple[object, ...] | None]:
    chosen = {}
    for form in claim_task.FORMS:
        await conn.execute(_function(form))
        row = await conn.fetchrow("SELECT ch, tk, top FROM pg_temp.rank_form()")
        chosen[form] = None if row is None else tuple(row)
    return chosen


async def _flags(conn: asyncpg.Connection) -> Form:
    """What the data holds, read as ``pick_channel`` reads it."""
    head = _head()
    flags = claim_task._flags(claim_task._list(head.STARTS), claim_task._list(head.ERRORS),
                              claim_task._list(head.ACTIVE))
    row = await conn.fetchrow(f"SELECT {flags['capped']}, {flags['others']},"
                              " EXISTS (SELECT 1 FROM quota_blocks())")
    assert row is not None
    return bool(row[0]), bool(row[2]), bool(row[1])


async def _channels(conn: asyncpg.Connection, count: int) -> list[object]:
    rows = await conn.fetch(
        "INSERT INTO channels (channel_id, channel_name, picks)"
        " SELECT 'UC-rank-' || g, 'R' || g, g % 2 FROM generate_series(1, $1) g RETURNING id",
        count)
    return [row["id"] for row in rows]


async def _task(conn: asyncpg.Connection, channel: object, status: str, priority: str,
                age_s: int) -> None:
    """A task placed in ``status`` (the guard checks updates only)."""
    await conn.execute(
        "INSERT INTO tasks (channel_id, notion_page_id, title, status, priority, created_at)"
        " VALUES ($1, md5(random()::text), 'T', $2::taskstatus, $3::prioritylevel,"
        " now() - make_interval(secs => $4))", channel, status, priority, age_s)


def _covers(form: Form, held: Form) -> bool:
    return all(on or not needed for on, needed in zip(form, held, strict=True))


async def _check(conn: asyncpg.Connection, expect: Form) -> dict[Form, tuple[object, ...] | None]:
    """Every form that covers the data chooses what the full form chooses."""
    assert await _flags(conn) == expect
    chosen = await _chosen(conn)
    assert chosen[FULL] is not None
    for form, choice in chosen.items():
        if _covers(form, expect):
            assert choice == chosen[FULL], f"form {form}: {choice}, the full form: {chosen[FULL]}"
    return chosen


async def test_queued_work_only_every_form_chooses_alike(conn: asyncpg.Connection) -> None:
    a, b, c = await _channels(conn, 3)
    for channel, priority, age in ((a, "normal", 30), (b, "high", 10), (b, "normal", 50),
                                   (c, "high", 20), (c, "low", 90)):
        await _task(conn, channel, "queued", priority, age)
    chosen = await _check(conn, (False, False, False))
    assert len(set(chosen.values())) == 1


async def test_a_full_capped_channel_needs_the_capped_forms(conn: asyncpg.Connection) -> None:
    a, b = await _channels(conn, 2)
    await conn.execute("UPDATE channels SET max_concurrent = 1 WHERE id = $1", a)
    await _task(conn, a, "generating_video", "normal", 100)     # holds a's one slot
    await conn.execute("UPDATE tasks SET claim_token = gen_random_uuid(), claimed_by = 'w'"
                       " WHERE channel_id = $1", a)
    await _task(conn, a, "queued", "high", 50)                  # a's best, but a is full
    await _task(conn, b, "queued", "normal", 10)
    chosen = await _check(conn, (True, False, False))
    assert chosen[(False, False, False)] != chosen[FULL]        # the cap is what decides


async def test_a_spent_quota_needs_the_blocked_forms(conn: asyncpg.Connection) -> None:
    a, b = await _channels(conn, 2)
    await _task(conn, a, "queued", "high", 50)
    await _task(conn, b, "queued", "normal", 10)
    quota = await conn.fetchval("INSERT INTO quotas (stage, per_channel, max_starts, window_s)"
                                " VALUES ('assets', true, 1, 3600) RETURNING id")
    await conn.execute("INSERT INTO quota_usage (channel_id, quota_id, stage, starts,"
                       " blocked_until) VALUES ($1, $2, 'assets', ARRAY[now()],"
                       " now() + interval '1 hour')", a, quota)
    chosen = await _check(conn, (False, True, False))
    assert chosen[(False, False, False)] != chosen[FULL]


async def test_work_past_a_gate_needs_the_forms_with_others(conn: asyncpg.Connection) -> None:
    a, b = await _channels(conn, 2)
    await _task(conn, a, "queued", "low", 50)
    await _task(conn, a, "assets_approved", "high", 5)          # a's best is past a gate
    await _task(conn, b, "queued", "normal", 10)
    chosen = await _check(conn, (False, False, True))
    assert chosen[(False, False, False)] != chosen[FULL]
