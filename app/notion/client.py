"""The Notion adapter: an ``AsyncClient`` built from settings, a client-side request rate
limit, and notion-client's errors mapped to ours at this boundary.

notion-client retries 429s itself (honouring ``Retry-After``) and 500/503 for GETs only; what
is left when it gives up is an outage (``NotionUnavailable``), a configuration problem
(``NotionConfigError``: token, data source) or, for one page's update, ``PushRefused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httpx
from notion_client import AsyncClient
from notion_client.errors import HTTPResponseError, RequestTimeoutError

from app.config import Settings
from app.errors import NotionConfigError, NotionUnavailable, PipelineError, PushRefused
from app.schemas import normalize_page_id

#: notion-client logs through this logger (given explicitly: it adds no handler of its own).
HTTP_LOG = logging.getLogger("app.notion.http")


class RateLimiter:
    """Spaces request starts evenly: at most ``rate_per_s`` in any one-second window."""

    def __init__(self, rate_per_s: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rate_per_s
        self._clock = clock
        self._next = 0.0

    async def wait(self) -> None:
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


def data_source_id(settings: Settings) -> str:
    """``NOTION_DATA_SOURCE_ID`` as 32 lowercase hex; ``NotionConfigError`` if unset or bad."""
    if not settings.notion_token:
        raise NotionConfigError("NOTION_TOKEN is not set")
    if not settings.notion_data_source_id:
        raise NotionConfigError("NOTION_DATA_SOURCE_ID is not set")
    try:
        return normalize_page_id(settings.notion_data_source_id)
    except ValueError:
        raise NotionConfigError("NOTION_DATA_SOURCE_ID is not a Notion id "
                                "(32 hex digits, dashes allowed)") from None


class Notion:
    """The calls the sync makes on one data source: rate-limited, errors mapped."""

    def __init__(self, client: AsyncClient, source_id: str, *, rate_per_s: float) -> None:
        self.client = client
        self.data_source_id = source_id
        self.limiter = RateLimiter(rate_per_s)

    async def schema(self) -> dict[str, Any]:
        """The data source object (its property schema)."""
        return await self._call("reading the data source", self.client.data_sources.retrieve,
                                self.data_source_id)

    async def query(self, **body: Any) -> dict[str, Any]:
        """One page of ``data_sources.query`` results."""
        return await self._call("querying the data source", self.client.data_sources.query,
                                self.data_source_id, **body)

    async def update_page(self, page_id: str, properties: dict[str, Any]) -> None:
        """``pages.update``; ``PushRefused`` when Notion rejects this page's update."""
        try:
            await self._call(f"updating page {page_id}", self.client.pages.update, page_id,
                             properties=properties)
        except _PageLevel as exc:
            raise PushRefused(page_id, str(exc)) from None

    async def _call(self, what: str, method: Callable[..., Any], *args: Any,
                    **kwargs: Any) -> dict[str, Any]:
        await self.limiter.wait()
        try:
            return cast(dict[str, Any], await method(*args, **kwargs))
        except (RequestTimeoutError, HTTPResponseError, httpx.TransportError) as exc:
            raise _mapped(exc, what) from None


class _PageLevel(PipelineError):
    """Notion rejected a request about one object (400, 403, 404, 409)."""


def _mapped(exc: Exception, what: str) -> PipelineError:
    if isinstance(exc, RequestTimeoutError):
        return NotionUnavailable(f"Notion timed out {what}")
    if isinstance(exc, httpx.TransportError):
        return NotionUnavailable(f"Notion unreachable {what} ({type(exc).__name__})")
    assert isinstance(exc, HTTPResponseError)
    detail = f"{exc.status} {getattr(exc.code, 'value', exc.code)}"
    if exc.status == 401:
        return NotionConfigError(f"Notion refused NOTION_TOKEN ({detail})")
    if exc.status == 429 or exc.status >= 500:
        return NotionUnavailable(f"Notion failed {what}: {detail}")
    if what.startswith("updating page"):
        return _PageLevel(f"{detail}: {exc}")
    if exc.status in (403, 404):
        return NotionConfigError(f"data source not found or not shared with the integration "
                                 f"(NOTION_DATA_SOURCE_ID; {detail})")
    return NotionConfigError(f"Notion refused {what}: {detail}: {exc}")


def make_client(settings: Settings) -> AsyncClient:
    """An ``AsyncClient`` for ``NOTION_BASE_URL`` with ``NOTION_TIMEOUT_SECONDS``."""
    # The client sets its logger's level: keep whatever the process configured (by default
    # NOTSET, i.e. follow the parent loggers).
    options: dict[str, Any] = {"auth": settings.notion_token, "logger": HTTP_LOG,
                               "log_level": HTTP_LOG.level,
                               "timeout_ms": int(settings.notion_timeout_s * 1000)}
    if settings.notion_base_url:
        options["base_url"] = settings.notion_base_url.rstrip("/")
    return AsyncClient(**options)


@contextlib.asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Notion]:
    """The configured data source (``NotionConfigError`` naming a missing variable)."""
    source_id = data_source_id(settings)
    async with make_client(settings) as client:
        yield Notion(client, source_id, rate_per_s=settings.notion_rate_per_s)
