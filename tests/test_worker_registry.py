"""``pipeline workers``: real worker processes register with their heartbeat, show the tasks
they hold (read from the task rows), and drop out when killed (their record expires) or
stopped (their record is removed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.execution import wakeups
from app.lifecycle import TaskStatus
from tests import workerprocs
from tests.workerprocs import Sessions, Workers, eventually, seed, status_of

db, queue, workers = workerprocs.db, workerprocs.queue, workerprocs.workers   # fixtures

PIPELINE = Path(sys.executable).with_name("pipeline")
BEAT = {"WORKER_HEARTBEAT_SECONDS": "0.3"}


def _listed(url: str, redis_url: str, queue: str) -> list[dict[str, Any]]:
    env = os.environ | {"DATABASE_URL": url, "REDIS_URL": redis_url, "QUEUE_NAME": queue}
    done = subprocess.run([str(PIPELINE), "workers", "--json"], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


async def test_live_workers_with_what_they_hold_and_the_dead_dropping_out(
        db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str) -> None:
    url, sessions = db
    slow = workers.start(SIMULATED_STAGE_SECONDS="60", WORKER_CONCURRENCY="1", **BEAT)
    idle = workers.start(**BEAT)
    slow_id, idle_id = await slow.started(), await idle.started()

    async def both() -> list[dict[str, Any]] | None:
        found = _listed(url, redis_url, queue)
        return found if {w["id"] for w in found} == {slow_id, idle_id} else None

    listed = {w["id"]: w for w in await eventually(both, timeout_s=30, what="both workers")}
    assert listed[slow_id]["pid"] == slow.proc.pid and listed[idle_id]["pid"] == idle.proc.pid
    assert listed[slow_id]["concurrency"] == 1

    [task_id] = await seed(sessions, [None], per_channel=1)
    idle.pause()                      # so the slow worker is the one that takes the task
    await wakeups.wake_url(redis_url, 1, queue_name=queue)

    async def held() -> bool:
        return (await status_of(sessions, task_id))[0] is TaskStatus.generating_assets

    await eventually(held, timeout_s=30, what="the slow worker in its stage")
    idle.resume()                     # its record may have lapsed while paused: it renews

    async def holding() -> bool:
        holds = {w["id"]: w["holds"] for w in _listed(url, redis_url, queue)}
        return holds == {slow_id: 1, idle_id: 0}

    await eventually(holding, timeout_s=10, what="the slow worker holding the task")

    slow.proc.send_signal(signal.SIGKILL)
    slow.proc.wait()

    async def only_idle() -> bool:
        return [w["id"] for w in _listed(url, redis_url, queue)] == [idle_id]

    await eventually(only_idle, timeout_s=10, what="the killed worker to drop out")

    idle.proc.send_signal(signal.SIGTERM)
    await idle.exited(timeout_s=30)
    assert _listed(url, redis_url, queue) == []          # removed on the way out


async def test_json_logs_give_one_line_per_stage_outcome(
        db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str) -> None:
    """``LOG_FORMAT=json``: every line an object; a stage's success and a failure with its
    retry each get one line naming the task, the stage and what came of it."""
    _, sessions = db
    worker = workers.start(LOG_FORMAT="json", AUTO_APPROVE_GATES="",
                           STAGE_HANDLERS="simulated", RETRY_BACKOFF_SECONDS="30")
    await worker.started()
    [task_id] = await seed(sessions, [None], per_channel=1, title="[fail:assets] Doomed")
    [fine] = await seed(sessions, [None], per_channel=1)
    await wakeups.wake_url(redis_url, 2, queue_name=queue)
    done = await worker.wait_for_line(str(fine), "assets → assets_ready")
    failed = await worker.wait_for_line(str(task_id), "assets failed, attempt 1/3, retry in 30 s")
    for line in (done, failed):
        entry = json.loads(line)
        assert entry["level"] == "INFO" and entry["logger"]
    assert all(json.loads(line) for line in worker.text().splitlines() if line.strip())
