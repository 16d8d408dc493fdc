"""Claim + start, concurrently: the project's claim path against a plain SKIP LOCKED claimer.

Every path moves each task ``queued → claimed`` (the claim) and ``claimed → generating_assets``
(the worker starts the first stage), and ends with the task in its first stage. Ours is exactly
a worker's call, ``Runner.next_lease``: the claimers are the claim loops of one worker process,
and the pick-ups they ask for at once go in one ``CALL pick_up`` on a connection of the worker's
hot-path pool, which decides their turns one after the other under one hold of the turnstile
(ranking the channels fairly, counting each channel's turn), commits, then claims each task and
starts its stage in one write of the row with both ``task_events`` rows. The service path is
the same moves through the service layer on ``AsyncSession`` (``claims.claim_next``, then
``transitions.transition`` with the claim token), as admin scripts call it. The baseline is two
hand-written updates on a raw asyncpg connection, each its own commit. Every claimer makes
``WARMUP`` claims before the clock starts. Claim latency is the claim call, commit included
(ours: claim and start; a loop's wait for the call it shares too). Each claimer owns one
connection (ours: a pool of one per claimer).
Claimers run as asyncio tasks in one process by default: that process stays under one core,
and on a 2-core machine extra client processes only compete with the server for CPU
(measured: slower on every path). ``procs`` spreads them over processes where cores are
plentiful.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]  # ships no type information
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import make_engine, make_pool, make_sessionmaker, session_scope
from app.db.models import Task
from app.execution.runner import Runner
from app.lifecycle import TaskStatus
from app.services import claims, transitions
from bench import cpu, data, flushes
from bench.flushes import Flushes

T = TypeVar("T")

LEASE_S = 30.0
#: ``ours``: a worker's claim; ``service``: the service layer; ``baseline``: see above.
KINDS = ("ours", "service", "baseline")
#: The compared pair, measured in every round (the others once per cell).
PAIR = ("ours", "baseline")
#: ``service-batch10``: ``claims.claim_batch`` takes 10 tasks per claim transaction, then each
#: is started as in ``service`` (measured on the first data set only).
BATCH = 10
BATCH_KIND = f"service-batch{BATCH}"

#: The baseline: the textbook claim (its own partial index, see ``BASELINE_INDEX``) …
BASELINE_CLAIM = """
UPDATE tasks SET status = 'claimed', claimed_by = $1, claimed_at = now(),
       claim_token = gen_random_uuid(), lease_expires_at = now() + interval '30 seconds'
