"""One benchmark run: the claim cells per data set, the plans, then the worker measurements."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bench import claimers, data, plans, workers
from bench.claimers import Cell


@dataclass(frozen=True)
class Dataset:
    """``queued`` tasks to claim from, behind ``finished`` published ones (history)."""

    queued: int
    finished: int = 0

    @property
    def label(self) -> str:
        tail = f" + {_short(self.finished)} published" if self.finished else ""
        return f"{_short(self.queued)} queued{tail}"


def _short(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return str(n)


@dataclass(frozen=True)
class Options:
    datasets: tuple[Dataset, ...]
    claimers: tuple[int, ...] = (1, 2, 4, 8)
    claims: int = 1000
    #: Rounds of the compared pair per cell (see ``schedule``).
    rounds: int = 3
    channels: int = data.CHANNELS
    procs: int = 1
    workers: bool = True
    pickup_tasks: int = 30
    sweep_tasks: int = 20
    sweep_s: float = 2.0
    rescue_trials: int = 5
    lease_s: float = 2.0
    rescue_sweep_s: float = 1.0
    pipeline_tasks: int = 200
    pipeline_workers: tuple[int, ...] = (1, 2, 4)
    #: Claim with quotas configured (``QUOTAS``), none of them spent.
    quotas: bool = False
    #: Starts already in each channel's bucket of ``QUOTAS``' first quota, each on its own (as
    #: a bucket kept them before revision 0016): what a large limit's record costs a claim.
    quota_backlog: int = 0


#: The quotas of ``--quotas``: one every claim here counts against (the first stage, per
#: channel), and two it does not (the ranking still reads every channel's buckets).
QUOTAS = (("assets", True, 1_000_000, 3600), ("upload", True, 6, 86_400),
          ("video", False, 30, 3600))


#: ``--quota-backlog``: that many starts, one millisecond apart up to now, in every channel's
#: bucket of one quota.
BACKLOG = """
INSERT INTO quota_usage (channel_id, quota_id, stage, starts)
SELECT c.id, q.id, q.stage, ARRAY(SELECT clock_timestamp() - interval '1 millisecond' * g
                                  FROM generate_series($2::integer, 1, -1) g)
  FROM channels c CROSS JOIN quotas q WHERE q.stage = $1 AND q.per_channel AND $2 > 0"""


@dataclass
class Report:
    server: str
    started: datetime
    cores: int | None
    machine: str
    options: Options
    cells: dict[tuple[Dataset, int, str], Cell] = field(default_factory=dict)
    plans: dict[tuple[Dataset, str], plans.Plan] = field(default_factory=dict)
    pickup_wake_ms: list[float] = field(default_factory=list)
    pickup_sweep_ms: list[float] = field(default_factory=list)
    rescues: list[workers.Rescue] = field(default_factory=list)
    pipeline: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    #: 1-minute load average at the start and at the end (other work on the machine).
    load: tuple[float, float] = (0.0, 0.0)


async def run(options: Options, server_url: str, redis_url: str) -> Report:
    began = time.monotonic()
    conn = await data.connect(server_url)
    try:
        server = await data.server_info(conn)
    finally:
        await conn.close()
    report = Report(server, datetime.now(UTC), os.cpu_count(),
                    f"{platform.machine()} {platform.system()} {platform.release()}", options)
    load_at_start = os.getloadavg()[0]
    for dataset in options.datasets:
        async with data.scratch_database(server_url) as url:
            await _claims(report, dataset, url)
    if options.workers:
        async with data.scratch_database(server_url) as url:
            await _workers(report, url, redis_url)
    report.seconds = time.monotonic() - began
    report.load = (load_at_start, os.getloadavg()[0])
    return report


async def _claims(report: Report, dataset: Dataset, url: str) -> None:
    options = report.options
    conn = await data.connect(url)
    try:
        loader = data.Loader(conn)
        await loader.add_channels(options.channels)
        if dataset.finished:
            await loader.add_tasks(dataset.finished, "published", label="loading published")
        await loader.add_tasks(dataset.queued, label="loading queued")
        if options.quotas:
            await conn.executemany("INSERT INTO quotas (stage, per_channel, max_starts, window_s)"
                                   " VALUES ($1, $2, $3, $4)", QUOTAS)
            await conn.execute(BACKLOG, QUOTAS[0][0], options.quota_backlog)
        await conn.execute(claimers.BASELINE_INDEX)
        await data.vacuum(conn)
        await data.checkpoint(conn)
        report.plans[(dataset, "ours")] = await plans.ours(url)
        report.plans[(dataset, "baseline")] = await plans.baseline(url)
        runs = schedule(options.rounds, batch=dataset == options.datasets[0])
        for n in options.claimers:
            for i, kind in enumerate(runs):
                data.progress(f"{dataset.label}, {n} claimer(s): {kind}, {options.claims} claims"
                              f" ({i + 1} of {len(runs)})")
                cell = await claimers.run_cell(url, kind, n, options.claims, procs=options.procs)
                key = (dataset, n, kind)
                report.cells[key] = cell.pooled(report.cells.get(key))
                await loader.refill()
    finally:
        await conn.close()


def schedule(rounds: int, *, batch: bool) -> list[str]:
    """The runs of one cell. Load from other work on a shared machine drifts over seconds, so
    the compared pair runs in several short rounds, alternating which goes first; their rounds
    are pooled. The service paths (for reference) run once, after the first round."""
    runs: list[str] = []
    for r in range(rounds):
        runs += claimers.PAIR if r % 2 == 0 else claimers.PAIR[::-1]
        if r == 0:
            runs += ["service", claimers.BATCH_KIND] if batch else ["service"]
    return runs


async def _workers(report: Report, url: str, redis_url: str) -> None:
    o = report.options
    async with workers.environment(url, redis_url) as env:
        data.progress(f"pickup with wake-ups: {o.pickup_tasks} tasks")
        report.pickup_wake_ms = await workers.pickup(env, o.pickup_tasks, wake=True, sweep_s=5)
        data.progress(f"pickup by the sweep alone ({o.sweep_s:g} s): {o.sweep_tasks} tasks")
        report.pickup_sweep_ms = await workers.pickup(env, o.sweep_tasks, wake=False,
                                                      sweep_s=o.sweep_s)
        data.progress(f"rescue after SIGKILL: {o.rescue_trials} trials")
        report.rescues = await workers.rescue(env, o.rescue_trials, lease_s=o.lease_s,
                                              sweep_s=o.rescue_sweep_s)
        for n in o.pipeline_workers:
            data.progress(f"pipeline: {o.pipeline_tasks} tasks, {n} worker process(es)")
            report.pipeline[n] = await workers.pipeline(env, o.pipeline_tasks, n)
