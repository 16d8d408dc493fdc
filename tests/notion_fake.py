"""A local fake of Notion's HTTP API, for testing through the real ``notion-client`` package.

``FakeNotion`` keeps pages of one or more data sources in memory and serves them over real HTTP
(``http.server.ThreadingHTTPServer`` on 127.0.0.1, ephemeral port, background thread), so code
under test talks to it with ``notion_client.AsyncClient(auth=notion.token,
base_url=notion.base_url)`` exactly as it would talk to ``https://api.notion.com``::

    with FakeNotion() as notion:
        page = notion.add_page(notion.data_source_id, {"Title": title("A video"),
                                                       "Status": status("Queued")})
        async with AsyncClient(auth=notion.token, base_url=notion.base_url) as client:
            await client.data_sources.query(notion.data_source_id)

Served (API version 2025-09-03, the one notion-client 3.x sends in ``Notion-Version``):

* ``POST /v1/data_sources/{id}/query`` - filters on ``last_edited_time``/``created_time``
  (``equals``/``before``/``after``/``on_or_before``/``on_or_after``), property filters on
  status/select (``equals``/``does_not_equal``/``is_empty``/``is_not_empty``) and
  title/rich_text/url (text operators), ``and``/``or`` nested up to two levels; sorts by timestamp
  or property; Notion's pagination (``page_size`` 1..100, default 100, opaque ``next_cursor``).
* ``GET /v1/data_sources/{id}`` - the data source object with its property schema.
* ``GET /v1/pages/{id}`` and ``PATCH /v1/pages/{id}`` (``properties`` in Notion's write format,
  ``in_trash``/``archived``); ids with or without dashes.

Errors use Notion's body ``{"object": "error", "status", "code", "message", "request_id"}``.
Faults are scriptable: :meth:`FakeNotion.fail_next`, :meth:`FakeNotion.delay_next` (both can
skip the first matching requests), :meth:`FakeNotion.on_request` (run code when a request
arrives, e.g. a user's edit in the middle of a sync) and a token bucket rate limiter
(``FakeNotion(rate_limit_per_s=3.0)``). Every request is recorded (:attr:`FakeNotion.requests`)
without its ``Authorization`` header.

Time comes from :attr:`FakeNotion.clock`, a :class:`FakeClock` starting at
2026-11-22T10:00:00.000Z that advances 1 s on every write, so orderings are deterministic.
Real Notion rounds ``last_edited_time`` down to the minute; pass ``minute_resolution=True`` to
get that behaviour.

Known simplifications: only title, rich_text, select, status and url properties; writing an
unknown *select* option is a ``validation_error`` (real Notion creates the option when the
integration may edit the schema); query results without ``sorts`` come in creation order;
cursors are offsets into a fresh evaluation of the query, so pages edited between two page
requests can move across page boundaries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "DEFAULT_DATA_SOURCE_ID",
    "DEFAULT_SCHEMA",
    "DEFAULT_START",
    "DEFAULT_TOKEN",
    "NOTION_VERSION",
    "PRIORITY_OPTIONS",
    "STATUS_OPTIONS",
    "FakeClock",
    "FakeNotion",
    "FakeNotionError",
    "PropertySpec",
    "RecordedRequest",
    "iso",
    "normalize_id",
    "parse_time",
    "rich_text",
    "select",
    "status",
    "title",
    "url",
    "value_of",
]

Json = dict[str, Any]

DEFAULT_TOKEN = "ntn_fake_5c0ffee0d15ea5e0badc0de0feedface0123"
NOTION_VERSION = "2025-09-03"
DEFAULT_DATA_SOURCE_ID = "1f3c2a9e-5b7d-4c1a-9e8f-0a1b2c3d4e5f"
DEFAULT_START = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
BOT_USER_ID = "6b8f5c3e-2d1a-4f0e-9c7b-5a4d3e2f1a0b"
MAX_PAGE_SIZE = 100
MAX_TEXT_LENGTH = 2000
MAX_RICH_TEXT_ITEMS = 100

STATUS_OPTIONS: tuple[str, ...] = (
    "Draft", "Queued", "Claimed", "Generating Assets", "Assets Ready", "Assets Approved",
    "Generating Composites", "Composites Ready", "Generating Video", "Video Ready",
    "Video Approved", "Generating Audio", "Audio Ready", "Audio Approved", "Generating SFX",
    "SFX Ready", "Assembling", "Assembly Ready", "Final Review", "Approved", "Uploading",
    "Published", "Asset Error", "Video Error", "Audio Error", "Upload Error",
)
PRIORITY_OPTIONS: tuple[str, ...] = ("High", "Normal", "Low")
PROPERTY_TYPES = frozenset({"title", "rich_text", "select", "status", "url"})
_COLORS = ("default", "gray", "brown", "orange", "yellow", "green", "blue", "purple", "pink",
           "red")
_DONE_NAMES = frozenset({"Published", "Done", "Complete"})


@dataclass(frozen=True)
class PropertySpec:
    """A data source property: its type and, for select/status, its option names in order."""

    type: str
    options: tuple[str, ...] = ()


DEFAULT_SCHEMA: dict[str, PropertySpec] = {
    "Title": PropertySpec("title"),
    "Topic": PropertySpec("rich_text"),
    "Story Direction": PropertySpec("rich_text"),
    "Channel": PropertySpec("rich_text"),
    "Priority": PropertySpec("select", PRIORITY_OPTIONS),
    "Status": PropertySpec("status", STATUS_OPTIONS),
    "Error": PropertySpec("rich_text"),
    "YouTube URL": PropertySpec("url"),
}


# --------------------------------------------------------------------------------------------
# Errors, ids and time


class FakeNotionError(ValueError):
    """An API error: rendered as Notion's error body over HTTP, raised as is by the helpers."""

    def __init__(self, status: int, code: str, message: str, *,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _validation(message: str) -> FakeNotionError:
    return FakeNotionError(400, "validation_error", message)


def _not_found(kind: str, ident: str) -> FakeNotionError:
    return FakeNotionError(
        404, "object_not_found",
        f"Could not find {kind} with ID: {ident}. Make sure the relevant pages and databases "
        "are shared with your integration.")


def _shown(value: Any) -> str:
    return json.dumps(value)[:80]


_UUID_RE = re.compile(
    r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.IGNORECASE)


def normalize_id(value: str, where: str = "path.id") -> str:
    """Notion ids with or without dashes -> the dashed lower-case form; else validation_error."""
    if not isinstance(value, str) or not _UUID_RE.match(value):
        raise _validation(
            f"path failed validation: {where} should be a valid uuid, instead was "
            f"`{_shown(value)}`.")
    return str(uuid.UUID(value))


def iso(when: datetime) -> str:
    """Notion's timestamp format: ``2026-11-22T10:00:00.000Z`` (UTC, milliseconds)."""
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_time(value: str | datetime) -> datetime:
    """An ISO 8601 string (``Z`` allowed; naive means UTC) or a datetime -> aware UTC datetime."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


class FakeClock:
    """The fake's notion of "now". Starts at ``start``; :meth:`tick` advances by ``step``."""

    def __init__(self, start: datetime = DEFAULT_START,
                 step: timedelta = timedelta(seconds=1)) -> None:
        self._now = parse_time(start)
        self.step = step
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, when: datetime | str) -> None:
        with self._lock:
            self._now = parse_time(when)

    def advance(self, delta: float | timedelta) -> datetime:
        """Move forward by ``delta`` (seconds or a timedelta); returns the new now."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        with self._lock:
            self._now += step
            return self._now

    def tick(self) -> datetime:
        return self.advance(self.step)


# --------------------------------------------------------------------------------------------
# Property value builders (page read format; add_page/edit_page also accept the write format)

_PLAIN_ANNOTATIONS: Json = {"bold": False, "italic": False, "strikethrough": False,
                            "underline": False, "code": False, "color": "default"}


def _text_item(content: str, link: str | None = None,
               annotations: Mapping[str, Any] | None = None) -> Json:
    return {
        "type": "text",
        "text": {"content": content, "link": None if link is None else {"url": link}},
        "annotations": {**_PLAIN_ANNOTATIONS, **(annotations or {})},
        "plain_text": content,
        "href": link,
    }


def _text_items(text: str) -> list[Json]:
    return [_text_item(text[i:i + MAX_TEXT_LENGTH])
            for i in range(0, len(text), MAX_TEXT_LENGTH)]


def title(text: str) -> Json:
    """A title value; text longer than 2000 characters is split over several items."""
    return {"type": "title", "title": _text_items(text)}


def rich_text(text: str) -> Json:
    return {"type": "rich_text", "rich_text": _text_items(text)}


def select(name: str | None) -> Json:
    return {"type": "select", "select": None if name is None else {"name": name}}


def status(name: str | None) -> Json:
    return {"type": "status", "status": None if name is None else {"name": name}}


def url(value: str | None) -> Json:
    return {"type": "url", "url": value}


def value_of(page: Mapping[str, Any], name: str) -> str | None:
    """The plain value of a page property: text, option name or url (None when empty)."""
    prop = page["properties"][name]
    kind = prop["type"]
    payload = prop[kind]
    if kind in ("title", "rich_text"):
        return "".join(item["plain_text"] for item in payload)
    if kind in ("select", "status"):
        return None if payload is None else cast(str, payload["name"])
    return cast("str | None", payload)


# --------------------------------------------------------------------------------------------
# Store


def _short_id(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()[:4]


@dataclass
class _Property:
    name: str
    id: str
    type: str
    options: list[Json] = field(default_factory=list)

    @classmethod
    def build(cls, name: str, spec: PropertySpec | str) -> _Property:
        spec = PropertySpec(spec) if isinstance(spec, str) else spec
        if spec.type not in PROPERTY_TYPES:
            raise ValueError(f"unsupported property type {spec.type!r} for {name!r}")
        prop_id = "title" if spec.type == "title" else _short_id(f"prop:{name}")
        options = [{"id": _short_id(f"option:{name}:{option}"), "name": option,
                    "color": _COLORS[i % len(_COLORS)], "description": None}
                   for i, option in enumerate(spec.options)]
        return cls(name, prop_id, spec.type, options)

    def find_option(self, payload: Mapping[str, Any]) -> Json | None:
        for option in self.options:
            if option["name"] == payload.get("name") or option["id"] == payload.get("id"):
                return option
        return None

    def option_index(self, name: str | None) -> int:
        names = [option["name"] for option in self.options]
        return names.index(name) if name in names else len(names)

    def schema_json(self) -> Json:
        config: Json = {}
        if self.type in ("select", "status"):
            config["options"] = [dict(option) for option in self.options]
        if self.type == "status":
            config["groups"] = self._status_groups()
        return {"id": self.id, "name": self.name, "type": self.type, "description": None,
                self.type: config}

    def _status_groups(self) -> list[Json]:
        names = [option["name"] for option in self.options]
        todo = names[:1]
        done = [name for name in names[1:] if name in _DONE_NAMES]
        doing = [name for name in names if name not in todo and name not in done]
        by_name = {option["name"]: option["id"] for option in self.options}
        return [{"id": _short_id(f"group:{self.name}:{group}"), "name": group, "color": color,
                 "option_ids": [by_name[name] for name in members]}
                for group, color, members in (("To-do", "gray", todo),
                                              ("In progress", "blue", doing),
                                              ("Complete", "green", done))]

    def empty_value(self) -> Any:
        if self.type in ("title", "rich_text"):
            return []
        if self.type == "status" and self.options:
            return _option_value(self.options[0])
        return None


def _option_value(option: Mapping[str, Any]) -> Json:
    return {"id": option["id"], "name": option["name"], "color": option["color"]}


def _object_head(kind: str, object_id: str, created: datetime, edited: datetime) -> Json:
    """The leading fields every Notion object shares (type, id, timestamps, authors)."""
    return {
        "object": kind,
        "id": object_id,
        "created_time": iso(created),
        "last_edited_time": iso(edited),
        "created_by": {"object": "user", "id": BOT_USER_ID},
        "last_edited_by": {"object": "user", "id": BOT_USER_ID},
    }


@dataclass
class _DataSource:
    id: str
    database_id: str
    title: str
    created: datetime
    properties: dict[str, _Property]

    def prop(self, key: Any) -> _Property | None:
        if not isinstance(key, str):
            return None
        if key in self.properties:
            return self.properties[key]
        return next((p for p in self.properties.values() if p.id == key), None)

    def to_json(self) -> Json:
        return {
            **_object_head("data_source", self.id, self.created, self.created),
            "title": _text_items(self.title),
            "description": [],
            "icon": None,
            "cover": None,
            "properties": {name: prop.schema_json() for name, prop in self.properties.items()},
            "parent": {"type": "database_id", "database_id": self.database_id},
            "database_parent": {"type": "workspace", "workspace": True},
            "is_inline": False,
            "archived": False,
            "in_trash": False,
            "url": f"https://www.notion.so/{self.database_id.replace('-', '')}",
            "public_url": None,
        }


@dataclass
class _Page:
    id: str
    data_source_id: str
    seq: int
    created: datetime
    edited: datetime
    values: dict[str, Any]
    in_trash: bool = False


@dataclass
class RecordedRequest:
    """One request as the fake saw it (headers lower-cased, without ``authorization``)."""

    method: str
    path: str
    query: dict[str, list[str]]
    json: Any
    headers: dict[str, str]
    time: float
    body: str
    authorized: bool = False
    status: int | None = None


@dataclass
class _Fault:
    remaining: int
    path_contains: str | None
    method: str | None
    status: int = 500
    code: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    skip: int = 0

    def matches(self, method: str, path: str) -> bool:
        return ((self.path_contains is None or self.path_contains in path)
                and (self.method is None or self.method.upper() == method))


@dataclass
class _Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]]


class _TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0.0 if a token was taken, else the seconds until one will be available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


_ERROR_CODES = {400: "validation_error", 401: "unauthorized", 403: "restricted_resource",
                404: "object_not_found", 409: "conflict_error", 429: "rate_limited",
                500: "internal_server_error", 503: "service_unavailable",
                504: "gateway_timeout"}
_ERROR_MESSAGES = {
    "rate_limited": "You have been rate limited. Please try again in a few minutes.",
    "internal_server_error": "Unexpected error occurred.",
    "service_unavailable": "Notion is unavailable, please try again later.",
    "gateway_timeout": "Notion timed out while processing the request.",
    "conflict_error": "Conflict occurred while saving. Please try again.",
}
_BAD_GATEWAY_HTML = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                     b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n")

_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(r"^/v1/data_sources/([^/]+)$"), "_get_data_source"),
    ("POST", re.compile(r"^/v1/data_sources/([^/]+)/query$"), "_query_data_source"),
    ("GET", re.compile(r"^/v1/pages/([^/]+)$"), "_get_page"),
    ("PATCH", re.compile(r"^/v1/pages/([^/]+)$"), "_patch_page"),
)


def _retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up: Notion sends integers and the client parses only those."""
    return str(max(0, math.ceil(seconds)))


