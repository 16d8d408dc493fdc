"""The REST API against a real ``pipeline serve`` process on real PostgreSQL and Redis (httpx).

One database and two servers for the module (the token required for reads, and
``API_PUBLIC_READ``); each test works in channels of its own. The workers' test runs a real
worker on a database of its own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.config import Settings
from app.db import make_engine, make_sessionmaker, migrate
from app.db.models import Channel, Task, TaskEvent
from app.errors import BadTaskRef, TaskNotFound
from app.lifecycle import TaskStatus
from tests import dbtools
from tests.factories import make_channel, make_task
from tests.webserver import TOKEN, Server, Web, web
from tests.workerprocs import (
    OwnServer,
    Sessions,
    Workers,
    db,
    drop_queue,
    eventually,
    own_postgres,
    queue,
    status_of,
    workers,
)

__all__ = ["db", "own_postgres", "queue", "web", "workers"]


@dataclass
class Api:
    sessions: Sessions
    server: Server
    public: Server
    #: Sends the token.
    client: httpx.AsyncClient
    #: Sends no token.
    anon: httpx.AsyncClient
    #: Starts more servers on the module's database.
    servers: Web


@pytest.fixture(scope="module")
async def api(pg_server_url: str, settings: Settings, redis_url: str,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    queue_name = f"test:{uuid.uuid4().hex[:8]}"
    async with dbtools.scratch_database(pg_server_url, migrate=True) as url:
        engine = make_engine(settings, url)
        servers = Web(tmp_path_factory.mktemp("api"), {
            "DATABASE_URL": url, "REDIS_URL": redis_url, "QUEUE_NAME": queue_name,
            "LOG_LEVEL": "INFO"})
        try:
            server = await servers.start()
            public = await servers.start(API_PUBLIC_READ="true")
            async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers(),
                                         timeout=30) as client, \
                    httpx.AsyncClient(base_url=server.base_url, timeout=30) as anon:
                yield Api(make_sessionmaker(engine), server, public, client, anon, servers)
        finally:
            servers.stop()
            await engine.dispose()
    await drop_queue(redis_url, queue_name)


async def channel_with(sessions: Sessions, *statuses: TaskStatus,
                       **task_fields: Any) -> tuple[Channel, list[Task]]:
    """A channel of the test's own with one task in each of ``statuses``, 1 ms apart."""
    base = datetime.now(UTC) - timedelta(minutes=5)
    async with sessions() as session, session.begin():
        channel = await make_channel(session)
        found = [await make_task(session, channel, status,
                                 created_at=base + timedelta(milliseconds=n), **task_fields)
                 for n, status in enumerate(statuses)]
    return channel, found


async def task_row(sessions: Sessions, task_id: uuid.UUID) -> Task:
    async with sessions() as session:
        task = await session.get(Task, task_id)
    assert task is not None
    return task


async def actors(sessions: Sessions, task_id: uuid.UUID) -> list[str]:
    async with sessions() as session:
        return list(await session.scalars(sa.select(TaskEvent.actor)
                                          .where(TaskEvent.task_id == task_id)
                                          .order_by(TaskEvent.id)))


# --- auth -----------------------------------------------------------------------------------


async def test_every_route_refuses_no_token_and_a_wrong_one(api: Api) -> None:
    wrong = {"Authorization": "Bearer not-the-token"}
    for method, path, body in (("GET", "/api/tasks", None), ("GET", "/api/stats", None),
                               ("GET", "/api/channels", None), ("GET", "/api/workers", None),
                               ("GET", f"/api/tasks/{uuid.uuid4()}", None),
                               ("POST", "/api/tasks", {"tasks": []}),
                               ("POST", "/api/approve", {"gate": "video"}),
                               ("POST", "/api/requeue", {"statuses": ["video_error"]}),
                               ("POST", "/api/hold", {"statuses": ["queued"]}),
                               ("POST", "/api/release", {"statuses": ["queued"]}),
                               ("POST", "/api/channels", {"channel_id": "UCx"}),
                               ("POST", "/api/channels/UCx/activate", None),
                               ("POST", "/api/channels/UCx/deactivate", None),
                               ("PATCH", "/api/channels/UCx", {"max_concurrent": 2})):
        for headers in ({}, wrong, {"Authorization": TOKEN}):     # no "Bearer": not a token
            answer = await api.anon.request(method, path, json=body, headers=headers)
            assert answer.status_code == 401, (method, path, headers)
            assert answer.json() == {"error": "A valid bearer token is required "
                                              "(Authorization: Bearer <API_TOKEN>)."}
            assert answer.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in api.server.process.text()


