"""``python -m bench --web``: the HTTP door at scale. A real ``pipeline serve`` on a scratch
database of 100k tasks answers the API's and the dashboard's reads (p50/p95 of each, target
p95 < 200 ms), and the live board's update lag is measured: from a committed status change to
the server-sent event that shows it arriving at a client (target < 1 s).

The pages measured are those of ``candidates`` that answer 200 (or a redirect, as ``/find``
does) on the running server; a route that answers an error is listed as not measured. The
data set is a pipeline's long tail: mostly published tasks with their full history (published
over the last ten hours, so the last hour's charts have some 6k tasks' stage runs to read), a
queue, tasks at every gate, errors retrying and out of attempts, drafts, and stages running
under four registered workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import httpx
from redis.asyncio import Redis

from app.commands import tables
from app.config import get_settings
from app.db import make_engine, make_sessionmaker, session_scope
from app.execution import registry
from app.lifecycle import ERROR, TaskStatus
from app.services import transitions
from bench import data
from bench.claimers import percentile

P95_TARGET_MS = 200.0
LAG_TARGET_MS = 1000.0
#: The happy path a published task's history walks (a worker claims straight into a stage).
PATH = [s.value for s in TaskStatus if s not in ERROR and s not in (TaskStatus.draft,
                                                                     TaskStatus.claimed)]
WORKERS = 4

#: The status of task ``i`` by ``m``, a scramble of ``i`` into 0-999: 60% published, 25% queued,
#: 4% at the assets gate, 1% at the video gate, 4% at the final gate, 2% out of attempts, 2%
#: retrying later, 1% drafts, 0.9% approved, 0.1% running under a worker.
MIX = """
CASE WHEN m < 600 THEN 'published' WHEN m < 850 THEN 'queued' WHEN m < 890 THEN 'assets_ready'
     WHEN m < 900 THEN 'video_ready' WHEN m < 940 THEN 'final_review'
     WHEN m < 960 THEN 'video_error' WHEN m < 980 THEN 'asset_error' WHEN m < 990 THEN 'draft'
     WHEN m < 999 THEN 'approved' ELSE 'generating_video' END
"""

_INSERT = f"""
INSERT INTO tasks (channel_id, notion_page_id, title, topic, story_direction, status, priority,
                   created_at, updated_at, published_at, attempts, failed_stage, retry_at,
                   error_log, claimed_by, claimed_at, claim_token, lease_expires_at)
SELECT ($1::uuid[])[1 + i % cardinality($1::uuid[])], md5($2 || i::text),
       'Video ' || i, 'A topic for video ' || i, repeat('Story direction. ', 12),
       s::taskstatus,
       (CASE WHEN i % 10 = 0 THEN 'high' WHEN i % 10 < 8 THEN 'normal' ELSE 'low' END)
         ::prioritylevel,
       created, CASE WHEN s = 'published' THEN done ELSE created END,
       CASE WHEN s = 'published' THEN done END,
       CASE WHEN s LIKE '%_error' THEN 3 - (m % 2) ELSE 0 END,
       CASE s WHEN 'video_error' THEN 'video' WHEN 'asset_error' THEN 'assets' END,
       CASE WHEN s = 'asset_error' THEN now() + interval '10 minutes' END,
       CASE WHEN s LIKE '%_error' THEN 'stage failed: simulated error' END,
       CASE WHEN s = 'generating_video' THEN 'worker-bench' || (i % {WORKERS}) END,
       CASE WHEN s = 'generating_video' THEN now() END,
       CASE WHEN s = 'generating_video' THEN gen_random_uuid() END,
       CASE WHEN s = 'generating_video' THEN now() + (i % 60) * interval '1 second' END
FROM generate_series($3::bigint, $4::bigint) AS i,
     LATERAL (SELECT (i * 7919) % 1000 AS m) AS mix,
     LATERAL (SELECT {MIX} AS s) AS st,
     LATERAL (SELECT now() - interval '12 hours' - ($4 - i) * interval '100 milliseconds'
                     AS created,
                     now() - ((i * 104729) % 36000) * interval '1 second' AS done) AS t
