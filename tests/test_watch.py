"""``pipeline stats --watch`` in a real terminal (tmux, 80x24): one screen redrawn in place as
the queue changes, not lines scrolling by; Ctrl-C ends it."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests import workerprocs
from tests.factories import make_channel, make_task
from tests.workerprocs import eventually

db = workerprocs.db   # fixture

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


def _screen(socket: str) -> str:
    done = subprocess.run(["tmux", "-L", socket, "capture-pane", "-p", "-t", "watch"],
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
