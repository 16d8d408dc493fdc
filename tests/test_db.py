"""Engine factory: libpq-style URLs, PgBouncer-safe mode, pool under concurrency, and the claim
index in the query plan."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import make_engine, make_sessionmaker, translate_url


def test_sslmode_translated_for_asyncpg() -> None:
    url, args = translate_url("postgresql://u:p@db.example:5432/app?sslmode=require")
    assert url.drivername == "postgresql+asyncpg"
    assert "sslmode" not in url.query and args == {"ssl": "require"}
    _, verify = translate_url("postgresql+asyncpg://u@h/app?sslmode=verify-full")
    assert isinstance(verify["ssl"], ssl.SSLContext) and verify["ssl"].check_hostname
    with pytest.raises(ValueError, match="sslmode"):
        translate_url("postgresql://u@h/app?sslmode=sometimes")


async def test_sslmode_prefer_connects(pg_url: str, settings: Settings) -> None:
    """A real connection with the libpq keyword (prefer: falls back to plain on a socket)."""
    separator = "&" if "?" in pg_url else "?"
    engine = make_engine(settings, f"{pg_url}{separator}sslmode=prefer")
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT 1")) == 1
    finally:
        await engine.dispose()


LEFT_PREPARED = sa.text("SELECT count(*) FROM pg_prepared_statements"
                        " WHERE statement NOT LIKE '%pg_prepared_statements%'")


async def _prepared_left(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        for _ in range(3):
            await conn.scalar(sa.text("SELECT count(*) FROM tasks"))
        return int(await conn.scalar(LEFT_PREPARED) or 0)


async def test_pgbouncer_mode_leaves_nothing_prepared(pg_url: str, settings: Settings) -> None:
    """Transaction pooling hands each transaction any backend: nothing may stay prepared."""
    default = make_engine(settings, pg_url)
    bouncer = make_engine(settings.model_copy(update={"db_pgbouncer": True}), pg_url)
    try:
        assert await _prepared_left(default) > 0       # the normal mode does cache
        assert await _prepared_left(bouncer) == 0
    finally:
        await default.dispose()
        await bouncer.dispose()


async def test_twenty_concurrent_sessions(pg_url: str, settings: Settings) -> None:
    engine = make_engine(settings, pg_url)
    sessions = make_sessionmaker(engine)
    inside = 0
    all_in = asyncio.Event()

    async def work() -> int:
        nonlocal inside
        async with sessions() as session, session.begin():
            await session.execute(sa.text("SELECT 1"))
            inside += 1
            if inside == 20:
                all_in.set()
            await all_in.wait()         # all twenty hold a connection at the same moment
            return int(await session.scalar(sa.text("SELECT pg_backend_pid()")) or 0)

    try:
        pids = await asyncio.wait_for(asyncio.gather(*(work() for _ in range(20))), 30)
        assert len(set(pids)) == 20
    finally:
        await engine.dispose()


async def test_claim_shaped_query_uses_partial_index(pg_engine: AsyncEngine) -> None:
    """10,000 queued tasks among 30,000: the per-channel head lookup reads ix_tasks_queued."""
    async with pg_engine.begin() as conn:
        channel = await conn.scalar(sa.text(
            "INSERT INTO channels (channel_id, channel_name) VALUES"
            " ('UCexplain' || md5(random()::text), 'explain') RETURNING id"))
        await conn.execute(sa.text(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status, priority)"
            " SELECT :c, md5(random()::text || g), 'x',"
            " (CASE WHEN g % 3 = 0 THEN 'queued' ELSE 'published' END)::taskstatus,"
            " (ARRAY['high','normal','low'])[1 + g % 3]::prioritylevel"
            " FROM generate_series(1, 30000) g"), {"c": channel})
        await conn.execute(sa.text("ANALYZE tasks"))
        plan = "\n".join((await conn.execute(sa.text(
            "EXPLAIN SELECT id FROM tasks WHERE channel_id = :c AND status = 'queued'"
            " AND hold_since IS NULL"
            " ORDER BY priority, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"),
            {"c": channel})).scalars())
        await conn.execute(sa.text("DELETE FROM tasks WHERE channel_id = :c"), {"c": channel})
        await conn.execute(sa.text("DELETE FROM channels WHERE id = :c"), {"c": channel})
    assert "ix_tasks_queued" in plan, plan
