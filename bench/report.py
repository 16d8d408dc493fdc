"""The printed result: a header, the claim table, the worker table, the targets, footnotes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.commands import tables
from bench import claimers
from bench.claimers import Cell, percentile
from bench.run import Dataset, Report

RATIO_TARGET = 0.8
P99_GROWTH_TARGET = 1.5
P99_CEILING_MS = 10.0
PICKUP_TARGET_MS = 50.0


def render(report: Report) -> str:
    parts = [_header(report), _claims_table(report)]
    if report.options.workers:
        parts.append(_workers_table(report))
    heading = f"targets (p99: ≤ {P99_GROWTH_TARGET}x the 10k value and < {P99_CEILING_MS:g} ms)"
    parts += [heading + "\n" + tables.render(["target", "measured", "result"], targets(report)),
              FOOTNOTES]
    return "\n\n".join(parts)


def _header(report: Report) -> str:
    o = report.options
    return (f"Claim benchmark, {report.started:%Y-%m-%d %H:%M} UTC, {report.seconds:.0f} s\n"
            f"{report.server}\n"
            f"machine: {report.cores} cores ({report.machine}), shared with other work (load"
            f" average {report.load[0]:.1f} at the start, {report.load[1]:.1f} at the end):"
            f" compare ratios within the run, not absolute figures\n"
            f"{o.rounds} round(s) of {o.claims} claims per cell for ours and the baseline"
            f" (alternating which goes first, pooled), 1 for the service paths;"
            f" {o.channels} channels without a capacity limit, claimers as asyncio tasks in"
            f" {o.procs} process(es)"
            + (f"; quotas configured ({o.quota_backlog:,} starts already in each channel's"
               " bucket of the first)" if o.quotas else ""))


def _cell(report: Report, dataset: Dataset, n: int, kind: str) -> Cell | None:
    return report.cells.get((dataset, n, kind))


def _claims_table(report: Report) -> str:
    headers = ["queue", "claimers", "ours/s", "baseline/s", "ours÷base", "ours p50", "ours p99",
               "base p50", "base p99", "service/s", "batch10/s", "svc÷base", "svc p99",
               "ours CPU", "base CPU", "ours srv µs", "base srv µs", "ours flush",
               "base flush", "misses",
               "index used (ours / baseline)"]
    rows: list[list[object]] = []
    for dataset in report.options.datasets:
        for i, n in enumerate(report.options.claimers):
            ours, svc, base = (_cell(report, dataset, n, k) for k in claimers.KINDS)
            if ours is None or svc is None or base is None:
                continue
            batch = _cell(report, dataset, n, claimers.BATCH_KIND)
            rows.append([dataset.label if i == 0 else "", n, round(ours.rate),
                         round(base.rate), _ratio(ours, base), ours.percentile(50),
                         ours.percentile(99), base.percentile(50), base.percentile(99),
                         round(svc.rate), round(batch.rate) if batch else None,
                         _ratio(svc, base), svc.percentile(99), f"{ours.client_cpu:.0%}",
                         f"{base.client_cpu:.0%}", _micros(ours), _micros(base),
                         _flushes(ours), _flushes(base), ours.misses + svc.misses + base.misses,
                         _indexes(report, dataset) if i == 0 else ""])
    return tables.render(headers, rows)


def _micros(cell: Cell) -> str:
    us = cell.server_us_per_claim
    return "n/a" if us is None else f"{us:.0f}"


def _flushes(cell: Cell) -> str:
    per = cell.flushes_per_claim
    if per is None:
        return "n/a"
    count, ms = per
    return f"{count:.2f}" if ms is None else f"{count:.2f} / {ms * 1000:.0f} µs"


def _ratio(a: Cell, b: Cell) -> float:
    return a.rate / b.rate if b.rate else 0.0


def _indexes(report: Report, dataset: Dataset) -> str:
    ours, base = report.plans[(dataset, "ours")], report.plans[(dataset, "baseline")]
    mark = "" if ours.uses_claim_index else " (NOT the claim index)"
    used = [i for i in ("ix_tasks_queued", "ix_tasks_runnable") if i in ours.indexes]
    base_ix = next((i for i in base.indexes if i != "pk_tasks"), "seq scan")
    return f"{' + '.join(used) or '-'}{mark} / {base_ix}"


def _workers_table(report: Report) -> str:
    o = report.options
    rows: list[list[object]] = []

    def latency(name: str, setting: str, values: Sequence[float]) -> None:
        rows.append([name, setting, len(values), percentile(values, 50),
                     percentile(values, 99), max(values, default=0.0), None])

    latency("pickup, wake-ups", "1 idle worker, sweep 5 s", report.pickup_wake_ms)
    latency("pickup, sweep alone", f"1 idle worker, sweep {o.sweep_s:g} s",
            report.pickup_sweep_ms)
    bound = f"lease {o.lease_s:g} s + sweep {o.rescue_sweep_s:g} s"
    latency("SIGKILL → reaped", bound, [r.reaped_ms for r in report.rescues])
    latency("SIGKILL → claimed again", bound, [r.rescue_ms for r in report.rescues])
    for n, rate in report.pipeline.items():
        rows.append([f"pipeline, {n} worker process(es)",
                     f"{o.pipeline_tasks} tasks, 7 stages, 0 s each", o.pipeline_tasks,
                     None, None, None, rate])
    return tables.render(["measure", "setting", "n", "p50 ms", "p99 ms", "max ms", "tasks/s"],
                         rows)


@dataclass(frozen=True)
class Check:
    """One target of a run, as a row of the targets table."""

    name: str
    measured: str
    ok: bool | None      # None: not measured in this run

    def row(self) -> list[object]:
        result = "not measured" if self.ok is None else ("PASS" if self.ok else "FAIL")
        return [self.name, self.measured, result]


def targets(report: Report) -> list[list[object]]:
    checks = [*_ratio_checks(report), *_p99_checks(report), _plan_check(report)]
    if report.options.workers:
        checks += _worker_checks(report)
    return [c.row() for c in checks]


def _ratio_checks(report: Report) -> list[Check]:
    ratios = [(_ratio(c, report.cells[(d, n, "baseline")]), d, n)
              for (d, n, k), c in report.cells.items() if k == "ours"]
    if not ratios:
        return []
    low, d, n = min(ratios, key=lambda r: r[0])
    median = sorted(r[0] for r in ratios)[len(ratios) // 2]
    return [Check(f"claim path ≥ {RATIO_TARGET}x baseline (every cell)",
                   f"lowest {low:.2f}x ({d.label}, {n} claimer(s)); median {median:.2f}x",
                   low >= RATIO_TARGET)]


def _p99_checks(report: Report) -> list[Check]:
    """p99 of the claim at 1M queued, and at 10k queued beside 1M+ published, against 10k."""
    sets = report.options.datasets
    small = next((d for d in sets if d.queued == 10_000 and not d.finished), None)
    big = [d for d in sets if d.queued >= 1_000_000 or (d.queued == 10_000 and d.finished)]
    if small is None or not big:
        return [Check("p99 at 1M ≤ 1.5x 10k and < 10 ms", "needs 10k and 1M", None)]
    checks = []
    for dataset in big:
        for n in report.options.claimers:
            p_small = report.cells[(small, n, "ours")].percentile(99)
            p_big = report.cells[(dataset, n, "ours")].percentile(99)
            ok = p_big <= P99_GROWTH_TARGET * p_small and p_big < P99_CEILING_MS
            checks.append(Check(
                f"claim p99, {dataset.label} vs 10k, {n} claimer(s)",
                f"{p_small:.2f} → {p_big:.2f} ms ({p_big / p_small:.2f}x)", ok))
    return checks


def _plan_check(report: Report) -> Check:
    used = [report.plans[(d, "ours")].uses_claim_index for d in report.options.datasets]
    return Check("claim uses ix_tasks_queued at every size (no seq scan on tasks)",
                  f"{sum(used)}/{len(used)} data sets", all(used))


def _worker_checks(report: Report) -> list[Check]:
    o = report.options
    p50 = percentile(report.pickup_wake_ms, 50)
    worst = max((r.rescue_ms for r in report.rescues), default=0.0)
    bound_ms = (o.lease_s + o.rescue_sweep_s) * 1000
    return [Check(f"pickup p50 < {PICKUP_TARGET_MS:g} ms with wake-ups", f"{p50:.1f} ms",
                   p50 < PICKUP_TARGET_MS),
            Check("rescue ≤ lease + one sweep interval",
                   f"max {worst:.0f} ms vs {bound_ms:.0f} ms", worst <= bound_ms)]


FOOTNOTES = f"""\
ours: a worker's claim loops, Runner.next_lease: the pick-ups its loops ask for at once in one
  CALL pick_up, committing two steps: pick_channel for each (strict turns: the channel ranking
  under the turnstile, the channel's pick count and turn, its task reserved; an asynchronous
  commit), then their claims (one guarded write of each row queued → claimed →
  generating_assets with a fresh claim token, two task_events rows each, a commit): together
  in claim_reserved (with --quotas: each start recorded in its buckets under their locks), or
  one by one in claim_task where a cap applies; returning the tasks' fields for their stage.