async def test_public_reads_open_the_reads_only(api: Api) -> None:
    channel, (task,) = await channel_with(api.sessions, TaskStatus.queued)
    async with httpx.AsyncClient(base_url=api.public.base_url, timeout=30) as anon:
        listed = await anon.get("/api/tasks", params={"channel": channel.channel_id})
        assert listed.status_code == 200
        assert [t["id"] for t in listed.json()["tasks"]] == [str(task.id)]
        assert (await anon.get(f"/api/tasks/{task.id}")).status_code == 200
        refused = await anon.post("/api/hold", json={"ids": [str(task.id)]})
        assert refused.status_code == 401
        held = await anon.post("/api/hold", json={"ids": [str(task.id)]},
                               headers=api.public.headers())
        assert held.status_code == 200
    assert (await task_row(api.sessions, task.id)).hold_by == "api"


async def test_without_a_token_everything_is_open_on_loopback(api: Api) -> None:
    _, (task,) = await channel_with(api.sessions, TaskStatus.queued)
    server = await api.servers.start(API_TOKEN="")
    assert server.token is None
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as anon:
        assert (await anon.get(f"/api/tasks/{task.id}")).status_code == 200
        held = await anon.post("/api/hold", json={"ids": [str(task.id)]})
        assert held.status_code == 200, held.text
    assert (await task_row(api.sessions, task.id)).hold_by == "api"


# --- reads ----------------------------------------------------------------------------------


async def test_list_filters_as_pipeline_list(api: Api) -> None:
    channel, found = await channel_with(
        api.sessions, TaskStatus.queued, TaskStatus.video_error, TaskStatus.queued,
        TaskStatus.published)
    async with api.sessions() as session, session.begin():
        await session.execute(sa.update(Task).where(Task.id == found[2].id).values(
            title="Ünïcode <b>Needle</b>", hold_since=datetime.now(UTC), hold_by="cli:x"))

    async def ids(**params: Any) -> list[str]:
        answer = await api.client.get("/api/tasks",
                                      params={"channel": channel.channel_id, **params})
        assert answer.status_code == 200, answer.text
        return [t["id"] for t in answer.json()["tasks"]]

    every = [str(t.id) for t in found]
    assert await ids() == every
    assert await ids(sort="newest") == every[::-1]
    assert await ids(status=["queued", "video_error"]) == every[:3]
    assert await ids(search="needle") == [every[2]]
    assert await ids(held="true") == [every[2]]
    assert await ids(page_id=found[1].notion_page_id) == [every[1]]
    item = (await api.client.get("/api/tasks", params={"page_id": found[2].notion_page_id})
            ).json()["tasks"][0]
    assert item["channel"] == channel.channel_id
    assert item["title"] == "Ünïcode <b>Needle</b>"
    assert item["hold_by"] == "cli:x"

    too_many = await api.client.get("/api/tasks", params={"limit": 501})
    assert too_many.status_code == 422
    assert too_many.json()["error"].startswith("limit: ")
    unknown = await api.client.get("/api/tasks", params={"channel": "UC-none"})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "channel 'UC-none' not found"})
    bad = await api.client.get("/api/tasks", params={"status": "nonsense"})
    assert bad.status_code == 422 and bad.json()["error"].startswith("status.0: ")


