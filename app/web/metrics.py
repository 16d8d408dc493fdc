"""``/metrics`` in the Prometheus text format: the queue as of the scrape, and this web
process's own counters (requests, and the live board's streams and reads).

The queue's figures (``app.observability.queue``) are read per scrape, two statements and one
Redis scan, and never cached. The request counters are the app's own (one registry per app,
filled by ``instrument``'s middleware); a route is labelled by its template (``/api/tasks/{ref}``),
so the label set stays bounded. ``/metrics`` is a read: it needs the token unless
``API_PUBLIC_READ``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import embedded
from app.db import session_scope
from app.moves import utcnow
from app.observability import queue
from app.web.auth import require_read
from app.web.state import WebState, web_state

router = APIRouter()

#: Time to the response's first byte: a page's work, and a live stream's opening, not its life.
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10)
UNMATCHED = "unmatched"
#: Methods labelled by name; any other a client sends is ``other`` (labels stay bounded).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """The web process's request counters, in a registry of the app's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("pipeline_http_requests_total", "HTTP requests answered.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("pipeline_http_request_duration_seconds",
                                 "Time from a request to its response's first byte.",
                                 ["method", "route"], buckets=HTTP_BUCKETS_S,
                                 registry=self.registry)

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        template = route_template(scope)
        method = scope.get("method", "GET") if scope.get("method") in METHODS else "other"
        self.requests.labels(method, template, str(status)).inc()
        self.latency.labels(method, template).observe(seconds)


def route_template(scope: Scope) -> str:
    """The template of the route that answered (``/api/tasks/{ref}``), prefix included:
    a route of an included router knows only its own part (``/tasks/{ref}``), so the prefix
    is the part of the path before the one the route matches."""
    route = scope.get("route")
    template: str | None = getattr(route, "path", None)
    if not template:
        return UNMATCHED
    regex = getattr(route, "path_regex", None)
    path: str = scope.get("path", "")
    if regex is None or regex.match(path):
        return template
    for cut in (n for n, char in enumerate(path) if char == "/" and n):
        if regex.match(path[cut:]):
            return path[:cut] + template
    return template


class _Measured:
    """ASGI middleware: every HTTP request counted once, when its response starts (or as a
    500 when it ends without one)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                self.metrics.record(scope, int(message["status"]), time.perf_counter() - began)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if not started:
                self.metrics.record(scope, 500, time.perf_counter() - began)


class _Watched(Protocol):
    """What the live board's poller tells of itself (``app.web.dashboard.live.Poller``)."""

    @property
    def watching(self) -> int: ...

    @property
    def polls(self) -> int: ...


class LiveBoardCollector(Collector):
    """The live board's cost in this process: open streams, and reads of the board made for
    them (one per interval however many watch)."""

    def __init__(self, poller: _Watched) -> None:
        self.poller = poller

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("pipeline_live_board_watchers",
                                "Live boards (event streams) open on this web process.",
                                value=self.poller.watching)
        yield CounterMetricFamily("pipeline_live_board_reads",
                                  "Reads of the board made for the live boards.",
                                  value=self.poller.polls)


def instrument(app: FastAPI) -> None:
    """Count the app's requests (call once, when the app is built)."""
    app.state.http_metrics = metrics = HttpMetrics()
    app.add_middleware(_Measured, metrics=metrics)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_read)])
async def scrape(request: Request,
                 state: Annotated[WebState, Depends(web_state)]) -> Response:
    """The queue now, the live workers, and this process's request counters."""
    async with session_scope(state.sessions) as session:
        snapshot = await queue.read(session, now=utcnow())
    workers = await queue.live_workers(_redis_url(state), state.settings.queue_name)
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(queue.QueueCollector(snapshot.with_workers(workers)))
    own: HttpMetrics | None = getattr(request.app.state, "http_metrics", None)
    if own is not None:
        scraped.register(own.requests)
        scraped.register(own.latency)
    dashboard = getattr(request.app.state, "dashboard", None)
    if dashboard is not None:
        scraped.register(LiveBoardCollector(dashboard.poller))
    # The format the scraper asks for: Prometheus text, or OpenMetrics.
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(scraped), headers={"Content-Type": content_type})


def _redis_url(state: WebState) -> str | None:
    """``REDIS_URL``, or the embedded Redis while it runs (None: no Redis, so no worker)."""
    if state.settings.redis_url:
        return state.settings.redis_url
    socket = embedded.default_data_dir() / "redis" / "redis.sock"
    return f"unix://{socket}" if Path(socket).exists() else None
