"""WAL flushes: how often the server waited for its log to reach the disk, and for how long.

A synchronous commit returns after its WAL is flushed (``fdatasync``), so a claim path's rate
depends on the disk's flush time as much as on CPU: the baseline commits twice per claim, ours
once, and which costs more changes with the disk (measured on this machine: 37 µs a flush one
day, several times that under load). The counts are the server's own: ``pg_stat_wal`` up to
PostgreSQL 17, ``pg_stat_io`` (``object = 'wal'``) from 18 on. The time is counted only with
``track_wal_io_timing`` on, which the benchmark asks for on its scratch databases (a
superuser's setting; without it, counts only). A backend reports its counts when its
transactions end, at most once a second while it lives, and as it exits: read after the
measured connections closed, the counts are whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]  # ships no type information

#: The flushes and their time (ms; NULL unless timed), by the first server version that keeps
#: them there.
QUERIES = (
    (180000, "SELECT coalesce(sum(fsyncs), 0)::bigint, CASE WHEN"
             " current_setting('track_wal_io_timing')::boolean THEN sum(fsync_time) END"
             " FROM pg_stat_io WHERE object = 'wal'"),
    (140000, "SELECT wal_sync, CASE WHEN current_setting('track_wal_io_timing')::boolean"
             " THEN wal_sync_time END FROM pg_stat_wal"),
)
#: Asked for on the benchmark's scratch databases (ignored without the privilege).
TIMING = "track_wal_io_timing"


@dataclass(frozen=True)
class Flushes:
    """The server's WAL flushes so far, and the time they took (None: not timed)."""

    count: int
    ms: float | None

    def __sub__(self, earlier: Flushes) -> Flushes:
        ms = None if self.ms is None or earlier.ms is None else self.ms - earlier.ms
        return Flushes(self.count - earlier.count, ms)

    def __add__(self, other: Flushes) -> Flushes:
        ms = None if self.ms is None or other.ms is None else self.ms + other.ms
        return Flushes(self.count + other.count, ms)


async def read(conn: asyncpg.Connection) -> Flushes | None:
    """The server's flushes so far; None where it does not count them (before PostgreSQL 14)."""
    version = int(await conn.fetchval("SHOW server_version_num"))
    for since, query in QUERIES:
        if version >= since:
            count, ms = await conn.fetchrow(query)
            return Flushes(int(count), None if ms is None else float(ms))
    return None