async def test_cursor_walks_every_task_once_while_tasks_are_added(api: Api) -> None:
    channel, found = await channel_with(api.sessions, *[TaskStatus.queued] * 25)
    added: list[uuid.UUID] = []

    async def walk(sort: str) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"channel": channel.channel_id, "limit": 7,
                                            "sort": sort}
            answer = await api.client.get("/api/tasks", params=params | (
                {"cursor": cursor} if cursor else {}))
            assert answer.status_code == 200, answer.text
            page = answer.json()
            assert len(page["tasks"]) <= 7
            seen += [t["id"] for t in page["tasks"]]
            async with api.sessions() as session, session.begin():     # between two pages
                added.extend([(await make_task(session, channel)).id for _ in range(2)])
            cursor = page["next"]
            if cursor is None:
                return seen

    oldest = await walk("oldest")
    assert len(oldest) == len(set(oldest))
    # Oldest first, tasks added meanwhile come after the cursor: the walk reaches them all.
    assert set(oldest) == {str(t.id) for t in found} | {str(i) for i in added[:-2]}
    before = set(added)
    newest = await walk("newest")
    assert len(newest) == len(set(newest))
    # Newest first, tasks added meanwhile are behind the cursor: every earlier one, once.
    assert set(newest) == {str(t.id) for t in found} | {str(i) for i in before}

    refused = await api.client.get("/api/tasks", params={"cursor": "bm9wZQ"})
    assert refused.status_code == 422
    assert refused.json()["error"].startswith("cursor: ")
    first = (await api.client.get("/api/tasks", params={"limit": 1})).json()["next"]
    other = await api.client.get("/api/tasks", params={"cursor": first, "sort": "newest"})
    assert other.json() == {"error": "cursor: given for the other sort order"}


async def test_a_task_by_id_prefix_or_page_id_with_history_and_artefacts(api: Api) -> None:
    _, (task,) = await channel_with(api.sessions, TaskStatus.video_ready,
                                    artifacts={"assets": {"uri": "sim://a"}},
                                    error_log="first line\nsecond line")
    async with api.sessions() as session, session.begin():
        session.add(TaskEvent(task_id=task.id, from_status=TaskStatus.generating_video,
                              to_status=TaskStatus.video_ready, actor="worker-1", note="done"))
    page = task.notion_page_id
    dashed = f"{page[:8]}-{page[8:12]}-{page[12:16]}-{page[16:20]}-{page[20:]}"
    for ref in (str(task.id), task.id.hex[:8], task.id.hex[:12].upper(), dashed):
        answer = await api.client.get(f"/api/tasks/{ref}")
        assert answer.status_code == 200, (ref, answer.text)
        body = answer.json()
        assert body["id"] == str(task.id)
    assert body["artifacts"] == {"assets": {"uri": "sim://a"}}
    assert body["error_log"] == "first line\nsecond line"
    assert body["quota_slot_at"] is None
    assert [(e["to_status"], e["actor"]) for e in body["events"]] == [
        ("video_ready", "worker-1")]

    missing = uuid.uuid4()
    answer = await api.client.get(f"/api/tasks/{missing}")
    assert (answer.status_code, answer.json()) == (404, {"error": str(TaskNotFound(str(missing)))})
    answer = await api.client.get("/api/tasks/abc")
    assert (answer.status_code, answer.json()) == (422, {"error": str(BadTaskRef(
        "abc", "an id prefix needs at least 8 hex digits"))})


async def test_stats_and_channels(api: Api) -> None:
    channel, _ = await channel_with(api.sessions, TaskStatus.queued, TaskStatus.queued,
                                    TaskStatus.audio_error)
    stats = (await api.client.get("/api/stats")).json()
    assert stats["by_channel"][channel.channel_id] == {"queued": 2, "audio_error": 1}
    assert stats["by_status"]["queued"] >= 2
    assert stats["runnable"] >= 2 and stats["queued"] >= 2
    assert stats["oldest_queued_age_seconds"] >= 290
    assert set(stats["errors"]) == {"retrying", "next_retry_at", "out_of_attempts"}
    assert stats["next_slot_at"] is None
    listed = {c["channel_id"]: c for c in (await api.client.get("/api/channels")).json()}
    assert listed[channel.channel_id]["is_active"] is True
    assert listed[channel.channel_id]["runnable"] == 2


# --- writes ---------------------------------------------------------------------------------


