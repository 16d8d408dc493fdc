"""``pipeline serve``: the HTTP API, dashboard and metrics on uvicorn.

Without ``API_TOKEN`` the server binds loopback only: a token-less API reachable from the
network would let anyone approve, requeue or hold work.
"""

from __future__ import annotations

import ipaddress
import logging

import uvicorn

from app.config import Settings
from app.errors import PipelineError

log = logging.getLogger("pipeline.serve")


class Unprotected(PipelineError):
    """Asked to listen beyond loopback without ``API_TOKEN``."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:          # a host name: it may resolve to anything
        return False


async def run(settings: Settings, *, host: str, port: int) -> int:
    """Serve until SIGINT/SIGTERM (uvicorn's own handlers stop it gracefully)."""
    from app.web.app import create_app  # FastAPI is imported by this command only

    if not settings.api_token and not is_loopback(host):
        raise Unprotected(f"refusing to listen on {host} without API_TOKEN: set API_TOKEN, "
                          "or bind 127.0.0.1")
    config = uvicorn.Config(create_app(settings), host=host, port=port, log_config=None,
                            access_log=False, server_header=False, lifespan="on")
    server = uvicorn.Server(config)
    await server.serve()
    return 0 if server.started else 1
