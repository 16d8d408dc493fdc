"""``pipeline serve`` as a real process: it listens, and it refuses the network without a token."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.webserver import Web, web
from tests.workerprocs import REPO, db, queue

__all__ = ["db", "queue", "web"]


async def test_serve_answers_on_loopback(web: Web) -> None:
    server = await web.start()
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        schema = (await client.get("/api/openapi.json")).json()
    assert schema["info"]["title"] == "pipeline"


def test_serve_refuses_the_network_without_a_token() -> None:
    env = {"PATH": "/usr/bin:/bin", "API_TOKEN": "", "DATABASE_URL":
           "postgresql+asyncpg://nobody@127.0.0.1:1/none", "HOME": "/tmp"}
    done = subprocess.run([sys.executable, "-m", "app", "serve", "--host", "0.0.0.0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("pipeline: refusing to listen on 0.0.0.0 without API_TOKEN:"
                                   " set API_TOKEN, or bind 127.0.0.1")