async def test_approve_dry_run_one_many_and_refused(api: Api) -> None:
    channel, (one, two, queued) = await channel_with(
        api.sessions, TaskStatus.video_ready, TaskStatus.video_ready, TaskStatus.queued)
    plan = await api.client.post("/api/approve", json={"gate": "video",
                                                       "channel": channel.channel_id,
                                                       "dry_run": True})
    assert plan.status_code == 200, plan.text
    assert [t["task_id"] for t in plan.json()["approved"]] == [str(one.id), str(two.id)]
    assert (await task_row(api.sessions, one.id)).status is TaskStatus.video_ready

    done = await api.client.post("/api/approve", json={"ids": [str(one.id)], "note": "ok"})
    assert done.json()["approved"][0]["gate"] == "video"
    assert (await task_row(api.sessions, one.id)).status is TaskStatus.video_approved
    assert (await actors(api.sessions, one.id))[-1] == "api"

    again = await api.client.post("/api/approve", json={"gate": "video",
                                                        "channel": channel.channel_id})
    assert [t["task_id"] for t in again.json()["approved"]] == [str(two.id)]
    assert (await task_row(api.sessions, two.id)).status is TaskStatus.video_approved

    refused = await api.client.post("/api/approve", json={"ids": [str(queued.id)]})
    assert refused.status_code == 409
    assert refused.json() == {"error": f"task {queued.id}: is queued, not waiting at a review gate"}
    past = await api.client.post("/api/approve", json={"ids": [str(one.id), str(queued.id)],
                                                       "gate": "video"})
    assert past.status_code == 200
    assert [t["task_id"] for t in past.json()["already_approved"]] == [str(one.id)]
    assert past.json()["refused"] == [f"task {queued.id}: is queued, not waiting at video_ready"]


async def test_requeue_dry_run_changes_nothing_then_applies(api: Api) -> None:
    channel, errored = await channel_with(api.sessions, TaskStatus.audio_error,
                                          TaskStatus.video_error, attempts=3)
    body = {"statuses": ["audio_error", "video_error"], "channel": channel.channel_id,
            "reason": "fixed the mixer"}
    before = [await task_row(api.sessions, t.id) for t in errored]
    plan = await api.client.post("/api/requeue", json=body | {"dry_run": True})
    assert plan.status_code == 200, plan.text
    assert plan.json()["dry_run"] is True and plan.json()["count"] == 2
    assert [(t["task_id"], t["stage"], t["resumes_at"]) for t in plan.json()["tasks"]] == [
        (str(errored[0].id), "audio", "generating_audio"),
        (str(errored[1].id), "video", "generating_video")]
    for task in errored:
        row = await task_row(api.sessions, task.id)
        assert (row.retry_at, row.attempts, row.updated_at) == next(
            (b.retry_at, b.attempts, b.updated_at) for b in before if b.id == task.id)
        assert await actors(api.sessions, task.id) == []

    done = await api.client.post("/api/requeue", json=body)
    assert done.json()["dry_run"] is False and done.json()["count"] == 2
    for task in errored:
        row = await task_row(api.sessions, task.id)
        assert row.retry_at is not None and row.status is task.status
        assert await actors(api.sessions, task.id) == ["api"]


async def test_requeue_refuses_a_task_not_in_error(api: Api) -> None:
    _, (errored, queued) = await channel_with(api.sessions, TaskStatus.asset_error,
                                              TaskStatus.queued, failed_stage="assets")
    one = await api.client.post("/api/requeue", json={"ids": [str(queued.id)]})
    assert (one.status_code, one.json()) == (409, {
        "error": f"task {queued.id}: is queued, not in an error state"})
    both = await api.client.post("/api/requeue", json={"ids": [str(errored.id),
                                                               str(queued.id)]})
    assert (both.status_code, both.json()) == (409, {
        "error": "1 task(s) refused, nothing requeued",
        "refused": [f"task {queued.id}: is queued, not in an error state"]})
    assert await actors(api.sessions, errored.id) == []
    unknown = await api.client.post("/api/requeue", json={"ids": [str(errored.id),
                                                                  "0123456789ab"]})
    assert (unknown.status_code, unknown.json()) == (404, {
        "error": "task 0123456789ab not found"})


async def test_hold_and_release(api: Api) -> None:
    channel, (queued, running, done) = await channel_with(
        api.sessions, TaskStatus.queued, TaskStatus.generating_video, TaskStatus.published)
    plan = await api.client.post("/api/hold", json={"ids": [str(queued.id), str(running.id)],
                                                    "dry_run": True})
    assert len(plan.json()["changed"]) == 2
    assert (await task_row(api.sessions, queued.id)).hold_since is None

    held = await api.client.post("/api/hold", json={"ids": [str(queued.id)],
                                                    "reason": "wrong topic"})
    assert [t["task_id"] for t in held.json()["changed"]] == [str(queued.id)]
    row = await task_row(api.sessions, queued.id)
    assert (row.hold_by, row.hold_reason) == ("api", "wrong topic")
    again = await api.client.post("/api/hold", json={"ids": [str(queued.id)]})
    assert again.json()["changed"] == [] and len(again.json()["unchanged"]) == 1

    finished = await api.client.post("/api/hold", json={"ids": [str(done.id)]})
    assert (finished.status_code, finished.json()) == (409, {
        "error": f"task {done.id} is published: a finished task cannot be held"})
    mixed = await api.client.post("/api/hold", json={"ids": [str(running.id), str(done.id)]})
    assert mixed.status_code == 409 and mixed.json()["error"] == (
        "1 task(s) refused; nothing was held")
    assert (await task_row(api.sessions, running.id)).hold_since is None

    released = await api.client.post("/api/release", json={
        "statuses": ["queued"], "channel": channel.channel_id})
    assert [t["task_id"] for t in released.json()["changed"]] == [str(queued.id)]
    assert (await task_row(api.sessions, queued.id)).hold_since is None


