"""A real ``pipeline serve`` process for API and browser tests.

``web`` (import it into a test module) serves the test's own database (the ``db`` fixture of
``tests.workerprocs``) with ``API_TOKEN`` set to ``TOKEN``; ``Web.start`` starts another server
with other settings. Every server is stopped with SIGTERM after the test.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.commands import demo
from tests.workerprocs import Sessions, WorkerProcess

TOKEN = "test-token-3f9c2a"
_LISTENING = re.compile(r"Uvicorn running on (http://\S+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Server:
    process: WorkerProcess
    base_url: str
    token: str | None

    def headers(self) -> dict[str, str]:
        """The bearer header (empty without a token)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class Web:
    """The servers of one test, on its database and Redis."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.servers: list[Server] = []

    async def start(self, *args: str, **env: str) -> Server:
        """``pipeline serve ARGS`` on a free loopback port, once it is listening."""
        settings = os.environ | {"API_TOKEN": TOKEN} | self.env | env
        if "--port" not in args:
            args = (*args, "--port", str(free_port()))
        output = self.directory / f"serve-{len(self.servers)}.log"
        process = WorkerProcess((sys.executable, "-m", "app", "serve", *args), settings, output)
        line = await process.wait_for_line("Uvicorn running on", timeout_s=60)
        match = _LISTENING.search(line)
        assert match is not None
        server = Server(process, match.group(1), settings.get("API_TOKEN") or None)
        self.servers.append(server)
        return server

    def stop(self) -> None:
        try:
            demo.stop_workers([server.process.proc for server in self.servers])
        finally:
            for server in self.servers:
                server.process.close()


@pytest.fixture
def web(db: tuple[str, Sessions], redis_url: str, queue: str, tmp_path: Path) -> Iterator[Web]:
    """Servers on the test's database and queue; all stopped after the test."""
    servers = Web(tmp_path, {"DATABASE_URL": db[0], "REDIS_URL": redis_url, "QUEUE_NAME": queue,
                             "LOG_LEVEL": "INFO"})
    yield servers
    servers.stop()