WHERE id = (SELECT id FROM tasks WHERE status = 'queued'
            ORDER BY priority, created_at FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING id"""
#: … and its second status update, by primary key as such claimers write it.
BASELINE_START = ("UPDATE tasks SET status = 'generating_assets', attempts = attempts + 1"
                  " WHERE id = $1")
#: The project's claim index leads with channel_id (per-channel fairness), which the
#: baseline's global ORDER BY cannot use; the baseline gets the index it needs. Rows leaving
#: ``queued`` add no entry to a partial index, so it costs the project's path nothing.
BASELINE_INDEX = ("CREATE INDEX IF NOT EXISTS bench_baseline_queued ON tasks (priority, created_at)"
                  " WHERE status = 'queued'")


@dataclass
class Cell:
    """One measurement: ``claims`` claim+start cycles by ``claimers`` concurrent claimers."""

    kind: str
    claimers: int
    claims: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    #: The database server's CPU seconds over the cell (``bench.cpu``; None when the server
    #: runs on another machine, or the claimers on several processes).
    server_cpu_s: float | None = None
    #: Claims that found nothing (every channel with work locked by other claimers): retried.
    misses: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    rounds: int = 1
    #: The server's WAL flushes over the cell (``bench.flushes``; None where it does not count
    #: them, or the claimers run on several processes).
    flushes: Flushes | None = None

    @property
    def rate(self) -> float:
        return self.claims / self.seconds if self.seconds else 0.0

    def pooled(self, earlier: Cell | None) -> Cell:
        """This round and the earlier rounds of the same cell, as one measurement: claims over
        time summed, latencies together."""
        if earlier is None:
            return self
        server = (None if self.server_cpu_s is None or earlier.server_cpu_s is None
                  else self.server_cpu_s + earlier.server_cpu_s)
        flushed = (None if self.flushes is None or earlier.flushes is None
                   else self.flushes + earlier.flushes)
        return Cell(self.kind, self.claimers, earlier.claims + self.claims,
                    earlier.seconds + self.seconds, earlier.cpu_s + self.cpu_s, server,
                    earlier.misses + self.misses, earlier.latencies_ms + self.latencies_ms,
                    earlier.rounds + 1, flushed)

    def percentile(self, q: int) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def client_cpu(self) -> float:
        """Client CPU time over wall time (1.0 = one core busy)."""
        return self.cpu_s / self.seconds if self.seconds else 0.0

    @property
    def server_us_per_claim(self) -> float | None:
        """The server's CPU time per claim (and start), in microseconds."""
        if self.server_cpu_s is None or not self.claims:
            return None
        return self.server_cpu_s * 1e6 / self.claims

    @property
    def flushes_per_claim(self) -> tuple[float, float | None] | None:
        """The server's WAL flushes per claim (and start), and their milliseconds (None: not
        timed)."""
        if self.flushes is None or not self.claims:
            return None
        ms = self.flushes.ms
        return self.flushes.count / self.claims, None if ms is None else ms / self.claims


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (inclusive method); 0 for no values."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


#: A claimer: claims and starts ``quota`` tasks, appending each claim transaction's latency;
#: returns (tasks started, empty claims).
Loop = Callable[[int, list[float]], Awaitable[tuple[int, int]]]
#: Claims each claimer makes before the clock starts, on every path. A new connection's first
#: calls load the catalogs, compile functions and plan statements (10 to 70 ms, once per
#: connection); a worker's connections live long, so the steady state is what is measured.
WARMUP = 10
#: A claimer gives up after this many empty claims (a queue that ran dry).
MAX_MISSES = 10_000
#: How long the claimers' backends may take to end after their connections closed, before
#: the cell's flushes are left unread.
ENDED_S = 5.0


async def _ours(url: str, claimers: int) -> tuple[list[Loop], Callable[[], Awaitable[None]]]:
    """``Runner.next_lease``, as a worker's claim loops call it: the claimers are the loops of
    one worker process (``WORKER_CONCURRENCY`` = claimers), whose pick-ups asked for at once
    are made in one call."""
    settings = Settings(_env_file=None, database_url=url,        # lease: 30 s, LEASE_S
                        worker_concurrency=claimers)
    pool = make_pool(settings, url, max_size=claimers)
    engine = make_engine(settings, url)       # the runner's rare paths; unused here
    async with contextlib.AsyncExitStack() as held:     # open them before the clock
        for _ in range(claimers):
            await held.enter_async_context(pool.acquire())
    runner = Runner(settings, make_sessionmaker(engine), {}, pool, worker_id="bench")

    async def loop(quota: int, latencies: list[float]) -> tuple[int, int]:
        misses = 0
        while len(latencies) < quota and misses < MAX_MISSES:
            started = time.perf_counter()
            if await runner.next_lease() is None:
                misses += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
        return len(latencies), misses

    async def close() -> None:
        await pool.close()
        await engine.dispose()

    return [loop] * claimers, close


async def _service(url: str, claimers: int,
                   batch: int) -> tuple[list[Loop], Callable[[], Awaitable[None]]]:
    settings = Settings(_env_file=None, database_url=url, db_pool_size=claimers,
                        db_max_overflow=0)
    engine = make_engine(settings, url)
    sessions = make_sessionmaker(engine)
    async with asyncio.TaskGroup() as warm:   # open every connection before the clock starts
        for _ in range(claimers):
            warm.create_task(_hold_connection(sessions))

    async def claim(worker_id: str, limit: int) -> list[claims.Claim]:
        async with session_scope(sessions) as session:
            now = transitions.utcnow()
            if batch == 1:        # a worker's own call
                one = await claims.claim_next(session, worker_id=worker_id, lease_s=LEASE_S,
                                              now=now)
                return [one] if one else []
            return await claims.claim_batch(session, worker_id=worker_id, lease_s=LEASE_S,
                                            now=now, limit=limit)

    def loop_for(worker_id: str) -> Loop:
        async def loop(quota: int, latencies: list[float]) -> tuple[int, int]:
            done = misses = 0
            while done < quota and misses < MAX_MISSES:
                started = time.perf_counter()
                taken = await claim(worker_id, min(batch, quota - done))
                if not taken:
                    misses += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                for task in taken:
                    async with session_scope(sessions) as session:
                        await transitions.transition(
                            session, task.task_id, TaskStatus.generating_assets,
                            actor=worker_id, expected=task.status, claim_token=task.token,
                            values={"attempts": Task.attempts + 1})
                done += len(taken)
            return done, misses
        return loop

    return [loop_for(f"bench-{i}") for i in range(claimers)], engine.dispose


async def _hold_connection(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        await session.connection()
        await asyncio.sleep(0.05)                     # held, so each task opens its own


async def _baseline(url: str,
                    claimers: int) -> tuple[list[Loop], Callable[[], Awaitable[None]]]:
    """One raw asyncpg connection per claimer, each statement its own transaction, prepared once
    per connection (as the warm-up leaves ours' statements prepared)."""
    conns = [await data.connect(url) for _ in range(claimers)]
    prepared = [(await c.prepare(BASELINE_CLAIM), await c.prepare(BASELINE_START))
                for c in conns]

    def loop_for(statements: tuple[Any, Any], worker_id: str) -> Loop:
        claim, start = statements

        async def loop(quota: int, latencies: list[float]) -> tuple[int, int]:
            misses = 0
            while len(latencies) < quota and misses < MAX_MISSES:
                began = time.perf_counter()
                row = await claim.fetchrow(worker_id)
                if row is None:
                    misses += 1
                    continue
                latencies.append((time.perf_counter() - began) * 1000)
                await start.fetch(row[0])
            return len(latencies), misses
        return loop

    async def close() -> None:
        for conn in conns:
            await conn.close()

    return [loop_for(p, f"raw-{i}") for i, p in enumerate(prepared)], close


async def _measure(url: str, kind: str, claimers: int, claims_total: int,
                   barrier: Barrier | None = None) -> Cell:
    # Several processes measure overlapping windows: the server's time and flushes only with
    # one. The backends open before the claimers' are not theirs.
    postmaster, others = await _ask(url, _server) if barrier is None else (None, None)
    if kind == BATCH_KIND:
        loops, close = await _service(url, claimers, BATCH)
    elif kind == "service":
        loops, close = await _service(url, claimers, 1)
    elif kind == "ours":
        loops, close = await _ours(url, claimers)
    else:
        loops, close = await _baseline(url, claimers)
    cell = Cell(kind, claimers)
    quotas = [claims_total // claimers + (i < claims_total % claimers) for i in range(claimers)]
    latencies: list[list[float]] = [[] for _ in loops]
    flushed = None
    try:
        await asyncio.gather(*(loop(WARMUP, []) for loop in loops))
        if barrier is not None:                   # every process warmed up: start together
            await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
        else:      # the warm-up's own, reported by live backends within a second, may count
            flushed = await _ask(url, flushes.read)
        server = None if postmaster is None else cpu.server_s(postmaster)
        used, began = time.process_time(), time.perf_counter()
        counts = await asyncio.gather(*(loop(q, mine) for loop, q, mine in
                                        zip(loops, quotas, latencies, strict=True)))
        cell.seconds = time.perf_counter() - began
        cell.cpu_s = time.process_time() - used
        ended = None if postmaster is None else cpu.server_s(postmaster)
        if server is not None and ended is not None:
            cell.server_cpu_s = ended - server
    finally:
        await close()
    if flushed is not None and others is not None:
        final = await _ask(url, lambda conn: _flushes_once_ended(conn, others))
        cell.flushes = None if final is None else final - flushed
    cell.latencies_ms = [x for mine in latencies for x in mine]
    cell.claims, cell.misses = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return cell


async def _ask(url: str, read: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """``read`` on a short connection of its own (outside the timed part)."""
    conn = await data.connect(url)
    try:
        return await read(conn)
    finally:
        await conn.close()


async def _server(conn: asyncpg.Connection) -> tuple[int | None, set[int]]:
    """The server's postmaster when it runs on this machine (``bench.cpu``), and the clients'
    backends on the database other than this look-up's."""
    return await cpu.postmaster(conn), await _pids(conn)


async def _pids(conn: asyncpg.Connection) -> set[int]:
    """The clients' backends on the database, other than ``conn``'s (an autovacuum worker,
    which may run for long, is not waited for)."""
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
    return {int(row[0]) for row in rows}


async def _flushes_once_ended(conn: asyncpg.Connection, others: set[int]) -> Flushes | None:
    """The server's flushes once every backend opened since ``others`` was read has ended (a
    backend reports its counts as it exits; a closed connection's backend exits on its own
    time, and no event tells); None when some still run after ``ENDED_S``."""
    deadline = time.monotonic() + ENDED_S
    while await _pids(conn) - others:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.01)
    return await flushes.read(conn)


def _child(url: str, kind: str, claimers: int, claims_total: int, barrier: Barrier,
           results: multiprocessing.SimpleQueue[Cell]) -> None:
    results.put(asyncio.run(_measure(url, kind, claimers, claims_total, barrier)))


async def run_cell(url: str, kind: str, claimers: int, claims_total: int, *,
                   procs: int = 1) -> Cell:
    """Measure one cell; with ``procs`` > 1 the claimers are spread over that many processes
    (each with its share of the claims), started together after all have connected."""
    procs = max(1, min(procs, claimers))
    if procs == 1:
        return await _measure(url, kind, claimers, claims_total)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs)
    results: multiprocessing.SimpleQueue[Cell] = ctx.SimpleQueue()
    split = [claimers // procs + (i < claimers % procs) for i in range(procs)]
    workers = [ctx.Process(target=_child, args=(url, kind, n, claims_total * n // claimers,
                                                barrier, results)) for n in split]
    for proc in workers:
        proc.start()
    loop = asyncio.get_running_loop()
    parts = [await loop.run_in_executor(None, results.get) for _ in workers]
    for proc in workers:
        await loop.run_in_executor(None, proc.join)
    return Cell(kind, claimers, claims=sum(p.claims for p in parts),
                seconds=max(p.seconds for p in parts), cpu_s=sum(p.cpu_s for p in parts),
                misses=sum(p.misses for p in parts),
                latencies_ms=[x for p in parts for x in p.latencies_ms])