async def test_channel_verbs(api: Api) -> None:
    channel, _ = await channel_with(api.sessions, TaskStatus.queued)
    path = f"/api/channels/{channel.channel_id}"
    plan = await api.client.post(f"{path}/deactivate", json={"dry_run": True})
    assert plan.status_code == 200, plan.text
    assert plan.json()["channel"]["is_active"] is False and plan.json()["dry_run"] is True
    async with api.sessions() as session:
        assert (await session.get(Channel, channel.id)).is_active is True  # type: ignore[union-attr]
    off = await api.client.post(f"{path}/deactivate")
    assert off.json()["message"].startswith(f"channel {channel.channel_id} deactivated")
    async with api.sessions() as session:
        assert (await session.get(Channel, channel.id)).is_active is False  # type: ignore[union-attr]
    on = await api.client.post(f"{path}/activate")
    assert on.json()["channel"]["is_active"] is True and on.json()["channel"]["runnable"] == 1

    capped = await api.client.patch(path, json={"max_concurrent": 3, "channel_name": "Cats"})
    assert capped.json()["message"] == (f"channel {channel.channel_id} updated: 'Cats', "
                                        "at most 3 task(s) active at once")
    trial = await api.client.patch(path, json={"max_concurrent": None, "dry_run": True})
    assert trial.json()["channel"]["max_concurrent"] is None
    listed = {c["channel_id"]: c for c in (await api.client.get("/api/channels")).json()}
    assert listed[channel.channel_id]["max_concurrent"] == 3

    nothing = await api.client.patch(path, json={})
    assert (nothing.status_code, nothing.json()["error"]) == (
        422, f"channel {channel.channel_id!r}: nothing to change"
             " (give channel_name or max_concurrent)")
    zero = await api.client.patch(path, json={"max_concurrent": 0})
    assert zero.status_code == 422 and zero.json()["error"].startswith("max_concurrent: ")
    fresh = f"UC{uuid.uuid4().hex[:10]}"
    trial = await api.client.post("/api/channels", json={"channel_id": fresh,
                                                         "channel_name": "New", "dry_run": True})
    assert trial.status_code == 200, trial.text
    assert fresh not in {c["channel_id"] for c in (await api.client.get("/api/channels")).json()}
    made = await api.client.post("/api/channels", json={"channel_id": fresh,
                                                        "channel_name": "New"})
    assert made.json()["message"] == f"channel {fresh} added"
    taken = await api.client.post("/api/channels", json={"channel_id": fresh,
                                                         "channel_name": "Again"})
    assert (taken.status_code, taken.json()) == (409, {
        "error": f"channel {fresh!r} already exists"})
    unknown = await api.client.post("/api/channels/UC-none/activate")
    assert (unknown.status_code, unknown.json()) == (404, {"error": "channel 'UC-none' not found"})


