"""The web benchmark's machinery at a toy size: a real server answers, the live board's
changes arrive, and the table renders (no timings asserted)."""

from __future__ import annotations

from bench import web


async def test_web_bench_toy_run_produces_the_tables(pg_server_url: str, redis_url: str) -> None:
    options = web.WebOptions(tasks=1_000, requests=1, warmup=0, lag_trials=2)
    report = await web.run(options, pg_server_url, redis_url)

    measured = {t.path: t for t in report.timings}
    assert "/metrics" in measured and "/api/tasks" in measured, report.skipped
    assert all(len(t.latencies_ms) == 1 for t in report.timings)
    assert len(report.lags_ms) == 2 and all(lag > 0 for lag in report.lags_ms)
    # Every task has its history up to its status: the 60% published walk the whole path.
    assert report.events > 600 * len(web.PATH)
    text = web.render(report)
    assert "1,000 tasks over 10 channels" in text and "commit → board event" in text
