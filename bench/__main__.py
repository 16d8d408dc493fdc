"""``python -m bench``: run the benchmark and print the table (progress goes to stderr);
``--web`` runs the HTTP benchmark instead (``bench/web.py``), ``--throughput`` the pipeline's
end-to-end throughput beside PGQueuer and arq (``bench/throughput.py``).

Uses ``DATABASE_URL`` / ``REDIS_URL`` when set, else the embedded servers; all work happens in
scratch databases created and dropped by the run.
"""

from __future__ import annotations

import argparse
import asyncio

from app import servers
from app.config import get_settings
from bench import data, report, throughput, web
from bench.run import Dataset, Options, run

FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)


def _count(text: str) -> int:
    """``10k``, ``1M`` or a plain number."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _counts(text: str) -> tuple[int, ...]:
    return tuple(_count(part) for part in text.split(",") if part.strip())


def _procs(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parse(argv: list[str] | None = None) -> Options | web.WebOptions | throughput.ThroughputOptions:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="10k and 100k queued only, fewer claims and worker samples")
    parser.add_argument("--sizes", type=_counts, help="queued tasks per data set (10k,100k,1M)")
    parser.add_argument("--finished", type=_count,
                        help="published tasks beside 10k queued (default 1M; quick: none)")
    parser.add_argument("--claimers", type=_counts, default=(1, 2, 4, 8),
                        help="concurrent claimers per cell (1,2,4,8)")
    parser.add_argument("--claims", type=int,
                        help="claims per run of a cell (1000; quick: 300)")
    parser.add_argument("--rounds", type=int,
                        help="rounds of ours and the baseline per cell, pooled (3; quick: 2)")
    parser.add_argument("--channels", type=int, default=data.CHANNELS,
                        help=f"channels the queued tasks are spread over ({data.CHANNELS})")
    parser.add_argument("--procs", type=int, default=1,
                        help="spread the claimers over this many processes (1)")
    parser.add_argument("--quotas", action="store_true",
                        help="claim with quotas configured (none spent; see bench/run.py)")
    parser.add_argument("--quota-backlog", type=int, default=0, metavar="N",
                        help="with --quotas: N starts already in each channel's bucket of the"
                             " quota every claim counts against, each on its own (0)")
    parser.add_argument("--no-workers", dest="workers", action="store_false",
                        help="skip pickup, rescue and pipeline (worker processes)")
    parser.add_argument("--web", action="store_true",
                        help="instead: the HTTP API's and dashboard's reads and the live"
                             " board's update lag on a real pipeline serve (bench/web.py)")
    parser.add_argument("--web-tasks", type=_count, default=web.WebOptions.tasks,
                        help="tasks in the web benchmark's data set (100k)")
    parser.add_argument("--throughput", action="store_true",
                        help="instead: stage executions/s of the whole pipeline on real burst"
                             " workers, beside PGQueuer and a tuned arq, with statements, commits,"
                             " WAL and Redis commands per stage (bench/throughput.py)")
    parser.add_argument("--tp-tasks", type=_count, default=throughput.DEFAULT_TASKS,
                        help="throughput: tasks, 7 stage executions each (1429)")
    parser.add_argument("--tp-workers", type=_procs, default=throughput.DEFAULT_WORKERS,
                        help="throughput: worker process counts (1,2,4)")
    parser.add_argument("--tp-slots", type=_procs, default=throughput.DEFAULT_SLOTS,
                        help="throughput: stages each worker process runs at once"
                             " (WORKER_CONCURRENCY; 10,100)")
    parser.add_argument("--tp-jobs", type=_count,
                        help="throughput: no-op jobs for PGQueuer and arq (7 x tasks)")
    parser.add_argument("--tp-pgq-procs", type=_procs,
                        help="throughput: PGQueuer consumer process counts (as --tp-workers)")
    args = parser.parse_args(argv)
    if args.throughput:
        return throughput.ThroughputOptions(tasks=args.tp_tasks, workers=args.tp_workers,
                                            slots=args.tp_slots, jobs=args.tp_jobs,
                                            pgq_procs=args.tp_pgq_procs)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    finished = args.finished if args.finished is not None else (0 if args.quick else 1_000_000)
    datasets = tuple(Dataset(n) for n in sizes) + ((Dataset(10_000, finished),) if finished
                                                    else ())
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.web:
        return web.WebOptions(tasks=args.web_tasks)
    if args.quick:
        return Options(datasets, args.claimers, args.claims or 300, args.rounds or 2,
                       args.channels, args.procs, args.workers, pickup_tasks=15, sweep_tasks=8,
                       rescue_trials=2, pipeline_tasks=100, quotas=args.quotas,
                       quota_backlog=args.quota_backlog)
    return Options(datasets, args.claimers, args.claims or 1000, args.rounds or 3,
                   args.channels, args.procs, args.workers, quotas=args.quotas,
                   quota_backlog=args.quota_backlog)


async def main(options: Options | web.WebOptions | throughput.ThroughputOptions) -> int:
    if isinstance(options, web.WebOptions):
        return await web.main(options)
    if isinstance(options, throughput.ThroughputOptions):
        settings = get_settings()
        # Without DATABASE_URL: a private server with pg_stat_statements, not the embedded one.
        return await throughput.main(options, settings.database_url,
                                     servers.redis_url(settings))
    server_url, redis_url = await data.server_urls(get_settings())
    print(report.render(await run(options, server_url, redis_url)))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse())))