async def test_a_batch_with_bad_items_lets_the_good_ones_in(api: Api) -> None:
    channel, _ = await channel_with(api.sessions)
    inactive, _ = await channel_with(api.sessions)
    await api.client.post(f"/api/channels/{inactive.channel_id}/deactivate")
    page = uuid.uuid4().hex
    batch = [
        {"notion_page_id": page, "channel": channel.channel_id, "title": "<script>x</script>"},
        {"notion_page_id": uuid.uuid4().hex, "channel": channel.channel_id},
        {"notion_page_id": uuid.uuid4().hex, "channel": "UC-none", "title": "t"},
        "not an object",
        {"notion_page_id": page, "channel": channel.channel_id, "title": "again"},
        {"notion_page_id": uuid.uuid4().hex, "channel": inactive.channel_id, "title": "t"},
        {"notion_page_id": uuid.uuid4().hex, "channel": channel.channel_id, "title": "Draft",
         "status": "draft", "priority": "HIGH"},
    ]
    trial = await api.client.post("/api/tasks", json={"tasks": batch, "dry_run": True})
    assert trial.status_code == 200, trial.text
    assert trial.json()["created"] == 2
    listed = await api.client.get("/api/tasks", params={"channel": channel.channel_id})
    assert listed.json()["tasks"] == []

    answer = await api.client.post("/api/tasks", json={"tasks": batch})
    result = answer.json()
    assert answer.status_code == 200
    assert (result["created"], result["queued"]) == (2, 1)
    assert [(t["index"], t["outcome"], t["status"]) for t in result["tasks"]] == [
        (0, "created", "queued"), (6, "created", "draft")]
    assert [(e["index"], e["field"]) for e in result["errors"]] == [
        (1, "title"), (2, "channel"), (3, "row"), (4, "notion_page_id"), (5, "channel")]
    messages = {e["index"]: e["message"] for e in result["errors"]}
    assert messages[2] == "unknown channel 'UC-none'"
    assert messages[3] == "expected an object, got str"
    assert messages[4] == "duplicate notion_page_id: also on row 1"
    assert messages[5] == f"channel {inactive.channel_id!r} is inactive"
    stored = (await api.client.get("/api/tasks", params={"channel": channel.channel_id})).json()
    assert sorted((t["title"], t["priority"]) for t in stored["tasks"]) == [
        ("<script>x</script>", "normal"), ("Draft", "high")]
    assert (await actors(api.sessions, uuid.UUID(result["tasks"][0]["task_id"]))) == ["api"]

    resent = (await api.client.post("/api/tasks", json={"tasks": batch[:1]})).json()
    assert resent["unchanged"] == 1 and resent["created"] == 0
    bad = await api.client.post("/api/tasks", json={"tasks": [{}] * 1001})
    assert bad.status_code == 422 and bad.json()["error"].startswith("tasks: ")


async def test_bad_bodies_name_the_field(api: Api) -> None:
    for body, error in (
            ({"statuses": ["queued"]}, "statuses.0: queued is not an error state (one of "
                                       "asset_error, video_error, audio_error, upload_error)"),
            ({"ids": ["x"], "statuses": ["video_error"]},
             "give ids or statuses, not both and not neither"),
            ({"ids": ["x"], "bogus": 1}, "bogus: Extra inputs are not permitted"),
            ({"ids": "x"}, "ids: Input should be a valid list")):
        answer = await api.client.post("/api/requeue", json=body)
        assert (answer.status_code, answer.json()["error"]) == (422, error), body
    gate = await api.client.post("/api/approve", json={"gate": "nope"})
    assert gate.json()["error"] == ("gate: unknown gate 'nope' (one of assets, video, audio,"
                                    " final)")
    prefix = await api.client.post("/api/hold", json={"ids": ["abc"]})
    assert (prefix.status_code, prefix.json()["error"]) == (
        422, "task 'abc': an id prefix needs at least 8 hex digits")
    form = await api.client.post("/api/hold", data={"ids": "x"})
    assert (form.status_code, form.json()["error"]) == (
        422, "body: send a JSON object with Content-Type: application/json (not"
             " 'application/x-www-form-urlencoded')")
    nowhere = await api.client.get("/api/nowhere")
    assert (nowhere.status_code, nowhere.json()) == (404, {"error": "Not Found"})


