"""``bench.cpu``: CPU time read from ``/proc`` for this process and for the test server."""

from __future__ import annotations

import os
import time

import asyncpg  # type: ignore[import-untyped]  # ships no type information

from app.db import connect_kwargs
from bench import cpu


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_process_s_cpu_time_grows_as_it_works() -> None:
    before = cpu.process_s(os.getpid())
    _burn(0.2)
    after = cpu.process_s(os.getpid())
    assert before is not None and after is not None
    assert after - before >= 0.15


def test_a_process_that_is_not_postgresql_has_no_postmaster() -> None:
    assert cpu.postmaster_of(os.getpid()) is None
    assert cpu.process_s(2**22 + 1) is None and cpu.server_s(2**22 + 1) is None


async def test_the_server_s_cpu_time_counts_a_backend_that_has_ended(pg_url: str) -> None:
    conn = await asyncpg.connect(**connect_kwargs(pg_url))
    try:
        postmaster = await cpu.postmaster(conn)
    finally:
        await conn.close()
    # The test servers (the embedded one, or the machine's in CI) run here.
    assert postmaster is not None
    before = cpu.server_s(postmaster)
    worker = await asyncpg.connect(**connect_kwargs(pg_url))
    try:      # about 0.3 s of the server's CPU, in a backend that then exits
        await worker.execute("SELECT count(*) FROM generate_series(1, 3000000)")
    finally:
        await worker.close()
    await _until_gone(pg_url)
    after = cpu.server_s(postmaster)
    assert before is not None and after is not None
    assert after - before >= 0.1


async def _until_gone(url: str) -> None:
    """No other backend of this database left (the ended one's time is then its parent's)."""
    conn = await asyncpg.connect(**connect_kwargs(url))
    try:
        for _ in range(100):
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND query LIKE 'SELECT count(*) FROM generate%'")
            if not others:
                return
            await conn.execute("SELECT pg_sleep(0.02)")
    finally:
        await conn.close()