"""

#: Each task's history: the happy path up to its status (one creation event for a status off
#: it), four seconds a step, ending when the task got there.
_EVENTS = """
INSERT INTO task_events (task_id, from_status, to_status, actor, created_at)
SELECT t.id, CASE WHEN n > 1 THEN ($1::text[])[n - 1]::taskstatus END,
       ($1::text[])[n]::taskstatus, 'bench', t.updated_at - (p.last - n) * interval '4 seconds'
FROM tasks t
CROSS JOIN LATERAL (SELECT coalesce(array_position($1::text[], t.status::text), 1) AS last) p
CROSS JOIN LATERAL generate_series(1, p.last) AS n
"""


@dataclass(frozen=True)
class WebOptions:
    tasks: int = 100_000
    channels: int = data.CHANNELS
    #: Timed requests per page, after ``warmup`` untimed ones.
    requests: int = 50
    warmup: int = 3
    lag_trials: int = 20


@dataclass(frozen=True)
class Sample:
    """Rows the pages are asked about."""

    task_id: uuid.UUID          # a published task with its full history
    errored_id: uuid.UUID       # out of attempts: the requeue preview's subject
    channel: str
    gate_ids: list[uuid.UUID]   # at the final gate: the live board's changes


@dataclass
class Timing:
    label: str
    path: str
    #: What the page answers: 200, or a redirect (``/find`` sends to the task it found).
    status: int
    latencies_ms: list[float] = field(default_factory=list)
    size: int = 0


@dataclass
class WebReport:
    started: datetime
    server: str
    options: WebOptions
    events: int = 0
    timings: list[Timing] = field(default_factory=list)
    skipped: list[tuple[str, str, int]] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)


async def run(options: WebOptions, server_url: str, redis_url: str) -> WebReport:
    began, load = time.monotonic(), os.getloadavg()[0]
    conn = await data.connect(server_url)
    try:
        report = WebReport(datetime.now(UTC), await data.server_info(conn), options)
    finally:
        await conn.close()
    queue = f"bench:web:{uuid.uuid4().hex[:8]}"
    async with data.scratch_database(server_url) as url:
        sample = await _load(report, url)
        async with (_workers(redis_url, queue), _serve(url, redis_url, queue) as base,
                    httpx.AsyncClient(base_url=base, timeout=30) as client):
            await _pages(report, client, sample)
            data.progress(f"live board: {options.lag_trials} changes")
            report.lags_ms = await _lags(client, url, sample.gate_ids[:options.lag_trials])
    report.seconds = time.monotonic() - began
    report.load = (load, os.getloadavg()[0])
    return report


async def _load(report: WebReport, url: str) -> Sample:
    o = report.options
    conn = await data.connect(url)
    try:
        loader = data.Loader(conn)
        await loader.add_channels(o.channels)
        await conn.execute("SET synchronous_commit = off")
        for first in range(1, o.tasks + 1, data.CHUNK):
            last = min(first + data.CHUNK - 1, o.tasks)
            data.progress(f"loading tasks {first:,} to {last:,} of {o.tasks:,}")
            await conn.execute(_INSERT, loader.channels, loader.salt, first, last)
        data.progress("loading their histories")
        await conn.execute(_EVENTS, PATH)
        await conn.execute("RESET synchronous_commit")
        report.events = int(await conn.fetchval("SELECT count(*) FROM task_events"))
        await data.vacuum(conn)
        await data.checkpoint(conn)
        return await _sample(conn, o.lag_trials)
    finally:
        await conn.close()


async def _sample(conn: asyncpg.Connection, gates: int) -> Sample:
    one = "SELECT id FROM tasks WHERE status = $1 ORDER BY created_at DESC LIMIT 1"
    channel = await conn.fetchval("SELECT channel_id FROM channels ORDER BY channel_id LIMIT 1")
    gate_ids = [r[0] for r in await conn.fetch(
        "SELECT id FROM tasks WHERE status = 'final_review' ORDER BY created_at LIMIT $1",
        gates)]
    return Sample(await conn.fetchval(one, "published"), await conn.fetchval(one, "video_error"),
                  channel, gate_ids)


@contextlib.asynccontextmanager
async def _workers(redis_url: str, queue: str) -> AsyncIterator[None]:
    """The workers the running stages name, registered as live ones are."""
    client = Redis.from_url(redis_url)
    now = datetime.now(UTC).isoformat()
    ids = [f"worker-bench{i}" for i in range(WORKERS)]
    try:
        for worker_id in ids:
            await registry.announce(client, queue, registry.WorkerRecord(
                worker_id, socket.gethostname(), os.getpid(), now, now, 10), heartbeat_s=600)
        yield
    finally:
        for worker_id in ids:
            await registry.retire(client, queue, worker_id)
        await client.aclose()


@contextlib.asynccontextmanager
async def _serve(url: str, redis_url: str, queue: str) -> AsyncIterator[str]:
    """``pipeline serve`` on a free loopback port (no token: loopback, nothing to log in to);
    its base URL once it listens. Stopped with SIGTERM at the end."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"DATABASE_URL": url, "REDIS_URL": redis_url, "QUEUE_NAME": queue,
                        "API_TOKEN": "", "LOG_LEVEL": "INFO"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "serve", "--port", str(port), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(60):
            while not any("Uvicorn running on" in line for line in lines):
                line = (await proc.stdout.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError("pipeline serve exited:\n" + "".join(lines[-30:]))
                lines.append(line)
        drain = asyncio.create_task(_drain(proc.stdout))   # a full pipe would stall it
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        if drain is not None:
            drain.cancel()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def candidates(sample: Sample, cursor: str | None) -> list[tuple[str, str]]:
    """(label, path) of every read worth timing; those answering an error are skipped."""
    pages = [
        ("API: tasks, first page", "/api/tasks"),
        ("API: tasks, newest first", "/api/tasks?sort=newest"),
        ("API: tasks, a later page", f"/api/tasks?cursor={cursor}" if cursor else ""),
        ("API: tasks, status + channel", f"/api/tasks?status=queued&channel={sample.channel}"),
        ("API: tasks at the final gate", "/api/tasks?status=final_review"),
        ("API: tasks, title search", "/api/tasks?search=video%2012345"),
        ("API: one task, with history", f"/api/tasks/{sample.task_id}"),
        ("API: stats", "/api/stats"),
        ("API: channels", "/api/channels"),
        ("API: workers", "/api/workers"),
        ("board", "/"),
        ("review queue", "/review"),
        ("task page", f"/tasks/{sample.task_id}"),
        ("requeue preview", f"/tasks/{sample.errored_id}/requeue"),
        ("workers", "/workers"),
        ("charts", "/charts"),
        ("find", f"/find?q={str(sample.task_id)[:8]}"),
        ("metrics", "/metrics"),
    ]
    return [(label, path) for label, path in pages if path]


async def _pages(report: WebReport, client: httpx.AsyncClient, sample: Sample) -> None:
    o = report.options
    first = await client.get("/api/tasks")
    cursor = first.json().get("next") if first.status_code == 200 else None
    for label, path in candidates(sample, cursor):
        probe = await client.get(path)
        if probe.status_code >= 300 and not probe.is_redirect:
            report.skipped.append((label, path, probe.status_code))
            continue
        data.progress(f"{label}: {o.requests} requests")
        timing = Timing(label, path, probe.status_code, size=len(probe.content))
        for n in range(o.warmup + o.requests):
            began = time.perf_counter()
            answer = await client.get(path)
            elapsed_ms = (time.perf_counter() - began) * 1000
            if answer.status_code != timing.status:
                raise RuntimeError(f"{path} answered {answer.status_code}, then {timing.status}")
            if n >= o.warmup:
                timing.latencies_ms.append(elapsed_ms)
        report.timings.append(timing)


async def _lags(client: httpx.AsyncClient, url: str, gate_ids: list[uuid.UUID]) -> list[float]:
    """Approve one task at a time through the service layer; the time from the commit's start
    to the next ``board`` event reaching this client. Between changes a random pause, so the
    changes land at every point of the server's polling cycle."""
    arrivals: asyncio.Queue[float] = asyncio.Queue()
    listening = asyncio.create_task(_listen(client, arrivals))
    engine = make_engine(get_settings(), url)
    sessions = make_sessionmaker(engine)
    lags: list[float] = []
    try:
        await asyncio.wait_for(arrivals.get(), 30)          # the board as it is now
        for task_id in gate_ids:
            await asyncio.sleep(random.uniform(0.0, 0.6))
            while not arrivals.empty():
                arrivals.get_nowait()
            began = time.perf_counter()
            async with session_scope(sessions) as session:
                await transitions.approve(session, task_id, actor="bench", gate="final")
            lags.append((await asyncio.wait_for(arrivals.get(), 10) - began) * 1000)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await engine.dispose()
    return lags


async def _listen(client: httpx.AsyncClient, arrivals: asyncio.Queue[float]) -> None:
    """Each complete ``board`` event's arrival time (its last line read)."""
    async with client.stream("GET", "/events", headers={"Accept": "text/event-stream"},
                             timeout=None) as response:
        response.raise_for_status()
        event, has_data = "", False
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                has_data = True
            elif not line and has_data:
                if event == "board":
                    arrivals.put_nowait(time.perf_counter())
                event, has_data = "", False


def render(report: WebReport) -> str:
    o = report.options
    header = (f"Web benchmark, {report.started:%Y-%m-%d %H:%M} UTC, {report.seconds:.0f} s\n"
              f"{report.server}\n"
              f"machine: {os.cpu_count()} cores ({platform.machine()} {platform.system()}"
              f" {platform.release()}), shared with other work (load average"
              f" {report.load[0]:.1f} at the start, {report.load[1]:.1f} at the end)\n"
              f"{o.tasks:,} tasks over {o.channels} channels, {report.events:,} task events;"
              f" one pipeline serve process, one client, requests one at a time"
              f" ({o.warmup} untimed, then {o.requests} timed per page)")
    rows: list[list[object]] = []
    for t in report.timings:
        p95 = percentile(t.latencies_ms, 95)
        rows.append([t.label, t.path if len(t.path) < 48 else t.path[:45] + "…", t.status,
                     percentile(t.latencies_ms, 50), p95, max(t.latencies_ms, default=0.0),
                     f"{t.size / 1024:.1f}", "PASS" if p95 < P95_TARGET_MS else "FAIL"])
    pages = tables.render(["page", "path", "status", "p50 ms", "p95 ms", "max ms", "KiB",
                           f"p95 < {P95_TARGET_MS:g} ms"], rows)
    parts = [header, pages]
    if report.skipped:
        parts.append("not measured (an error answer): " + "; ".join(
            f"{label} {path} → {status}" for label, path, status in report.skipped))
    lags = report.lags_ms
    lag_p95 = percentile(lags, 95)
    parts.append(tables.render(
        ["live board", "n", "p50 ms", "p95 ms", "max ms", f"< {LAG_TARGET_MS:g} ms"],
        [["commit → board event at the client", len(lags), percentile(lags, 50), lag_p95,
          max(lags, default=0.0),
          "PASS" if lags and max(lags) < LAG_TARGET_MS else "FAIL"]]))
    return "\n\n".join(parts)


async def main(options: WebOptions) -> int:
    server_url, redis_url = await data.server_urls(get_settings())
    print(render(await run(options, server_url, redis_url)))
    return 0
