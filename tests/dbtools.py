"""Throwaway databases on a test server: create, migrate, drop."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from app.db import migrate as migrations
from app.db import translate_url


async def _admin(server_url: str, sql: str) -> None:
    url, args = translate_url(server_url)
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                 connect_args=args)
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def scratch_database(server_url: str, *, migrate: bool) -> AsyncIterator[str]:
    """A new empty (or migrated) database on the server of ``server_url``; dropped after."""
    name = f"pqtest_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            await migrations.upgrade(url)
        yield url
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def wait_for_lock_waiters(
    sessions: async_sessionmaker[AsyncSession], count: int, *, timeout_s: float = 10.0,
) -> None:
    """Return once ``count`` backends of this database wait for a lock."""
    query = text("SELECT count(*) FROM pg_stat_activity"
                 " WHERE wait_event_type = 'Lock' AND datname = current_database()")
    async with asyncio.timeout(timeout_s):
        while True:
            async with sessions() as session:
                if (await session.scalar(query) or 0) >= count:
                    return
            await asyncio.sleep(0.01)
