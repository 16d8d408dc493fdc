"""The benchmark's machinery at a toy size: it runs, and its counts add up (no timings)."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]  # ships no type information

from app.db import connect_kwargs
from bench import claimers, cpu, flushes, report
from bench.run import Dataset, Options, run


async def test_bench_toy_run_produces_the_table(pg_server_url: str) -> None:
    dataset = Dataset(200)
    options = Options((dataset,), claimers=(1, 2), claims=40, rounds=2, workers=False)
    result = await run(options, pg_server_url, redis_url="unused")
    conn = await asyncpg.connect(**connect_kwargs(pg_server_url))
    try:
        here = await cpu.postmaster(conn) is not None
    finally:
        await conn.close()

    kinds = (*claimers.KINDS, claimers.BATCH_KIND)
    assert set(result.cells) == {(dataset, n, kind) for n in (1, 2) for kind in kinds}
    for (_, _, kind), cell in result.cells.items():
        rounds = 2 if kind in claimers.PAIR else 1       # the compared pair's rounds pooled
        assert (cell.rounds, cell.claims) == (rounds, 40 * rounds)
        if kind != claimers.BATCH_KIND:      # one latency per claim transaction
            assert len(cell.latencies_ms) == 40 * rounds
        # The server's CPU per claim where the server runs here (read in clock ticks of
        # 10 ms: a toy cell may read none; tests/test_bench_cpu.py checks that it grows).
        us = cell.server_us_per_claim
        assert (us is not None) == here and (us is None or us >= 0)
        # Each commits synchronously: its flushes counted and timed (a superuser's servers).
        if kind in claimers.PAIR:
            per = cell.flushes_per_claim
            assert per is not None and per[0] > 0 and per[1] is not None and per[1] >= 0
    assert result.plans[(dataset, "ours")].uses_claim_index
    assert "ix_tasks_runnable" in result.plans[(dataset, "ours")].indexes
    text = report.render(result)
    assert "200 queued" in text and "ix_tasks_queued" in text and "PostgreSQL" in text
    assert "claim uses ix_tasks_queued at every size" in text
    assert "ours srv µs" in text and "base srv µs" in text
    assert "ours flush" in text and "base flush" in text


async def test_flushes_count_a_synchronous_commit(pg_url: str) -> None:
    conn = await asyncpg.connect(**connect_kwargs(pg_url))
    try:
        before = await flushes.read(conn)
        await conn.execute("SET synchronous_commit = on")
        await conn.execute("CREATE TABLE flushed (n integer)")
        for n in range(5):           # each commit waits for its flush (the WAL writer's own,
            await conn.execute("INSERT INTO flushed VALUES ($1)", n)   # counted apart, may lag)
        await conn.execute("SELECT pg_stat_force_next_flush()")    # reported as it goes idle
        after = await flushes.read(conn)
    finally:
        await conn.close()
    assert before is not None and after is not None      # the test servers: PostgreSQL ≥ 14
    assert (after - before).count >= 3