baseline: plain asyncpg, UPDATE … WHERE id = (SELECT … ORDER BY priority, created_at FOR UPDATE
  SKIP LOCKED LIMIT 1), then UPDATE … SET status = 'generating_assets'; each autocommitted; no
  events, no fairness, no capacity, no token check. It gets its own partial index
  (priority, created_at) WHERE status = 'queued' (the claim index leads with channel_id, which
  its ORDER BY cannot use); rows leaving 'queued' add no entry to a partial index, so it costs
  the other paths nothing.
service: the same moves through the service layer on AsyncSession, as admin scripts call it:
  claims.claim_next in one transaction, then transitions.transition claimed →
  generating_assets with the claim token in a second. batch10: claims.claim_batch takes 10
  tasks per claim transaction, then starts each as service does (first data set only).
Every path: two transitions per task, ending in generating_assets; claims/s = tasks
  claimed and started per second; p50/p99 = the claim call in ms, commit included (ours: the
  claim and the start); CPU = the client process's CPU time over wall time (100% = one core);
  srv µs = the database server's CPU time (all its processes, from /proc) per claim and start,
  n/a when it runs on another machine or the claimers on several processes;
  flush = the server's WAL flushes per claim and start (pg_stat_wal, or pg_stat_io from
  PostgreSQL 18), and the time they took where the server times them (track_wal_io_timing):
  a synchronous commit waits for its flush, so the disk's flush time weighs on each path by
  its commits (the baseline two, ours one), n/a with the claimers on several processes;
  misses = claims that came back empty while work remained (retried, not
  counted). Every cell starts from the same queue depth, VACUUM ANALYZEd; each claimer first
  makes {claimers.WARMUP} claims off the clock (a new connection's first calls load catalogs,
  compile and plan: 10 to 70 ms once per connection). Strict turns cost a second commit
  per claim, and a ranking of every channel's best runnable task (two index probes
  per channel) made one decision at a time: claimers many against few channels queue for the
  turnstile."""
