"""The Notion fake, seen through the real ``notion_client.AsyncClient`` (no mocks).

These tests pin down both halves of the contract the Notion sync will rely on: what the fake
serves, and what notion-client 3.x does with it (request shapes, pagination helpers, its own
retries of 429/5xx, ``Retry-After``, ``timeout_ms``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from notion_client import (
    APIResponseError,
    AsyncClient,
    RequestTimeoutError,
    RetryOptions,
    UnknownHTTPResponseError,
)
from notion_client.errors import HTTPResponseError
from notion_client.helpers import (
    async_collect_paginated_api,
    async_iterate_paginated_api,
    is_full_data_source,
    is_full_page,
)

from tests.notion_fake import (
    NOTION_VERSION,
    PRIORITY_OPTIONS,
    STATUS_OPTIONS,
    FakeNotion,
    FakeNotionError,
    PropertySpec,
    iso,
    parse_time,
    rich_text,
    select,
    status,
    title,
    url,
    value_of,
)

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
DASHED_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
FAST_RETRY = RetryOptions(max_retries=2, initial_retry_delay_ms=10, max_retry_delay_ms=50)
# notion-client adds a StreamHandler to the "notion_client" logger per client unless given one.
CLIENT_LOGGER = logging.getLogger("tests.notion_client")


def client_for(notion: FakeNotion, **options: Any) -> AsyncClient:
    options.setdefault("auth", notion.token)
    return AsyncClient(base_url=notion.base_url, logger=CLIENT_LOGGER, **options)


def ids(pages: list[dict[str, Any]]) -> list[str]:
    return [page["id"] for page in pages]


def statuses(requests: list[Any]) -> list[int | None]:
    return [request.status for request in requests]


# --- pagination ---------------------------------------------------------------------------------


async def test_query_pages_250_pages_as_100_100_50(notion: FakeNotion) -> None:
    ds = notion.data_source_id
    added = [notion.add_page(ds, {"Title": title(f"Video {i}")}) for i in range(250)]
    other = notion.add_data_source(schema={"Name": "title"})
    notion.add_page(other, {"Name": title("not in the first data source")})

    async with client_for(notion) as client:
        sizes: list[int] = []
        seen: list[str] = []
        cursor: str | None = None
        while True:
            extra = {} if cursor is None else {"start_cursor": cursor}
            response = await client.data_sources.query(ds, **extra)
            assert response["object"] == "list"
            assert response["type"] == "page_or_data_source"
            assert response["page_or_data_source"] == {}
            sizes.append(len(response["results"]))
            seen += ids(response["results"])
            cursor = response["next_cursor"]
            if not response["has_more"]:
                assert cursor is None
                break
            assert isinstance(cursor, str)
        collected = await async_collect_paginated_api(client.data_sources.query,
                                                      data_source_id=ds)
        iterated = [page["id"] async for page in async_iterate_paginated_api(
            client.data_sources.query, data_source_id=ds, page_size=40)]

    assert sizes == [100, 100, 50]
    assert seen == ids(added)
    assert ids(collected) == ids(added)
    assert iterated == ids(added)
    bodies = [request.json for request in notion.requests_to(f"/v1/data_sources/{ds}/query")]
    assert len(bodies) == 3 + 3 + 7
    # The helper drops start_cursor=None, so the first body is empty (page_size defaults to 100).
    assert bodies[3] == {}
    assert set(bodies[4]) == {"start_cursor"}
    assert bodies[6] == {"page_size": 40}


async def test_query_errors_look_like_notion(notion: FakeNotion) -> None:
    ds = notion.data_source_id
    async with client_for(notion) as client:
        with pytest.raises(APIResponseError) as bad_cursor:
            await client.data_sources.query(ds, start_cursor="not-a-cursor")
        with pytest.raises(APIResponseError) as too_big:
            await client.data_sources.query(ds, page_size=101)
        with pytest.raises(APIResponseError) as unknown:
            await client.data_sources.query(str(uuid.uuid4()))
        with pytest.raises(APIResponseError) as malformed:
            await client.data_sources.retrieve("not-a-uuid")

    assert (bad_cursor.value.code, bad_cursor.value.status) == ("validation_error", 400)
    assert (too_big.value.code, too_big.value.status) == ("validation_error", 400)
    assert (unknown.value.code, unknown.value.status) == ("object_not_found", 404)
    assert (malformed.value.code, malformed.value.status) == ("validation_error", 400)
    body = json.loads(bad_cursor.value.body)
    assert set(body) == {"object", "status", "code", "message", "request_id"}
    assert body["object"] == "error" and body["status"] == 400
    assert bad_cursor.value.request_id == body["request_id"]
    assert statuses(notion.requests) == [400, 400, 404, 400]  # 4xx are never retried


# --- shapes -------------------------------------------------------------------------------------


async def test_page_and_data_source_shapes(notion: FakeNotion) -> None:
    ds = notion.data_source_id
    page = notion.add_page(ds, {
        "Title": title("First video"), "Topic": rich_text("Space"), "Priority": select("High"),
        "Status": status("Queued"), "YouTube URL": url(None), "Channel": rich_text("Main")})
    bare = notion.add_page(ds, {"Title": title("Bare"), "Status": status(None)})
    defaulted = notion.add_page(ds, {"Title": title("Defaulted")})

    async with client_for(notion) as client:
        got = await client.pages.retrieve(page["id"])
        schema = await client.data_sources.retrieve(ds)

    assert got == page and is_full_page(got)
    assert DASHED_UUID.match(got["id"])
    assert ISO_MS.match(got["created_time"]) and ISO_MS.match(got["last_edited_time"])
    assert got["last_edited_time"] == "2026-11-22T10:00:01.000Z"
    assert got["parent"]["type"] == "data_source_id" and got["parent"]["data_source_id"] == ds
    assert (got["archived"], got["in_trash"]) == (False, False)
    assert got["url"] == "https://www.notion.so/First-video-" + got["id"].replace("-", "")
    props = got["properties"]
    assert list(props) == ["Title", "Topic", "Story Direction", "Channel", "Priority", "Status",
                           "Error", "YouTube URL"]
    assert props["Title"]["id"] == "title" and props["Title"]["type"] == "title"
    [item] = props["Title"]["title"]
    assert item["type"] == "text" and item["text"] == {"content": "First video", "link": None}
    assert item["plain_text"] == "First video" and item["annotations"]["color"] == "default"
    assert props["Topic"]["type"] == "rich_text" and value_of(got, "Topic") == "Space"
    assert set(props["Priority"]["select"]) == {"id", "name", "color"}
    assert props["Priority"]["select"]["name"] == "High"
    assert props["Status"]["type"] == "status" and props["Status"]["status"]["name"] == "Queued"
    assert props["YouTube URL"] == {"id": props["YouTube URL"]["id"], "type": "url", "url": None}
    assert props["Error"]["rich_text"] == [] and value_of(got, "Error") == ""
    assert bare["properties"]["Status"]["status"] is None
    assert bare["properties"]["Priority"]["select"] is None
    assert value_of(defaulted, "Status") == "Draft"  # like Notion: a new page gets the default

    assert is_full_data_source(schema) and schema["id"] == ds
    assert {name: p["type"] for name, p in schema["properties"].items()} == {
        "Title": "title", "Topic": "rich_text", "Story Direction": "rich_text",
        "Channel": "rich_text", "Priority": "select", "Status": "status", "Error": "rich_text",
        "YouTube URL": "url"}
    options = schema["properties"]["Status"]["status"]["options"]
    assert [option["name"] for option in options] == list(STATUS_OPTIONS)
    assert [option["name"] for option in schema["properties"]["Priority"]["select"]["options"]] \
        == list(PRIORITY_OPTIONS)


# --- filters and sorts --------------------------------------------------------------------------


async def test_last_edited_time_filter_and_sort(notion: FakeNotion) -> None:
    ds = notion.data_source_id
    p = [notion.add_page(ds, {"Title": title(f"T{i}"), "Status": status("Draft")})
         for i in range(5)]  # edited 10:00:01 .. 10:00:05
    cutoff = iso(notion.clock.now())
    notion.edit_page(p[1]["id"], {"Status": status("Queued")})  # 10:00:06
    notion.edit_page(p[3]["id"], {"Status": status("Queued")})  # 10:00:07

    def edited(op: str, when: str = cutoff) -> dict[str, Any]:
        return {"timestamp": "last_edited_time", "last_edited_time": {op: when}}

    queued = {"property": "Status", "status": {"equals": "Queued"}}
    ascending = [{"timestamp": "last_edited_time", "direction": "ascending"}]
    descending = [{"timestamp": "last_edited_time", "direction": "descending"}]

    async with client_for(notion) as client:
        async def query(**body: Any) -> list[str]:
            return ids((await client.data_sources.query(ds, **body))["results"])

        assert await query(filter=edited("after"), sorts=descending) == ids([p[3], p[1]])
        assert await query(filter=edited("on_or_after"), sorts=ascending) == ids([p[4], p[1],
                                                                                  p[3]])
        assert await query(filter=edited("before")) == ids([p[0], p[2]])
        assert await query(filter=edited("on_or_before")) == ids([p[0], p[2], p[4]])
        assert await query(filter=edited("equals", "2026-11-22")) == ids(p)
        assert await query(filter=edited("after", "2026-11-22")) == []
        assert await query(sorts=ascending) == ids([p[0], p[2], p[4], p[1], p[3]])
        assert await query(filter={"and": [edited("on_or_after"), queued]}) == ids([p[1], p[3]])
        assert await query(filter={"or": [queued, edited("equals", p[0]["last_edited_time"])]},
                           sorts=descending) == ids([p[3], p[1], p[0]])
        assert await query(filter={"property": "Title", "title": {"equals": "T2"}}) == ids([p[2]])
        with pytest.raises(APIResponseError) as wrong_kind:
            await query(filter={"property": "Status", "select": {"equals": "Queued"}})
        with pytest.raises(APIResponseError) as unknown_prop:
            await query(filter={"property": "Nope", "status": {"equals": "Queued"}})

    assert wrong_kind.value.code == "validation_error"
    assert unknown_prop.value.code == "validation_error"


# --- writes -------------------------------------------------------------------------------------


async def test_pages_update_round_trip_bumps_last_edited_time(notion: FakeNotion) -> None:
    ds = notion.data_source_id
    page = notion.add_page(ds, {"Title": title("Video"), "Status": status("Draft")})
    write = {"Status": {"status": {"name": "Queued"}},
             "Error": {"rich_text": [{"type": "text", "text": {"content": "boom"}}]},
             "YouTube URL": {"url": "https://youtu.be/abc"}}
    dashless = page["id"].replace("-", "")

    async with client_for(notion) as client:
        updated = await client.pages.update(dashless, properties=write)
        fetched = await client.pages.retrieve(dashless)
        changed = await client.data_sources.query(ds, filter={
            "timestamp": "last_edited_time",
            "last_edited_time": {"after": page["last_edited_time"]}})

    assert updated["id"] == page["id"]
    assert (value_of(updated, "Status"), value_of(updated, "Error"),
            value_of(updated, "YouTube URL")) == ("Queued", "boom", "https://youtu.be/abc")
    assert updated["properties"]["Error"]["rich_text"][0]["plain_text"] == "boom"
    assert updated["properties"]["Status"]["status"]["color"]
    assert parse_time(updated["last_edited_time"]) == (
        parse_time(page["last_edited_time"]) + timedelta(seconds=1))
    assert fetched == updated == notion.get_page(page["id"])
    assert ids(changed["results"]) == [page["id"]]
    [patch] = notion.requests_to("/v1/pages/", "PATCH")
    assert patch.path == f"/v1/pages/{dashless}" and patch.json == {"properties": write}


async def test_invalid_writes_are_validation_errors_and_change_nothing(notion: FakeNotion) -> None:
    ds = notion.data_source_id
    page = notion.add_page(ds, {"Title": title("Video"), "Status": status("Draft")})
    trashed = notion.add_page(ds, {"Title": title("Gone")})
    notion.trash_page(trashed["id"])
    bad_writes: list[dict[str, Any]] = [
        {"Status": {"status": {"name": "Bogus"}}},
        {"Priority": {"select": {"name": "Urgent"}}},
        {"Error": {"rich_text": [{"text": {"content": "x" * 2001}}]}},
        {"Nope": {"url": None}},
        {"Status": {"select": {"name": "Queued"}}},
    ]

    async with client_for(notion) as client:
        errors: list[APIResponseError] = []
        for properties in bad_writes:
            with pytest.raises(APIResponseError) as err:
                await client.pages.update(page["id"], properties=properties)
            errors.append(err.value)
        with pytest.raises(APIResponseError) as on_trashed:
            await client.pages.update(trashed["id"], properties={"Status": status("Queued")})
        listed = await client.data_sources.query(ds)

    assert [(e.code, e.status) for e in errors] == [("validation_error", 400)] * len(bad_writes)
    assert "Bogus" in str(errors[0])
    assert on_trashed.value.code == "validation_error"
    assert notion.get_page(page["id"]) == page
    assert ids(listed["results"]) == [page["id"]]  # trashed pages are not queried
    assert len(notion.requests_to("/v1/pages/", "PATCH")) == len(bad_writes) + 1
    with pytest.raises(FakeNotionError, match="Bogus"):
        notion.edit_page(page["id"], {"Status": status("Bogus")})


# --- auth, faults, retries, timeouts ------------------------------------------------------------


async def test_wrong_or_missing_token_is_401_unauthorized(notion: FakeNotion) -> None:
    raised: list[APIResponseError] = []
    for auth in ("ntn_wrong", None):
        async with client_for(notion, auth=auth) as client:
            with pytest.raises(APIResponseError) as err:
                await client.data_sources.retrieve(notion.data_source_id)
            raised.append(err.value)

    assert [(e.code, e.status) for e in raised] == [("unauthorized", 401)] * 2
    assert json.loads(raised[0].body)["message"] == "API token is invalid."
    assert [(r.authorized, r.status) for r in notion.requests] == [(False, 401)] * 2


async def test_server_errors_and_which_ones_the_client_retries(notion: FakeNotion) -> None:
    ds = notion.data_source_id
    page = notion.add_page(ds, {"Title": title("Video")})
    async with client_for(notion, retry=FAST_RETRY) as client:
        notion.fail_next(1, 500)
        with pytest.raises(APIResponseError) as post_500:
            await client.data_sources.query(ds)
        notion.fail_next(1, 503, method="PATCH")
        with pytest.raises(APIResponseError) as patch_503:
            await client.pages.update(page["id"], properties={"Status": status("Queued")})
        notion.fail_next(2, 503, path_contains="/v1/pages/")
        fetched = await client.pages.retrieve(page["id"])
        notion.fail_next(3, 500, method="GET")
        with pytest.raises(APIResponseError) as get_500:
            await client.data_sources.retrieve(ds)
        notion.fail_next(2, 502)
        with pytest.raises(UnknownHTTPResponseError) as get_502:
            await client.data_sources.retrieve(ds)

    # POST/PATCH are never retried on 5xx; GET is retried (max_retries=2) on 500 and 503 only.
    assert (post_500.value.code, post_500.value.status) == ("internal_server_error", 500)
    assert isinstance(post_500.value, HTTPResponseError)
    assert (patch_503.value.code, patch_503.value.status) == ("service_unavailable", 503)
    assert fetched["id"] == page["id"]
    assert (get_500.value.code, get_500.value.status) == ("internal_server_error", 500)
    assert (get_502.value.code, get_502.value.status) == ("notionhq_client_response_error", 502)
    assert statuses(notion.requests) == [500, 503, 503, 503, 200, 500, 500, 500, 502]


async def test_429_is_retried_by_the_client_honouring_retry_after(notion: FakeNotion) -> None:
    page = notion.add_page(notion.data_source_id, {"Title": title("Video")})
    write = {"Status": {"status": {"name": "Queued"}}}
    slow_backoff = RetryOptions(max_retries=2, initial_retry_delay_ms=5_000)

    notion.fail_next(1, 429, retry_after=0)
    started = time.monotonic()
    async with client_for(notion, retry=slow_backoff) as client:
        updated = await client.pages.update(page["id"], properties=write)
    # Retried after Retry-After (0 s), not after the 2.5-7.5 s exponential back-off.
    assert time.monotonic() - started < 1.0
    assert value_of(updated, "Status") == "Queued"
    patches = notion.requests_to("/v1/pages/", "PATCH")
    assert statuses(patches) == [429, 200] and patches[0].json == patches[1].json

    notion.fail_next(1, 429, retry_after=30)  # capped by max_retry_delay_ms
    async with client_for(notion, retry=RetryOptions(max_retry_delay_ms=100)) as client:
        await client.pages.update(page["id"], properties=write)

    notion.fail_next(3, 429, retry_after=0)
    async with client_for(notion) as client:
        with pytest.raises(APIResponseError) as exhausted:
            await client.pages.update(page["id"], properties=write)
    notion.fail_next(1, 429, retry_after=2)
    async with client_for(notion, retry=False) as client:
        with pytest.raises(APIResponseError) as not_retried:
            await client.pages.update(page["id"], properties=write)

    assert (exhausted.value.code, exhausted.value.status) == ("rate_limited", 429)
    assert exhausted.value.headers["retry-after"] == "0"
    assert not_retried.value.code == "rate_limited"
    assert not_retried.value.headers["retry-after"] == "2"
    assert statuses(notion.requests_to("/v1/pages/", "PATCH")) == [
        429, 200, 429, 200, 429, 429, 429, 429]
    assert time.monotonic() - started < 2.0


async def test_slow_response_raises_request_timeout_error(notion: FakeNotion) -> None:
    ds = notion.data_source_id
    notion.delay_next(1, 5.0)
    async with client_for(notion, timeout_ms=200) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError) as err:
            await client.data_sources.retrieve(ds)
        elapsed = time.monotonic() - started
        again = await client.data_sources.retrieve(ds)

    assert 0.15 < elapsed < 1.5
    assert err.value.code == "notionhq_client_request_timeout"
    assert again["id"] == ds
    assert len(notion.requests) == 2  # timeouts are not retried, even for GET


async def test_rate_limiter_answers_429_when_hammered() -> None:
    with FakeNotion(rate_limit_per_s=3.0) as notion:
        async with client_for(notion, retry=False) as client:
            started = time.monotonic()
            results = await asyncio.gather(
                *(client.data_sources.retrieve(notion.data_source_id) for _ in range(12)),
                return_exceptions=True)
            elapsed = time.monotonic() - started

    ok = [r for r in results if isinstance(r, dict)]
    limited = [r for r in results if isinstance(r, APIResponseError)]
    assert len(ok) + len(limited) == 12
    assert 3 <= len(ok) <= 3 + 3.0 * elapsed + 1  # a burst of 3, then ~3/s
    assert {(e.code, e.status, e.headers["retry-after"]) for e in limited} == {
        ("rate_limited", 429, "1")}


async def test_client_rides_out_the_rate_limiter_with_its_own_retries() -> None:
    with FakeNotion(rate_limit_per_s=1.0, rate_limit_burst=2.0) as notion:
        async with client_for(notion) as client:
            started = time.monotonic()
            for _ in range(3):
                await client.data_sources.retrieve(notion.data_source_id)
            elapsed = time.monotonic() - started

    assert statuses(notion.requests) == [200, 200, 429, 200]
    assert 0.95 < elapsed < 2.5  # it slept the Retry-After: 1 (whole seconds, rounded up)


# --- recording, raw protocol, lifecycle ---------------------------------------------------------


async def test_requests_are_recorded_without_the_token(notion: FakeNotion) -> None:
    ds = notion.data_source_id
    page = notion.add_page(ds, {"Title": title("Video")})
    async with client_for(notion) as client:
        await client.data_sources.query(ds, filter={"property": "Status",
                                                    "status": {"equals": "Draft"}})
        await client.pages.retrieve(page["id"])
        await client.pages.update(page["id"], properties={"Status": status("Queued")})

    recorded = notion.requests
    assert [(r.method, r.path) for r in recorded] == [
        ("POST", f"/v1/data_sources/{ds}/query"), ("GET", f"/v1/pages/{page['id']}"),
        ("PATCH", f"/v1/pages/{page['id']}")]
    assert [r.time for r in recorded] == sorted(r.time for r in recorded)
    for request in recorded:
        assert request.authorized and "authorization" not in request.headers
        assert request.headers["notion-version"] == NOTION_VERSION == "2025-09-03"
        assert request.headers["user-agent"] == "ramnes/notion-sdk-py@3.1.0"
        seen = request.path + json.dumps(request.query) + request.body + json.dumps(
            request.headers)
        assert notion.token not in seen


def test_raw_protocol_details(notion: FakeNotion) -> None:
    ds = notion.data_source_id
    page = notion.add_page(ds, {"Title": title("Video"), "Status": status("Queued")})
    auth = {"Authorization": f"Bearer {notion.token}"}
    versioned = auth | {"Notion-Version": NOTION_VERSION}
    with httpx.Client(base_url=notion.base_url) as http:
        no_version = http.get(f"/v1/pages/{page['id']}", headers=auth)
        unknown = http.get("/v1/databases", headers=versioned)
        wrong_method = http.delete(f"/v1/pages/{page['id']}", headers=versioned)
        bad_json = http.patch(f"/v1/pages/{page['id']}", headers=versioned, content=b"{nope")
        only_status = http.get(f"/v1/pages/{page['id']}", headers=versioned,
                               params={"filter_properties": "Status"})

    assert (no_version.status_code, no_version.json()["code"]) == (400, "missing_version")
    assert (unknown.status_code, unknown.json()["code"]) == (400, "invalid_request_url")
    assert wrong_method.json()["code"] == "invalid_request_url"
    assert (bad_json.status_code, bad_json.json()["code"]) == (400, "invalid_json")
    assert only_status.headers["content-type"].startswith("application/json")
    assert list(only_status.json()["properties"]) == ["Status"]


def test_store_helpers_and_clock() -> None:
    notion = FakeNotion(minute_resolution=True)  # a store without a server is fine for this
    ds = notion.add_data_source(schema={"Name": "title", "State": PropertySpec("status",
                                                                               ("Todo", "Done"))})
    page = notion.add_page(ds, {"Name": title("x" * 4500), "State": status("Todo")})
    assert [len(item["plain_text"]) for item in page["properties"]["Name"]["title"]] == [
        2000, 2000, 500]
    assert page["last_edited_time"] == "2026-11-22T10:00:00.000Z"  # 10:00:01 floored
    notion.clock.advance(60)
    edited = notion.edit_page(page["id"].replace("-", ""), {"State": status("Done")})
    assert edited["last_edited_time"] == "2026-11-22T10:01:00.000Z"  # 10:01:02 floored
    assert edited["created_time"] == page["created_time"]
    explicit = notion.add_page(ds, {"Name": title("y")}, last_edited_time="2026-01-02T03:04:05Z")
    assert explicit["last_edited_time"] == "2026-01-02T03:04:00.000Z"
    assert [value_of(p, "State") for p in notion.pages(ds)] == ["Done", "Todo"]
    with pytest.raises(RuntimeError):
        _ = notion.base_url


def test_shutdown_joins_threads_and_cuts_connections() -> None:
    before = set(threading.enumerate())
    notion = FakeNotion().start()
    path = f"/v1/data_sources/{notion.data_source_id}"
    headers = {"Authorization": f"Bearer {notion.token}", "Notion-Version": NOTION_VERSION}
    failures: list[Exception] = []

    def stuck_request() -> None:
        try:
            httpx.get(notion.base_url + path, headers=headers, timeout=10)
        except httpx.HTTPError as exc:
            failures.append(exc)

    with httpx.Client(base_url=notion.base_url, headers=headers) as http:
        assert http.get(path).status_code == 200  # leaves an idle keep-alive connection
        notion.delay_next(1, 30.0)
        worker = threading.Thread(target=stuck_request)
        worker.start()
        deadline = time.monotonic() + 5
        while len(notion.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        port = int(notion.base_url.rsplit(":", 1)[1])
        started = time.monotonic()
        notion.close()
        assert time.monotonic() - started < 2.0
        worker.join(5)
        with pytest.raises(httpx.TransportError):
            http.get(path)

    assert len(failures) == 1 and isinstance(failures[0], httpx.RemoteProtocolError)
    assert set(threading.enumerate()) <= before
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
