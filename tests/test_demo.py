"""``pipeline demo`` as the real console script (output not a terminal: plain progress lines):
it stops at its one review gate, prints the approval command and runs it, publishes every
task, and keeps to its own data, embedded or in a shared database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Channel, Task
from app.lifecycle import TaskStatus
from tests import workerprocs
from tests.factories import make_channel, make_task

db = workerprocs.db        # fixtures
queue = workerprocs.queue

Sessions = async_sessionmaker[AsyncSession]
PIPELINE = Path(sys.executable).with_name("pipeline")


@pytest.fixture
def base() -> Iterator[Path]:
    """A short directory (unix socket paths are short) to hold the data directories."""
    path = Path(tempfile.mkdtemp(prefix="pqd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pipeline(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PIPELINE), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def split_at(lines: list[str], line: str) -> tuple[list[str], list[str]]:
    assert line in lines, "\n".join(lines)
    at = lines.index(line)
    return lines[:at], lines[at:]


def run_demo(*args: str, env: dict[str, str]) -> str:
    done = pipeline("demo", *args, env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_demo_stops_at_one_gate_on_data_of_its_own(base: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["PIPELINE_DATA_DIR"] = str(base / "data")
    demo_dir = base / "data-demo"
    out = run_demo("--tasks", "4", "--workers", "2", env=env)

    assert f"demo data: {demo_dir} (servers of its own; --reset wipes it)" in out
    assert f"  $ PIPELINE_DATA_DIR={demo_dir} pipeline stats --watch" in out.splitlines()
    assert "the other gates (assets, video, audio) are auto-approved for the demo" in out
    before, after = split_at(out.splitlines(),
                             f"  $ PIPELINE_DATA_DIR={demo_dir} pipeline approve --gate final")
    assert before[-2].endswith("published 0/4  queued 0  running 0  at final gate 4  errors 0")
    assert any(line.startswith(f"  $ PIPELINE_DATA_DIR={demo_dir} pipeline requeue ")
               for line in before)
    assert any(line.endswith("video failed (attempt 2/2; no attempts left)") for line in before)
    assert any(line.endswith("requeued by demo-operator") for line in before)
    assert after[1] == "ran it: 4 task(s) approved by demo-operator, 0 refused; on to upload"
    assert any(line.endswith("published 4/4  queued 0  running 0  at final gate 0  errors 0")
               for line in after)
    assert "4 tasks through 7 stages in" in out
    assert not (base / "data").exists()          # the operator's data directory: untouched

    # What the demo wrote, read where it said its data lives.
    there = env | {"PIPELINE_DATA_DIR": str(demo_dir)}
    listed = as_json(pipeline("list", "--json", env=there))
    assert sorted(t["status"] for t in listed) == ["published"] * 4
    events = as_json(pipeline("show", listed[0]["id"], "--json", env=there))["events"]
    passed = {e["from_status"]: e["actor"] for e in events
              if e["from_status"] in ("assets_ready", "video_ready", "audio_ready",
                                      "final_review")}
    assert passed == {"assets_ready": "auto-approve", "video_ready": "auto-approve",
                      "audio_ready": "auto-approve", "final_review": "demo-operator"}

    out = run_demo("--reset", "--tasks", "2", "--workers", "1", env=env)
    assert "published 2/2" in out
    assert len(as_json(pipeline("list", "--json", env=there))) == 2   # the first run's: gone
    assert not (base / "data").exists()


async def test_on_a_shared_database_the_demo_touches_only_its_channels(
        db: tuple[str, Sessions], redis_url: str, queue: str, base: Path) -> None:
    url, sessions = db
    async with sessions() as session, session.begin():
        other = await make_channel(session, channel_id="UCother")
        kept = [(await make_task(session, other, status)).id
                for status in (TaskStatus.published, TaskStatus.draft)]
        science = await make_channel(session, channel_id="UCdemo-science", max_concurrent=2)
        stale = (await make_task(session, science, TaskStatus.video_error)).id
    before = await _rows(sessions, kept)
    env = os.environ | {"DATABASE_URL": url, "REDIS_URL": redis_url, "QUEUE_NAME": queue,
                        "PIPELINE_DATA_DIR": str(base / "data")}
    out = run_demo("--reset", "--tasks", "3", "--workers", "1", env=env)

    assert "reset: deleted 1 demo task(s)" in out
    assert "watch it from another terminal (with the same DATABASE_URL):" in out
    assert "  $ pipeline stats --watch" in out.splitlines()
    for channel in ("UCdemo-science", "UCdemo-history", "UCdemo-nature"):
        assert f"  $ pipeline approve --gate final --channel {channel}" in out.splitlines()
    assert "published 3/3" in out
    assert await _rows(sessions, kept) == before                 # other channels: untouched
    async with sessions() as session:
        assert await session.get(Task, stale) is None
        demo = (await session.execute(
            sa.select(Task.status).join(Channel, Channel.id == Task.channel_id)
            .where(Channel.channel_id.like("UCdemo-%")))).scalars().all()
    assert demo == [TaskStatus.published] * 3
    assert not (base / "data").exists()

    # Unfinished work of another channel: the demo's workers would take it, so no demo.
    async with sessions() as session, session.begin():
        await make_task(session, other, TaskStatus.queued)
    refused = pipeline("demo", "--tasks", "1", env=env)
    assert refused.returncode == 2, refused
    assert refused.stderr.strip().splitlines() == [
        "pipeline: the database at DATABASE_URL holds 1 unfinished task(s) of other channels,"
        " which the demo's workers would take: unset DATABASE_URL to run the demo on servers"
        " of its own"]
    async with sessions() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Task)
                                    .where(Task.channel_id != other.id)) == 3


async def _rows(sessions: Sessions, ids: list[Any]) -> list[tuple[Any, ...]]:
    async with sessions() as session:
        return [tuple(row) for row in (await session.execute(
            sa.select(Task.id, Task.status, Task.updated_at).where(Task.id.in_(ids))
            .order_by(Task.id))).all()]
