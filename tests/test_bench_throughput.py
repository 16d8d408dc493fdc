"""The throughput benchmark at a toy size: burst workers publish every task, PGQueuer (when
installed) and a tuned arq drain as many jobs, and the table renders (no timings asserted)."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]  # ships no type information

from app.db import connect_kwargs
from bench import cpu, throughput


async def test_throughput_bench_toy_run_produces_the_table(pg_server_url: str,
                                                           redis_url: str) -> None:
    options = throughput.ThroughputOptions(tasks=20, workers=(1, 2), slots=(10, 100))
    report = await throughput.run(options, pg_server_url, redis_url)
    conn = await asyncpg.connect(**connect_kwargs(pg_server_url))
    try:
        here = await cpu.postmaster(conn) is not None
    finally:
        await conn.close()

    ours = report.of("ours")
    assert [(m.slots, m.procs) for m in ours] == [(10, 1), (10, 2), (100, 1), (100, 2)]
    for m in ours:
        assert m.published == 20 and m.items == 140
        assert m.seconds is not None and m.seconds > 0
        # Every task's claim commits on its own (stage boundaries may share commits); the
        # Redis counters moved.
        assert m.counters.commits is not None and m.counters.commits >= 20
        assert m.counters.redis_commands is not None and m.counters.redis_commands > 0
        # Each stage writes its task's row and at least one event; the queueing is left out.
        assert m.counters.rows_written is not None and m.counters.rows_written >= 2 * m.items
        # CPU from /proc, in clock ticks of 10 ms: a toy run may read none for a side
        # (tests/test_bench_cpu.py checks that the readings grow).
        assert m.counters.client_cpu_s is not None and m.counters.client_cpu_s >= 0
        assert (m.counters.server_cpu_s is not None) == here
        assert m.counters.server_cpu_s is None or m.counters.server_cpu_s >= 0
    pgq = report.of("pgqueuer")
    if throughput.pgqueuer_installed():
        assert [m.procs for m in pgq] == [1, 2]
        assert all(m.seconds and m.items == 140 for m in pgq)
        assert all(m.counters.client_cpu_s is not None and m.counters.rows_written for m in pgq)
    else:
        assert [m.note for m in pgq] == [throughput.NOT_INSTALLED]
    arq = report.find("arq", 1)
    assert arq is not None and arq.seconds and arq.items == 140
    # process_time, not clock ticks: a drain of 140 jobs always reads some.
    assert arq.counters.client_cpu_s is not None and arq.counters.client_cpu_s > 0

    text = throughput.render(report)
    assert "20 tasks x 7 stages = 140 stage executions" in text
    assert "pipeline worker --burst, 100 slots" in text and "Worker, max_jobs 100" in text
    assert "ours (10 slots): stage executions/s rise from 1 to 2 processes" in text
    assert "first milestone: ours (100 slots) ≥ 0.5x PGQueuer" in text
    assert "≤ 1 commits per stage execution" in text
    assert "rows written" in text and "client CPU µs" in text and "server CPU µs" in text


async def test_throughput_bench_counts_statements_on_its_private_server(
        redis_url: str) -> None:
    """``python -m bench --throughput`` without ``DATABASE_URL``: a private server with
    pg_stat_statements loaded, so statements per unit are counted too."""
    options = throughput.ThroughputOptions(tasks=5, workers=(1,), slots=(10,), pgq_procs=(1,))
    async with throughput.private_server() as url:
        report = await throughput.run(options, url, redis_url)
    assert report.statements_loaded
    [ours] = report.of("ours")
    assert ours.published == 5
    assert ours.counters.statements is not None and ours.counters.statements >= 5
    if throughput.pgqueuer_installed():
        [pgq] = report.of("pgqueuer")
        assert pgq.counters.statements is not None and pgq.counters.statements > 0
    assert "pg_stat_statements loaded" in throughput.render(report)
