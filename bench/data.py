"""The benchmark's own database: servers, a scratch database, fast loading, resets between cells.

Rows are loaded with ``INSERT … SELECT generate_series`` (one statement per 100k rows), which
is an order of magnitude faster than the service path and produces the same rows: the
benchmark measures claims, not enqueues.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]  # ships no type information
from sqlalchemy.engine import make_url

from app import servers
from app.config import Settings
from app.db import connect_kwargs, migrate
from bench import flushes

#: Channels in the throughput runs, none with a capacity limit.
CHANNELS = 10
CHUNK = 100_000
#: Where a measured claim leaves its task (both claimers): the first stage has started.
MOVED_TO = "generating_assets"


def progress(message: str) -> None:
    """Progress for long phases: stderr, so the table on stdout stays clean."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def server_urls(settings: Settings) -> tuple[str, str]:
    """``DATABASE_URL`` / ``REDIS_URL``, or the embedded servers (started if needed)."""
    return await servers.database_url(settings), servers.redis_url(settings)


async def connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(**connect_kwargs(url))
    return conn


@contextlib.asynccontextmanager
async def scratch_database(server_url: str) -> AsyncIterator[str]:
    """A new migrated database next to the server's own, dropped at the end (even on error)."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        # Its sessions time their WAL flushes (bench.flushes): a superuser's setting, and
        # PostgreSQL 14's.
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError,
                                 asyncpg.UndefinedObjectError):
            await admin.execute(f'ALTER DATABASE "{name}" SET {flushes.TIMING} = on')
    finally:
        await admin.close()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        await migrate.upgrade(url)
        yield url
    finally:
        admin = await connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


_INSERT = """
INSERT INTO tasks (channel_id, notion_page_id, title, topic, story_direction, status,
                   priority, created_at, published_at)
SELECT ($1::uuid[])[1 + i % cardinality($1::uuid[])],
       md5($2 || i::text),
       'Video ' || i, 'A topic for video ' || i, repeat('Story direction. ', 12),
       $3::taskstatus,
       (CASE WHEN i % 10 = 0 THEN 'high' WHEN i % 10 < 8 THEN 'normal' ELSE 'low' END)
         ::prioritylevel,
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 millisecond',
       CASE WHEN $3 = 'published' THEN now() END
FROM generate_series($4::bigint, $5::bigint) AS i
"""


class Loader:
    """Inserts tasks in FIFO order across the benchmark's channels (10% high, 70% normal,
    20% low priority); every row is younger than the rows loaded before it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.channels: list[uuid.UUID] = []
        self.next_row = 0
        self.salt = uuid.uuid4().hex[:8]

    async def add_channels(self, count: int = CHANNELS) -> None:
        rows = await self.conn.fetch(
            "INSERT INTO channels (channel_id, channel_name)"
            " SELECT 'UCbench-' || $1 || '-' || g, 'Bench ' || g FROM generate_series(1, $2) g"
            " RETURNING id", self.salt, count)
        self.channels = [row["id"] for row in rows]

    async def add_tasks(self, count: int, status: str = "queued", *, label: str = "") -> None:
        await self.conn.execute("SET synchronous_commit = off")   # loading only
        done = 0
        while done < count:
            step = min(CHUNK, count - done)
            first = self.next_row + done
            await self.conn.execute(_INSERT, self.channels, self.salt, status, first,
                                    first + step - 1)
            done += step
            if label and count > CHUNK:
                progress(f"{label}: {done:,}/{count:,} rows")
        self.next_row += count
        await self.conn.execute("RESET synchronous_commit")

    async def refill(self) -> int:
        """Delete the tasks a cell moved (their events go with them) and queue as many new ones
        at the tail, so every cell starts from the same queue depth; then VACUUM ANALYZE."""
        moved = await self.conn.fetchval(
            "WITH d AS (DELETE FROM tasks WHERE status = $1 RETURNING 1) SELECT count(*) FROM d",
            MOVED_TO)
        await self.add_tasks(int(moved))
        await self.conn.execute("DELETE FROM quota_usage")   # each cell's quotas start unspent
        await vacuum(self.conn)
        return int(moved)


async def vacuum(conn: asyncpg.Connection) -> None:
    """Fresh statistics and no dead index entries at the head of the claim index."""
    for table in ("tasks", "task_events", "channels"):
        await conn.execute(f"VACUUM (ANALYZE) {table}")


async def checkpoint(conn: asyncpg.Connection) -> None:
    """Flush the load's dirty pages now rather than during a measurement (needs a superuser
    or pg_checkpoint; skipped without)."""
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")


async def server_info(conn: asyncpg.Connection) -> str:
    version = await conn.fetchval("SHOW server_version")
    buffers = await conn.fetchval("SHOW shared_buffers")
    sync = await conn.fetchval("SHOW synchronous_commit")
    autovacuum = await conn.fetchval("SHOW autovacuum")
    return (f"PostgreSQL {version} (shared_buffers {buffers}, synchronous_commit {sync},"
            f" autovacuum {autovacuum})")