async def test_openapi_documents_every_endpoint(api: Api) -> None:
    schema = (await api.anon.get("/api/openapi.json")).json()
    routes = {(method, path) for path, item in schema["paths"].items() for method in item}
    assert routes >= {
        ("get", "/api/tasks"), ("post", "/api/tasks"), ("get", "/api/tasks/{ref}"),
        ("get", "/api/stats"), ("get", "/api/channels"), ("get", "/api/workers"),
        ("post", "/api/approve"), ("post", "/api/requeue"), ("post", "/api/hold"),
        ("post", "/api/release"), ("post", "/api/channels"),
        ("post", "/api/channels/{channel_id}/activate"),
        ("post", "/api/channels/{channel_id}/deactivate"),
        ("patch", "/api/channels/{channel_id}")}
    for method, path in routes:
        if not path.startswith("/api/"):
            continue
        operation = schema["paths"][path][method]
        assert operation["description"], (method, path)
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert "$ref" in ok or "items" in ok, (method, path)
        assert {"401", "404", "409", "422"} <= set(operation["responses"]), (method, path)
        assert operation["security"] == [{"HTTPBearer": []}], (method, path)
    docs = await api.anon.get("/api/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # Every script and style of the page comes from the app itself, none from a CDN.
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(url.startswith("/api/docs-assets/") for url in assets), assets
    for url in assets:
        assert (await api.anon.get(url)).status_code == 200, url


async def test_without_redis_writes_work_and_the_registry_says_so(api: Api) -> None:
    """Waking the workers is best effort; the worker list cannot be read and says why."""
    _, (task,) = await channel_with(api.sessions, TaskStatus.audio_ready)
    server = await api.servers.start(REDIS_URL="redis://127.0.0.1:1/0")
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers(),
                                 timeout=30) as client:
        approved = await client.post("/api/approve", json={"ids": [str(task.id)]})
        assert approved.status_code == 200, approved.text
        assert (await task_row(api.sessions, task.id)).status is TaskStatus.audio_approved
        listed = await client.get("/api/workers")
        assert listed.status_code == 503
        assert listed.json()["error"].startswith("the worker registry (Redis) cannot be read")
    assert "workers not woken" in server.process.text()


async def test_database_gone_is_503_and_back_is_200(
        own_postgres: OwnServer, redis_url: str, queue: str, tmp_path: Path) -> None:
    """With PostgreSQL stopped a read answers 503 with Retry-After (JSON, no details); once it
    is back the same server answers again."""
    await migrate.upgrade(own_postgres.url)
    servers = Web(tmp_path, {"DATABASE_URL": own_postgres.url, "REDIS_URL": redis_url,
                             "QUEUE_NAME": queue})
    try:
        server = await servers.start()
        async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers(),
                                     timeout=30) as client:
            assert (await client.get("/api/tasks")).status_code == 200
            own_postgres.stop()
            gone = await client.get("/api/tasks")
            assert (gone.status_code, gone.json()) == (503, {
                "error": "the database is unavailable; try again shortly"})
            assert gone.headers["retry-after"] == "5"
            own_postgres.start()

            async def back() -> bool:
                return (await client.get("/api/stats")).status_code == 200

            await eventually(back, timeout_s=30, what="answers once PostgreSQL is back")
    finally:
        servers.stop()
    assert "database unavailable" in server.process.text()


# --- the workers ----------------------------------------------------------------------------


async def test_workers_and_the_wake_after_a_release(
        web: Web, workers: Workers, db: tuple[str, Sessions]) -> None:
    """A live worker is listed with what it holds; releasing a held task through the API
    wakes it (its sweep is a minute away, so only the wake-up can start the task)."""
    _, sessions = db
    _, (held, _running) = await channel_with(sessions, TaskStatus.queued, TaskStatus.queued)
    async with sessions() as session, session.begin():
        await session.execute(sa.update(Task).where(Task.id == held.id).values(
            hold_since=datetime.now(UTC), hold_by="cli:x"))
    worker = workers.start(SIMULATED_STAGE_SECONDS="30", SWEEP_INTERVAL_SECONDS="60",
                           SHUTDOWN_GRACE_SECONDS="0")
    worker_id = await worker.started()
    server = await web.start()
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers(),
                                 timeout=30) as client:
        async def listed() -> list[dict[str, Any]] | None:
            found: list[dict[str, Any]] = (await client.get("/api/workers")).json()
            return found if found and found[0]["holds"] == 1 else None

        found = await eventually(listed, timeout_s=30, what="the worker holding a task")
        assert [(w["id"], w["holds"]) for w in found] == [(worker_id, 1)]
        assert (await status_of(sessions, held.id))[0] is TaskStatus.queued

        answer = await client.post("/api/release", json={"ids": [str(held.id)]})
        assert [t["task_id"] for t in answer.json()["changed"]] == [str(held.id)]

        async def taken() -> bool:
            return (await status_of(sessions, held.id))[1] == worker_id

        await eventually(taken, timeout_s=15, what="the released task claimed")
