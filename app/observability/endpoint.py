"""A worker process's own Prometheus endpoint on ``METRICS_PORT`` (``pipeline sync-notion
--loop`` serves its sync counters the same way).

One endpoint per process, however many arq Workers it runs one after another (``pipeline
worker`` replaces a Worker that lost Redis; each one's start-up calls ``serve`` again). Worker
processes on one host each need a port of their own: a process that finds ``METRICS_PORT``
taken says so in one line and runs on without an endpoint, since a busy port is no reason to
stop claiming work.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import start_http_server

log = logging.getLogger("pipeline.metrics")

_lock = threading.Lock()
#: The port this process serves on, once it does (one endpoint per process).
_serving: int | None = None


def serve(port: int | None, *, host: str = "0.0.0.0") -> int | None:
    """Serve the process's metrics on ``port`` (None: off); the port served, or None."""
    global _serving
    if port is None:
        return None
    with _lock:
        if _serving is not None:
            return _serving
        try:
            start_http_server(port, addr=host)
        except OSError as exc:
            log.warning("metrics: not served on port %d (%s); give each worker process on a"
                        " host its own METRICS_PORT", port, exc.strerror or exc)
            return None
        _serving = port
    log.info("metrics: serving on port %d", port)
    return port
