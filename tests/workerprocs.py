"""Real worker processes for tests, and the database reads that watch them.

A worker is ``pipeline worker`` (or the Procfile's ``arq workers.settings.WorkerSettings``)
with an environment of its own; its output goes to a file the test waits on. ``Workers.stop``
resumes paused processes, stops every process with SIGTERM and kills what outlives the grace
period, so no test leaves a process behind.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import embedded
from app.commands import demo
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.db.models import Channel, Task, TaskEvent
from app.lifecycle import PriorityLevel, TaskStatus
from tests import dbtools

Sessions = async_sessionmaker[AsyncSession]
T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
PIPELINE_WORKER = (sys.executable, "-m", "app", "worker")
ARQ_WORKER = (sys.executable, "-m", "arq", "workers.settings.WorkerSettings")   # the Procfile's
#: Fast stages, every gate passed, short sweeps, immediate retries, a short stop.
FAST = {"AUTO_APPROVE_GATES": "all", "SIMULATED_STAGE_SECONDS": "0", "SWEEP_INTERVAL_SECONDS": "1",
        "RETRY_BACKOFF_SECONDS": "0", "WORKER_CONCURRENCY": "8", "SHUTDOWN_GRACE_SECONDS": "2"}
OWN_QUEUE = "pipeline:test"          # the queue on a test's own redis-server
_STARTED = re.compile(r"worker (worker-[0-9a-f]{12}) started")


# --- fixtures (import them into a test module to use them) ---------------------------------


@pytest.fixture
async def db(pg_server_url: str, settings: Settings) -> AsyncIterator[tuple[str, Sessions]]:
    """An empty migrated database of its own: the workers claim from every channel in it."""
    async with dbtools.scratch_database(pg_server_url, migrate=True) as url:
        engine = make_engine(settings, url)
        yield url, make_sessionmaker(engine)
        await engine.dispose()


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[str]:
    """An arq queue of the test's own on the test Redis, dropped after its workers stopped."""
    name = f"test:{uuid.uuid4().hex[:8]}"
    yield name
    await drop_queue(redis_url, name)


@pytest.fixture
def workers(db: tuple[str, Sessions], redis_url: str, queue: str,
            tmp_path: Path) -> Iterator[Workers]:
    """Worker processes on the test's database and queue; all stopped after the test."""
    procs = Workers(tmp_path, {"DATABASE_URL": db[0], "REDIS_URL": redis_url,
                               "QUEUE_NAME": queue})
    yield procs
    procs.stop()


class OwnServer:
    """A PostgreSQL or redis-server of the test's own (unix socket in a short temporary
    directory), which the test may flush, stop and restart without touching shared ones."""

    def __init__(self, kind: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"pq{kind[0]}-", dir="/tmp"))
        self._start, self._stop = ((embedded.start_postgres, embedded.stop_postgres)
                                   if kind == "postgres"
                                   else (embedded.start_redis, embedded.stop_redis))
        self.url = self.start()

    def start(self) -> str:
        return self._start(self.directory)

    def stop(self) -> None:
        self._stop(self.directory)

    def crash(self) -> None:
        """Kill every process of this PostgreSQL at once (SIGKILL), as a crash of the machine's
        server would: its shared buffers, WAL not yet written included, are lost. The postmaster
        is stopped first, so that it starts no process while they are killed."""
        pid = embedded._postmaster_pid(self.directory / "pg")
        assert pid is not None, f"no PostgreSQL runs in {self.directory}"
        postmaster = psutil.Process(pid)
        postmaster.suspend()
        server = [*postmaster.children(recursive=True), postmaster]
        for proc in server:
            proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(server, timeout=30)

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def own_redis() -> Iterator[OwnServer]:
    server = OwnServer("redis")
    yield server
    server.remove()


@pytest.fixture
def own_postgres() -> Iterator[OwnServer]:
    server = OwnServer("postgres")
    yield server
    server.remove()


@pytest.fixture
def workers_on_own_redis(db: tuple[str, Sessions], own_redis: OwnServer,
                         tmp_path: Path) -> Iterator[Workers]:
    """Worker processes on the test's database and a redis-server of its own (stopped
    before that server)."""
    procs = Workers(tmp_path, {"DATABASE_URL": db[0], "REDIS_URL": own_redis.url,
                               "QUEUE_NAME": OWN_QUEUE})
    yield procs
    procs.stop()


