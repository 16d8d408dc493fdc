"""The live view in a real terminal (tmux, 80x24): ``pipeline stats --watch`` and ``pipeline
demo`` draw one screen redrawn in place as the queue changes, not lines scrolling by; Ctrl-C
ends the watch. Off a terminal the watch prints a plain line per change instead."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.lifecycle import TaskStatus
from tests import workerprocs
from tests.factories import make_channel, make_task
from tests.workerprocs import eventually

db = workerprocs.db   # fixtures
queue = workerprocs.queue

Sessions = async_sessionmaker[AsyncSession]
PIPELINE = Path(sys.executable).with_name("pipeline")


@pytest.fixture
def terminal() -> Iterator[str]:
    """A tmux server of the test's own (its own socket), killed afterwards."""
    tmux = shutil.which("tmux")
    assert tmux is not None, "tmux is needed (Debian: apt-get install tmux; .ci/run does)"
    socket = f"pq-{uuid.uuid4().hex[:8]}"
    yield socket
    subprocess.run([tmux, "-L", socket, "kill-server"], capture_output=True, check=False)


def _tmux(socket: str, *args: str) -> None:
    subprocess.run(["tmux", "-L", socket, *args], check=True,
                   env=os.environ | {"TERM": "xterm-256color"})


def _screen(socket: str, session: str = "watch", *, history: bool = False) -> str:
    """The pane's screen; with ``history``, also every line scrolled off it."""
    start = ["-S", "-"] if history else []
    done = subprocess.run(["tmux", "-L", socket, "capture-pane", "-p", *start, "-t", session],
                          capture_output=True, text=True, check=False)
    return done.stdout


def _waiting_at_assets(screen: str) -> int | None:
    rows = [line.split() for line in screen.splitlines() if line.startswith("assets ")]
    return int(rows[0][1]) if len(rows) == 1 else None


async def test_the_live_view_redraws_one_screen(db: tuple[str, Sessions],
                                                terminal: str, redis_url: str) -> None:
    url, sessions = db
    async with sessions() as session, session.begin():
        channel = await make_channel(session, channel_id="UCwatched")
        for _ in range(2):
            await make_task(session, channel)
    env = {"DATABASE_URL": url, "REDIS_URL": redis_url}
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()),
                        shlex.quote(str(PIPELINE)), "stats", "--watch", "--interval", "0.2"])
    _tmux(terminal, "new-session", "-d", "-s", "watch", "-x", "80", "-y", "24",
          f"env {command}; sleep 30")

    async def shows(count: int) -> str | None:
        screen = _screen(terminal)
        return screen if _waiting_at_assets(screen) == count else None

    first = await eventually(lambda: shows(2), timeout_s=30, what="the first screen")
    assert "UCwatched" in first and "errors: 0 retrying" in first
    assert "at gates: assets 0  video 0  audio 0  final 0" in first
    assert all(len(line) <= 80 for line in first.splitlines())
    async with sessions() as session, session.begin():
        for _ in range(3):
            await make_task(session, channel)
    later = await eventually(lambda: shows(5), timeout_s=30, what="the redrawn screen")
    headers = [line for line in later.splitlines() if line.startswith("stage ")]
    assert len(headers) == 1, later          # redrawn in place: one screen, not scrolled ones
    assert later.count("pipeline at") == 1

    _tmux(terminal, "send-keys", "-t", "watch", "C-c")

    async def ended() -> bool:
        return "stage " in _screen(terminal) and _waiting_at_assets(_screen(terminal)) == 5

    await eventually(ended, timeout_s=10, what="the last screen left after Ctrl-C")


async def test_off_a_terminal_the_watch_prints_a_line_per_change(
        db: tuple[str, Sessions], redis_url: str) -> None:
    url, sessions = db
    async with sessions() as session, session.begin():
        channel = await make_channel(session, channel_id="UCpiped")
        await make_task(session, channel, TaskStatus.video_ready)
    env = os.environ | {"DATABASE_URL": url, "REDIS_URL": redis_url}
    proc = await asyncio.create_subprocess_exec(
        str(PIPELINE), "stats", "--watch", "--interval", "0.1", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        async with sessions() as session, session.begin():
            await make_task(session, channel)
        second = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        proc.send_signal(signal.SIGINT)
        out, errors = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    rest = out.decode()
    assert first.endswith("  queued 0  running -  at gates video:1  published 0  "
                          "errors 0 retrying, 0 out of attempts\n"), first
    assert second.endswith("  queued 1  running -  at gates video:1  published 0  "
                           "errors 0 retrying, 0 out of attempts\n"), second
    assert proc.returncode == 130, errors.decode()
    last = rest.splitlines()                 # the last view, whole, once stopped
    assert last[1].split() == ["stage", "waiting", "running", "past", "it"], rest
    assert "UCpiped" in rest and "at gates: assets 0  video 1  audio 0  final 0" in rest


async def test_the_demo_redraws_one_screen(db: tuple[str, Sessions], redis_url: str,
                                           queue: str, terminal: str, tmp_path: Path) -> None:
    url, _ = db
    env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "QUEUE_NAME": queue,
           "PIPELINE_DATA_DIR": str(tmp_path / "data")}
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()),
                        shlex.quote(str(PIPELINE)), "demo", "--tasks", "6", "--workers", "2"])
    _tmux(terminal, "new-session", "-d", "-s", "demo", "-x", "80", "-y", "24",
          f"env {command}; sleep 30")
    views: list[str] = []

    async def shows(text: str) -> str | None:
        screen = _screen(terminal, "demo")
        if "demo: " in screen and "pipeline at" in screen:
            views.append(screen)
        return screen if text in screen else None

    await eventually(lambda: shows("demo: 0/6 published · stops at the final gate"),
                     timeout_s=30, what="the demo's first screen")
    await eventually(lambda: shows("6 tasks through 7 stages"), timeout_s=30,
                     what="the demo's summary")
    assert len(set(views)) >= 2, views                  # the view changed as tasks moved
    for view in views:
        assert "UCdemo-science" in view and "at gates: " in view, view
    # Everything the terminal received, scrolled off or not: redrawn in place, the view was
    # never pushed up into the history, so one copy of it is all there is (then the summary).
    everything = _screen(terminal, "demo", history=True)
    lines = everything.splitlines()
    assert sum(line.startswith("demo: ") for line in lines) == 1, everything
    assert everything.count("pipeline at") == 1, everything
    assert lines.count("  $ pipeline approve --gate final --channel UCdemo-nature") == 1