class FakeNotion:
    """Notion's API for one or more data sources, served over HTTP on 127.0.0.1.

    Use as a context manager (or :meth:`start`/:meth:`close`). All store methods are
    thread-safe; the HTTP handlers run in server threads under the same lock.
    """

    def __init__(self, *, token: str = DEFAULT_TOKEN, rate_limit_per_s: float | None = None,
                 rate_limit_burst: float | None = None, clock: FakeClock | None = None,
                 minute_resolution: bool = False, default_data_source: bool = True) -> None:
        self.token = token
        self.clock = clock or FakeClock()
        self.minute_resolution = minute_resolution
        self._lock = threading.RLock()
        self._sources: dict[str, _DataSource] = {}
        self._pages: dict[str, _Page] = {}
        self._cursors: dict[str, tuple[str, int]] = {}
        self._requests: list[RecordedRequest] = []
        self._failures: list[_Fault] = []
        self._delays: list[_Fault] = []
        self._hooks: list[tuple[_Fault, Callable[[], object]]] = []
        self._server_errors: list[str] = []
        self._seq = 0
        self._bucket = (None if rate_limit_per_s is None else
                        _TokenBucket(rate_limit_per_s, rate_limit_burst or rate_limit_per_s))
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._default_source = (self.add_data_source(DEFAULT_DATA_SOURCE_ID)
                                if default_data_source else None)

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FakeNotion is already running")
        self._stopping.clear()
        server = _Server(self)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"fake-notion:{server.server_address[1]}", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        return self

    def close(self) -> None:
        """Stop serving: cut injected delays short, close keep-alive connections, join."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeNotion is not running (use it as a context manager)")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def data_source_id(self) -> str:
        """The id of the data source created with :data:`DEFAULT_SCHEMA`."""
        if self._default_source is None:
            raise RuntimeError("created with default_data_source=False")
        return self._default_source

    # ---- store -----------------------------------------------------------------------------

    def add_data_source(self, data_source_id: str | None = None,
                        schema: Mapping[str, PropertySpec | str] | None = None, *,
                        title: str = "Video Tasks") -> str:
        """Add a data source (``schema``: name -> type or PropertySpec); returns its id."""
        schema = DEFAULT_SCHEMA if schema is None else schema
        props = {name: _Property.build(name, spec) for name, spec in schema.items()}
        if sum(prop.type == "title" for prop in props.values()) != 1:
            raise ValueError("a data source needs exactly one title property")
        ds_id = normalize_id(data_source_id or str(uuid.uuid4()))
        with self._lock:
            self._sources[ds_id] = _DataSource(ds_id, str(uuid.uuid4()), title,
                                               self._stamp(self.clock.now()), props)
        return ds_id

    def add_page(self, data_source_id: str, properties: Mapping[str, Any], *,
                 last_edited_time: datetime | str | None = None,
                 created_time: datetime | str | None = None,
                 page_id: str | None = None) -> Json:
        """Add a page; ``properties`` from :func:`title`, :func:`status`, ... (or write format).

        Without ``last_edited_time`` the clock ticks and stamps the page. Missing properties
        are empty (status: its first option, as Notion's default). Returns the page object.
        """
        with self._lock:
            ds = self._source(data_source_id)
            values = {name: prop.empty_value() for name, prop in ds.properties.items()}
            values.update(self._normalize_values(ds, properties))
            edited = (self._stamp(self.clock.tick()) if last_edited_time is None
                      else self._stamp(parse_time(last_edited_time)))
            created = edited if created_time is None else self._stamp(parse_time(created_time))
            new_id = normalize_id(page_id or str(uuid.uuid4()))
            if new_id in self._pages:
                raise ValueError(f"page {new_id} already exists")
            self._seq += 1
            page = _Page(new_id, ds.id, self._seq, created, edited, values)
            self._pages[page.id] = page
            return self._render_page(page)

    def edit_page(self, page_id: str, properties: Mapping[str, Any]) -> Json:
        """Change properties as a Notion user would; the clock ticks and stamps the page."""
        with self._lock:
            page = self._page(page_id)
            page.values.update(self._normalize_values(self._sources[page.data_source_id],
                                                      properties))
            page.edited = self._stamp(self.clock.tick())
            return self._render_page(page)

    def trash_page(self, page_id: str, in_trash: bool = True) -> Json:
        """Move a page to the trash (queries skip it; PATCHing it is a validation_error)."""
        with self._lock:
            page = self._page(page_id)
            page.in_trash = in_trash
            page.edited = self._stamp(self.clock.tick())
            return self._render_page(page)

    def data_source(self, data_source_id: str) -> Json:
        """The data source object, as ``GET /v1/data_sources/{id}`` serves it."""
        with self._lock:
            return self._source(data_source_id).to_json()

    def get_page(self, page_id: str) -> Json:
        with self._lock:
            return self._render_page(self._page(page_id))

    def pages(self, data_source_id: str | None = None) -> list[Json]:
        """All pages (including trashed ones) in creation order."""
        with self._lock:
            wanted = None if data_source_id is None else normalize_id(data_source_id)
            return [self._render_page(page) for page in self._pages.values()
                    if wanted is None or page.data_source_id == wanted]

    # ---- faults and recordings ---------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, *, retry_after: float | None = None,
                  path_contains: str | None = None, method: str | None = None,
                  code: str | None = None, skip: int = 0) -> None:
        """Answer the next ``n`` matching requests with an error ``status``.

        Codes follow Notion (429 rate_limited, 500 internal_server_error, 503
        service_unavailable, 504 gateway_timeout, 409 conflict_error, ...; ``code`` overrides).
        502 answers with a gateway's HTML page, as a proxy in front of Notion would. 429 always
        carries ``Retry-After`` (default 1 s); ``retry_after`` adds it to other statuses too.
        Faults apply before authentication and routing. ``skip`` lets that many matching
        requests through first (e.g. fail the second page of a query).
        """
        if status == 429 and retry_after is None:
            retry_after = 1.0
        with self._lock:
            self._failures.append(_Fault(n, path_contains, method, status, code, retry_after,
                                         skip=skip))

    def delay_next(self, n: int, seconds: float, *, path_contains: str | None = None,
                   method: str | None = None, skip: int = 0) -> None:
        """Hold the next ``n`` matching requests ``seconds`` before answering them."""
        with self._lock:
            self._delays.append(_Fault(n, path_contains, method, delay=seconds, skip=skip))

    def on_request(self, callback: Callable[[], object], *, path_contains: str | None = None,
                   method: str | None = None, skip: int = 0) -> None:
        """Call ``callback`` once, when a matching request arrives, before it is answered.

        ``skip`` lets that many matching requests through first; the callback runs in the
        server thread (it may use the store methods, e.g. to edit a page mid-sync).
        """
        with self._lock:
            self._hooks.append((_Fault(1, path_contains, method, skip=skip), callback))

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path_contains: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests
                if path_contains in r.path and (method is None or r.method == method.upper())]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def server_errors(self) -> list[str]:
        """Unexpected exceptions inside the fake (answered as 500s); should stay empty."""
        with self._lock:
            return list(self._server_errors)

    # ---- HTTP --------------------------------------------------------------------------------

    def _respond(self, method: str, raw_path: str, headers: dict[str, str],
                 body: bytes) -> _Response | None:
        """Answer one request; None means "drop the connection" (shutting down)."""
        parts = urlsplit(raw_path)
        record = self._record(method, parts.path, parse_qs(parts.query), headers, body)
        for callback in self._due_hooks(method, parts.path):
            callback()
        with self._lock:
            delay = self._take(self._delays, method, parts.path)
            failure = self._take(self._failures, method, parts.path)
        if delay is not None and self._stopping.wait(delay.delay):
            return None
        try:
            if failure is not None:
                response = self._failure_response(failure)
            else:
                response = self._process(method, parts.path, record, headers, body)
        except FakeNotionError as exc:
            response = self._error_response(exc)
        except Exception as exc:
            with self._lock:
                self._server_errors.append(f"{method} {raw_path}: {exc!r}")
            response = self._error_response(
                FakeNotionError(500, "internal_server_error", f"fake bug: {exc!r}"))
        record.status = response.status
        return response

    def _record(self, method: str, path: str, query: dict[str, list[str]],
                headers: dict[str, str], body: bytes) -> RecordedRequest:
        text = body.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        record = RecordedRequest(method, path, query, parsed,
                                 {k: v for k, v in headers.items() if k != "authorization"},
                                 time.monotonic(), text)
        with self._lock:
            self._requests.append(record)
        return record

    def _due_hooks(self, method: str, path: str) -> list[Callable[[], object]]:
        with self._lock:
            due = [(hook, cb) for hook, cb in self._hooks
                   if self._take([hook], method, path) is not None]
            for entry in due:
                self._hooks.remove(entry)
            return [cb for _, cb in due]

    @staticmethod
    def _take(faults: list[_Fault], method: str, path: str) -> _Fault | None:
        for fault in faults:
            if fault.matches(method, path):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    faults.remove(fault)
                return fault
        return None

    def _process(self, method: str, path: str, record: RecordedRequest,
                 headers: dict[str, str], body: bytes) -> _Response:
        if headers.get("authorization") != f"Bearer {self.token}":
            raise FakeNotionError(401, "unauthorized", "API token is invalid.")
        record.authorized = True
        if not headers.get("notion-version"):
            raise FakeNotionError(
                400, "missing_version", "Notion-Version header failed validation: "
                "Notion-Version header should be defined, instead was `undefined`.")
        self._check_rate()
        endpoint, ident = self._route(method, path)
        payload = _parse_body(body)
        with self._lock:
            result = endpoint(ident, payload, record.query)
        return _json_response(200, result)

    def _check_rate(self) -> None:
        if self._bucket is None:
            return
        with self._lock:
            wait = self._bucket.take()
        if wait > 0:
            raise FakeNotionError(429, "rate_limited", _ERROR_MESSAGES["rate_limited"],
                                  retry_after=max(1.0, wait))

    def _route(self, method: str, path: str) -> tuple[Callable[..., Json], str]:
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(path)
            if match and route_method == method:
                return getattr(self, name), match.group(1)
        raise FakeNotionError(400, "invalid_request_url", "Invalid request URL.")

    def _failure_response(self, fault: _Fault) -> _Response:
        headers = ([] if fault.retry_after is None
                   else [("Retry-After", _retry_after_header(fault.retry_after))])
        if fault.status == 502 and fault.code is None:
            return _Response(502, _BAD_GATEWAY_HTML,
                             [("Content-Type", "text/html"), *headers])
        code = fault.code or _ERROR_CODES.get(fault.status, "internal_server_error")
        message = _ERROR_MESSAGES.get(code, f"Injected failure ({fault.status}).")
        exc = FakeNotionError(fault.status, code, message, retry_after=fault.retry_after)
        return self._error_response(exc)

    @staticmethod
    def _error_response(exc: FakeNotionError) -> _Response:
        body = {"object": "error", "status": exc.status, "code": exc.code,
                "message": exc.message, "request_id": str(uuid.uuid4())}
        response = _json_response(exc.status, body)
        if exc.retry_after is not None:
            response.headers.append(("Retry-After", _retry_after_header(exc.retry_after)))
        return response

    # ---- endpoints (called with the lock held) -----------------------------------------------

    def _get_data_source(self, ident: str, body: Json, query: dict[str, list[str]]) -> Json:
        return self._source(ident, "path.data_source_id").to_json()

    def _query_data_source(self, ident: str, body: Json, query: dict[str, list[str]]) -> Json:
        ds = self._source(ident, "path.data_source_id")
        size = _page_size(body)
        start = self._cursor_offset(ds, body.get("start_cursor"))
        matches = _compile_filter(ds, body["filter"]) if "filter" in body else None
        pages = [page for page in self._pages.values()
                 if page.data_source_id == ds.id and not page.in_trash
                 and (matches is None or matches(page))]
        pages = _sort_pages(ds, pages, body.get("sorts"))
        end = start + size
        next_cursor = None
        if end < len(pages):
            next_cursor = str(uuid.uuid4())
            self._cursors[next_cursor] = (ds.id, end)
        wanted = query.get("filter_properties")
        return {"object": "list",
                "results": [self._render_page(page, wanted) for page in pages[start:end]],
                "next_cursor": next_cursor, "has_more": next_cursor is not None,
                "type": "page_or_data_source", "page_or_data_source": {},
                "request_id": str(uuid.uuid4())}

    def _get_page(self, ident: str, body: Json, query: dict[str, list[str]]) -> Json:
        page = self._page(ident, "path.page_id")
        return self._render_page(page, query.get("filter_properties"))

    def _patch_page(self, ident: str, body: Json, query: dict[str, list[str]]) -> Json:
        page = self._page(ident, "path.page_id")
        trash = _trash_flag(body)
        if page.in_trash and trash is not False:
            raise _validation("Can't edit block that is archived. You must unarchive the block "
                              "before editing.")
        values = self._normalize_values(self._sources[page.data_source_id],
                                        body.get("properties", {}))
        page.values.update(values)
        if trash is not None:
            page.in_trash = trash
        page.edited = self._stamp(self.clock.tick())
        return self._render_page(page)

    # ---- helpers -----------------------------------------------------------------------------

    def _stamp(self, when: datetime) -> datetime:
        """Stored precision: milliseconds, or whole minutes with ``minute_resolution``."""
        when = when.replace(microsecond=when.microsecond // 1000 * 1000)
        return when.replace(second=0, microsecond=0) if self.minute_resolution else when

    def _source(self, ident: str, where: str = "data_source_id") -> _DataSource:
        ds_id = normalize_id(ident, where)
        if ds_id not in self._sources:
            raise _not_found("data_source", ds_id)
        return self._sources[ds_id]

    def _page(self, ident: str, where: str = "page_id") -> _Page:
        page_id = normalize_id(ident, where)
        if page_id not in self._pages:
            raise _not_found("page", page_id)
        return self._pages[page_id]

    def _cursor_offset(self, ds: _DataSource, cursor: Any) -> int:
        if cursor is None:
            return 0
        found = self._cursors.get(cursor) if isinstance(cursor, str) else None
        if found is None or found[0] != ds.id:
            raise _validation(f"The start_cursor provided is invalid: {_shown(cursor)}")
        return found[1]

    def _normalize_values(self, ds: _DataSource, values: Any) -> dict[str, Any]:
        if not isinstance(values, Mapping):
            raise _validation(f"body failed validation: body.properties should be an object, "
                              f"instead was `{_shown(values)}`.")
        out: dict[str, Any] = {}
        for key, value in values.items():
            prop = ds.prop(key)
            if prop is None:
                raise _validation(f"{key} is not a property that exists.")
            if not isinstance(value, Mapping) or prop.type not in value:
                raise _validation(f"{prop.name} is expected to be {prop.type}.")
            out[prop.name] = _WRITERS[prop.type](prop, value[prop.type])
        return out

    def _render_page(self, page: _Page, wanted: Sequence[str] | None = None) -> Json:
        ds = self._sources[page.data_source_id]
        props = {name: {"id": prop.id, "type": prop.type, prop.type: _copy(page.values[name])}
                 for name, prop in ds.properties.items()
                 if wanted is None or name in wanted or prop.id in wanted}
        title_prop = next(p for p in ds.properties.values() if p.type == "title")
        slug = re.sub(r"[^A-Za-z0-9]+", "-",
                      "".join(i["plain_text"] for i in page.values[title_prop.name])).strip("-")
        return {
            **_object_head("page", page.id, page.created, page.edited),
            "cover": None,
            "icon": None,
            "parent": {"type": "data_source_id", "data_source_id": ds.id,
                       "database_id": ds.database_id},
            "archived": page.in_trash,
            "in_trash": page.in_trash,
            "is_locked": False,
            "properties": props,
            "url": f"https://www.notion.so/{slug + '-' if slug else ''}{page.id.replace('-', '')}",
            "public_url": None,
        }


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _json_response(status_code: int, body: Any) -> _Response:
    return _Response(status_code, json.dumps(body).encode(),
                     [("Content-Type", "application/json; charset=utf-8")])


def _parse_body(body: bytes) -> Json:
    if not body.strip():
        return {}
    try:
        payload = json.loads(body)
    except ValueError:
        raise FakeNotionError(400, "invalid_json", "Error parsing JSON body.") from None
    if not isinstance(payload, dict):
        raise _validation(f"body failed validation: body should be an object, instead was "
                          f"`{_shown(payload)}`.")
    return payload


def _page_size(body: Json) -> int:
    size = body.get("page_size", MAX_PAGE_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PAGE_SIZE:
        raise _validation(f"body failed validation: body.page_size should be a number between 1 "
                          f"and {MAX_PAGE_SIZE}, instead was `{_shown(size)}`.")
    return size


def _trash_flag(body: Json) -> bool | None:
    flag = body.get("in_trash", body.get("archived"))
    if flag is not None and not isinstance(flag, bool):
        raise _validation(f"body failed validation: body.in_trash should be a boolean, instead "
                          f"was `{_shown(flag)}`.")
    return flag


# --------------------------------------------------------------------------------------------
# Writes (Notion's write format -> stored read format)


def _write_text(prop: _Property, payload: Any) -> list[Json]:
    where = f"body.properties.{prop.name}.{prop.type}"
    if not isinstance(payload, list):
        raise _validation(f"body failed validation: {where} should be an array, instead was "
                          f"`{_shown(payload)}`.")
    if len(payload) > MAX_RICH_TEXT_ITEMS:
        raise _validation(f"body failed validation: {where}.length should be ≤ "
                          f"`{MAX_RICH_TEXT_ITEMS}`, instead was `{len(payload)}`.")
    return [_write_text_item(item, f"{where}[{i}]") for i, item in enumerate(payload)]


def _write_text_item(item: Any, where: str) -> Json:
    text = item.get("text") if isinstance(item, Mapping) else None
    content = text.get("content") if isinstance(text, Mapping) else None
    if not isinstance(content, str) or item.get("type", "text") != "text":
        raise _validation(f"body failed validation: {where}.text.content should be a string "
                          "(the fake supports text items only).")
    if len(content) > MAX_TEXT_LENGTH:
        raise _validation(f"body failed validation: {where}.text.content.length should be ≤ "
                          f"`{MAX_TEXT_LENGTH}`, instead was `{len(content)}`.")
    link = cast(Mapping[str, Any], text).get("link")
    annotations = item.get("annotations")
    return _text_item(content, link.get("url") if isinstance(link, Mapping) else None,
                      annotations if isinstance(annotations, Mapping) else None)


def _write_option(prop: _Property, payload: Any) -> Json | None:
    if payload is None:
        return None
    option = prop.find_option(payload) if isinstance(payload, Mapping) else None
    if option is None:
        name = payload.get("name", payload.get("id")) if isinstance(payload, Mapping) else payload
        kind = prop.type.capitalize()
        raise _validation(f'Invalid {prop.type} option. {kind} option "{name}" does not exist '
                          f'in property "{prop.name}".')
    return _option_value(option)


def _write_url(prop: _Property, payload: Any) -> str | None:
    if payload is not None and not isinstance(payload, str):
        raise _validation(f"body failed validation: body.properties.{prop.name}.url should be a "
                          f"string or `null`, instead was `{_shown(payload)}`.")
    if payload is not None and len(payload) > MAX_TEXT_LENGTH:
        raise _validation(f"body failed validation: body.properties.{prop.name}.url.length "
                          f"should be ≤ `{MAX_TEXT_LENGTH}`, instead was `{len(payload)}`.")
    return payload


_WRITERS: dict[str, Callable[[_Property, Any], Any]] = {
    "title": _write_text, "rich_text": _write_text, "select": _write_option,
    "status": _write_option, "url": _write_url,
}


# --------------------------------------------------------------------------------------------
# Query: filters and sorts

_Predicate = Callable[[_Page], bool]
_FILTER_KEYS = {"title": ("title", "rich_text"), "rich_text": ("rich_text",),
                "url": ("url", "rich_text"), "select": ("select",), "status": ("status",)}
_DATE_TESTS: dict[str, Callable[[datetime, datetime, datetime], bool]] = {
    "equals": lambda t, lo, hi: lo <= t < hi,
    "before": lambda t, lo, hi: t < lo,
    "after": lambda t, lo, hi: t >= hi,
    "on_or_before": lambda t, lo, hi: t < hi,
    "on_or_after": lambda t, lo, hi: t >= lo,
}
_OPTION_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": lambda v, x: v == x,
    "does_not_equal": lambda v, x: v != x,
    "is_empty": lambda v, x: v is None,
    "is_not_empty": lambda v, x: v is not None,
}
_TEXT_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": lambda v, x: v == x,
    "does_not_equal": lambda v, x: v != x,
    "contains": lambda v, x: x.lower() in v.lower(),
    "does_not_contain": lambda v, x: x.lower() not in v.lower(),
    "starts_with": lambda v, x: v.startswith(x),
    "ends_with": lambda v, x: v.endswith(x),
    "is_empty": lambda v, x: v == "",
    "is_not_empty": lambda v, x: v != "",
}
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _compile_filter(ds: _DataSource, spec: Any, depth: int = 0) -> _Predicate:
    if not isinstance(spec, Mapping):
        raise _validation(f"body failed validation: body.filter should be an object, instead "
                          f"was `{_shown(spec)}`.")
    for key in ("and", "or"):
        if key in spec:
            return _compound_filter(ds, key, spec[key], depth)
    if "timestamp" in spec:
        return _timestamp_filter(spec)
    if "property" in spec:
        return _property_filter(ds, spec)
    raise _validation(f"body failed validation: body.filter is not a supported filter: "
                      f"`{_shown(spec)}`.")


def _compound_filter(ds: _DataSource, key: str, items: Any, depth: int) -> _Predicate:
    if depth >= 2:
        raise _validation("body failed validation: body.filter can be nested at most two "
                          "levels deep.")
    if not isinstance(items, list):
        raise _validation(f"body failed validation: body.filter.{key} should be an array.")
    predicates = [_compile_filter(ds, item, depth + 1) for item in items]
    combine = all if key == "and" else any
    return lambda page: combine(predicate(page) for predicate in predicates)


def _single_condition(spec: Mapping[str, Any], key: str) -> tuple[str, Any]:
    condition = spec.get(key)
    if not isinstance(condition, Mapping) or len(condition) != 1:
        raise _validation(f"body failed validation: body.filter.{key} should have exactly one "
                          f"condition, instead was `{_shown(condition)}`.")
    return next(iter(condition.items()))


def _timestamp_filter(spec: Mapping[str, Any]) -> _Predicate:
    kind = spec["timestamp"]
    if kind not in ("last_edited_time", "created_time"):
        raise _validation(f"body failed validation: body.filter.timestamp should be "
                          f"`created_time` or `last_edited_time`, instead was `{_shown(kind)}`.")
    op, value = _single_condition(spec, kind)
    test = _DATE_TESTS.get(op)
    if test is None:
        raise _validation(f"body failed validation: unsupported {kind} filter `{op}`.")
    lo, hi = _date_bounds(value)
    if kind == "last_edited_time":
        return lambda page: test(page.edited, lo, hi)
    return lambda page: test(page.created, lo, hi)


def _date_bounds(value: Any) -> tuple[datetime, datetime]:
    """A date covers its whole (UTC) day; a date-time is an instant."""
    try:
        if isinstance(value, str) and _DATE_ONLY.match(value):
            start = parse_time(value + "T00:00:00Z")
            return start, start + timedelta(days=1)
        instant = parse_time(value)
    except (TypeError, ValueError):
        raise _validation(f"body failed validation: date filter value should be an ISO 8601 "
                          f"date, instead was `{_shown(value)}`.") from None
    return instant, instant + timedelta(microseconds=1)


def _property_filter(ds: _DataSource, spec: Mapping[str, Any]) -> _Predicate:
    prop = ds.prop(spec["property"])
    if prop is None:
        raise _validation(f"Could not find property with name or id: {spec['property']}")
    key = next((k for k in _FILTER_KEYS[prop.type] if k in spec), None)
    if key is None:
        other = next((k for k in spec if k != "property"), "nothing")
        raise _validation(f"database property {prop.type} does not match filter {other}")
    op, value = _single_condition(spec, key)
    tests = _OPTION_TESTS if prop.type in ("select", "status") else _TEXT_TESTS
    test = tests.get(op)
    empty_op = op in ("is_empty", "is_not_empty")
    if test is None or (value is not True if empty_op else not isinstance(value, str)):
        raise _validation(f"body failed validation: unsupported {key} filter "
                          f"`{_shown({op: value})}`.")
    return lambda page: test(_comparable(prop, page), value)


def _comparable(prop: _Property, page: _Page) -> Any:
    value = page.values[prop.name]
    if prop.type in ("select", "status"):
        return None if value is None else value["name"]
    if prop.type == "url":
        return value or ""
    return "".join(item["plain_text"] for item in value)


def _sort_pages(ds: _DataSource, pages: list[_Page], sorts: Any) -> list[_Page]:
    pages = sorted(pages, key=lambda page: page.seq)
    if sorts is None:
        return pages
    if not isinstance(sorts, list):
        raise _validation("body failed validation: body.sorts should be an array.")
    for spec in reversed(sorts):
        key, descending = _sort_key(ds, spec)
        pages.sort(key=key, reverse=descending)
    return pages


def _sort_key(ds: _DataSource, spec: Any) -> tuple[Callable[[_Page], Any], bool]:
    direction = spec.get("direction") if isinstance(spec, Mapping) else None
    if direction not in ("ascending", "descending"):
        raise _validation(f"body failed validation: sort `{_shown(spec)}` needs a direction of "
                          "`ascending` or `descending`.")
    spec = cast(Mapping[str, Any], spec)
    descending = direction == "descending"
    if spec.get("timestamp") == "last_edited_time":
        return (lambda page: page.edited), descending
    if spec.get("timestamp") == "created_time":
        return (lambda page: page.created), descending
    prop = ds.prop(spec.get("property"))
    if prop is None:
        raise _validation(f"Could not find sort property with name or id: "
                          f"{spec.get('property')}")
    if prop.type in ("select", "status"):
        return (lambda page: prop.option_index(_comparable(prop, page))), descending
    return (lambda page: _comparable(prop, page).lower()), descending


# --------------------------------------------------------------------------------------------
# HTTP server


class _Server(ThreadingHTTPServer):
    """Joins its handler threads on close and can cut idle keep-alive connections."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128  # socketserver's 5 drops SYNs under bursts: 1 s client stalls

    def __init__(self, fake: FakeNotion) -> None:
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away (e.g. it timed out): not the fake's problem
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    timeout = 30  # idle keep-alive connections
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        fake = cast(_Server, self.server).fake
        response = fake._respond(method, self.path, headers, body)
        if response is None:
            self.close_connection = True
            return
        self.send_response(response.status)
        for key, value in response.headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