async def eventually(probe: Callable[[], Awaitable[T | None]], *, timeout_s: float, what: str,
                     every_s: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy and return that; fail the test,
    naming ``what``, once ``timeout_s`` has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = await probe()
        if result:
            return result
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(every_s)


class WorkerProcess:
    """One worker process and its captured output (stdout and stderr, in order)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], output: Path) -> None:
        self.output = output
        self._file: IO[bytes] = output.open("wb")
        self.proc = subprocess.Popen(list(argv), env=env, cwd=REPO, stdout=self._file,
                                     stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def lines(self, *needles: str) -> list[str]:
        """Output lines containing every needle."""
        return [line for line in self.text().splitlines() if all(n in line for n in needles)]

    def worker_ids(self) -> list[str]:
        """The runner id of every arq Worker this process started, in order."""
        return _STARTED.findall(self.text())

    async def wait_for_line(self, *needles: str, timeout_s: float = 60) -> str:
        """The first output line containing every needle, once it is there."""
        async def probe() -> str | None:
            found = self.lines(*needles)
            if not found and not self.alive:
                pytest.fail(f"worker exited ({self.proc.returncode}) before printing"
                            f" {needles}:\n{self.text()[-3000:]}")
            return found[0] if found else None

        return await eventually(probe, timeout_s=timeout_s, what=f"worker output {needles}",
                                every_s=0.05)

    async def started(self, *, timeout_s: float = 60) -> str:
        """The runner id of this process's first arq Worker, once it has started."""
        line = await self.wait_for_line("worker worker-", "started", timeout_s=timeout_s)
        match = _STARTED.search(line)
        assert match is not None
        return match.group(1)

    async def exited(self, *, timeout_s: float) -> int:
        """The exit code, once the process has exited."""
        async def probe() -> bool:
            return not self.alive

        await eventually(probe, timeout_s=timeout_s, what=f"worker {self.proc.pid} to exit",
                         every_s=0.05)
        return self.proc.returncode

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self._file.close()


class Workers:
    """The worker processes of one test, all started with ``env`` and stopped by ``stop``."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.processes: list[WorkerProcess] = []

    def start(self, argv: Sequence[str] = PIPELINE_WORKER, **env: str) -> WorkerProcess:
        output = self.directory / f"worker-{len(self.processes)}.log"
        process = WorkerProcess(argv, os.environ | FAST | self.env | env, output)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Resume paused processes (a stopped process keeps SIGTERM pending), stop them all."""
        for process in self.processes:
            if process.alive:
                process.resume()
        try:
            demo.stop_workers([process.proc for process in self.processes])
        finally:
            for process in self.processes:
                process.close()


async def drop_queue(redis_url: str, queue: str) -> None:
    """Delete a test queue and the keys of its jobs: a killed job's in-progress key would
    otherwise outlive the test by arq's whole job timeout."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        ids = [job_id.decode() for job_id in await client.zrange(queue, 0, -1)]
        keys = [prefix + job_id for job_id in ids
                for prefix in (in_progress_key_prefix, job_key_prefix, retry_key_prefix)]
        await client.delete(queue, *keys)
    finally:
        await client.aclose()


# --- the database side ----------------------------------------------------------------------


async def jobs_in_progress(redis: aioredis.Redis, queue: str) -> set[str]:
    """Ids of the queue's wake-ups that arq holds as running (their in-progress key is set)."""
    ids = [job_id.decode() for job_id in await redis.zrange(queue, 0, -1)
           if job_id.startswith(b"wake:")]
    flags = [await redis.exists(in_progress_key_prefix + job_id) for job_id in ids]
    return {job_id for job_id, flag in zip(ids, flags, strict=True) if flag}


async def seed(sessions: Sessions, limits: Sequence[int | None], per_channel: int, *,
               title: str = "Video", spaced: bool = False,
               priority: PriorityLevel | None = None) -> list[uuid.UUID]:
    """Channels with these capacity limits and ``per_channel`` queued tasks each, priorities
    cycling high, normal, low (or all ``priority``). ``spaced`` gives each task its own
    ``created_at`` (1 ms apart, in id order) so FIFO order is defined; otherwise a batch
    shares one timestamp."""
    priorities = [priority] if priority is not None else list(PriorityLevel)
    base = datetime.now(UTC) - timedelta(minutes=1)
    async with sessions() as session, session.begin():
        channels = [Channel(channel_id=f"UC{i}-{uuid.uuid4().hex[:6]}", channel_name=f"c{i}",
                            max_concurrent=limit) for i, limit in enumerate(limits)]
        session.add_all(channels)
        await session.flush()
        rows: list[dict[str, Any]] = [
            {"id": uuid.uuid4(), "channel_id": c.id, "notion_page_id": uuid.uuid4().hex,
             "title": title, "status": TaskStatus.queued,
             "priority": priorities[n % len(priorities)]}
            for c in channels for n in range(per_channel)]
        if spaced:
            for n, row in enumerate(rows):
                row["created_at"] = base + timedelta(milliseconds=n)
        await session.execute(sa.insert(Task), rows)
    return [row["id"] for row in rows]


async def count(sessions: Sessions, *statuses: TaskStatus) -> int:
    async with sessions() as session:
        found = await session.scalar(sa.select(sa.func.count()).select_from(Task)
                                     .where(Task.status.in_(statuses)))
    return int(found or 0)


async def wait_published(sessions: Sessions, total: int, *, timeout_s: float) -> None:
    """Wait until ``total`` tasks are published (the observable end state)."""
    async def probe() -> bool:
        return await count(sessions, TaskStatus.published) == total

    await eventually(probe, timeout_s=timeout_s, what=f"{total} tasks published", every_s=0.25)


async def status_of(sessions: Sessions, task_id: uuid.UUID) -> tuple[TaskStatus, str | None]:
    """A task's status and who holds its claim."""
    async with sessions() as session:
        row = (await session.execute(sa.select(Task.status, Task.claimed_by)
                                     .where(Task.id == task_id))).one()
    return row.status, row.claimed_by


async def events(sessions: Sessions, task_id: uuid.UUID | None = None) -> list[TaskEvent]:
    """Task events in the order they were written (of one task, or of all)."""
    query = sa.select(TaskEvent).order_by(TaskEvent.id)
    if task_id is not None:
        query = query.where(TaskEvent.task_id == task_id)
    async with sessions() as session:
        return list((await session.scalars(query)).all())
