"""The Notion sync against the fake Notion server, through the real notion-client, on a real
database: pull over pages of results, idempotent re-runs, queueing, approvals, refusals written
back, bad pages, outages, the watermark and its overlap, pushes and their rate."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from arq.connections import create_pool
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import session_scope
from app.db.models import Channel, NotionPage, NotionSyncState, Task, TaskEvent
from app.errors import NotionConfigError, NotionUnavailable
from app.execution import wakeups
from app.lifecycle import GATES, LABELS, Gate, PriorityLevel, TaskStatus
from app.notion import client
from app.notion.sync import SyncSummary, Wake, sync_loop, sync_once
from app.services import holds, transitions
from tests import factories
from tests.notion_fake import (
    DEFAULT_SCHEMA,
    PRIORITY_OPTIONS,
    STATUS_OPTIONS,
    FakeNotion,
    PropertySpec,
    RecordedRequest,
    rich_text,
    select,
    status,
    title,
    value_of,
)


def sync_settings(notion: FakeNotion, data_source_id: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "notion_token": notion.token, "notion_data_source_id": data_source_id,
        "notion_base_url": notion.base_url, "notion_rate_per_s": 500.0,
        "notion_timeout_s": 5.0,
    }
    return Settings(_env_file=None, database_url=None, redis_url=None,  # type: ignore[call-arg]
                    **(values | overrides))


def compact(page: Mapping[str, Any]) -> str:
    return str(page["id"]).replace("-", "")


@dataclass
class World:
    """One data source in the fake, one channel in the database, and the sync between them."""

    notion: FakeNotion
    ds: str
    channel: Channel
    sessions: async_sessionmaker[AsyncSession]
    settings: Settings

    def page(self, name: str = "A video", state: str | None = "Draft",
             **props: Any) -> dict[str, Any]:
        values = {"Title": title(name), "Channel": rich_text(self.channel.channel_id),
                  "Status": status(state)} | props
        return self.notion.add_page(self.ds, values)

    async def sync(self, wake: Wake | None = None, **overrides: Any) -> SyncSummary:
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        async with client.connect(settings) as notion:
            return await sync_once(self.sessions, notion, settings, wake=wake)

    async def tasks(self) -> dict[str, Task]:
        async with self.sessions() as session:
            rows = await session.scalars(sa.select(Task).where(
                Task.channel_id == self.channel.id))
            return {task.notion_page_id: task for task in rows}

    async def task(self, page: Mapping[str, Any]) -> Task:
        return (await self.tasks())[compact(page)]

    async def events(self) -> list[TaskEvent]:
        async with self.sessions() as session:
            return list(await session.scalars(
                sa.select(TaskEvent).join(Task, Task.id == TaskEvent.task_id)
                .where(Task.channel_id == self.channel.id).order_by(TaskEvent.id)))

    async def make_task(self, page: Mapping[str, Any], state: TaskStatus,
                        **values: Any) -> Task:
        async with session_scope(self.sessions) as session:
            return await factories.make_task(session, self.channel, state,
                                             notion_page_id=compact(page), **values)

    async def set_columns(self, page: Mapping[str, Any], **values: Any) -> None:
        """A raw UPDATE of bookkeeping columns (as a worker or an admin script would)."""
        async with session_scope(self.sessions) as session:
            await session.execute(sa.update(Task).where(
                Task.notion_page_id == compact(page)).values(**values))

    def queries(self) -> list[RecordedRequest]:
        return self.notion.requests_to(f"/v1/data_sources/{self.ds.replace('-', '')}/query")

    def patches(self) -> list[RecordedRequest]:
        return self.notion.requests_to("/v1/pages/", "PATCH")

    def shows(self, page: Mapping[str, Any], prop: str = "Status") -> str | None:
        return value_of(self.notion.get_page(str(page["id"])), prop)


async def make_world(notion: FakeNotion, sessions: async_sessionmaker[AsyncSession],
                     schema: Mapping[str, PropertySpec | str] | None = None,
                     **overrides: Any) -> World:
    ds = notion.add_data_source(str(uuid.uuid4()), schema)
    async with session_scope(sessions) as session:
        channel = await factories.make_channel(session)
    return World(notion, ds, channel, sessions, sync_settings(notion, ds, **overrides))


@pytest.fixture
async def world(notion: FakeNotion, pg_sessions: async_sessionmaker[AsyncSession]) -> World:
    return await make_world(notion, pg_sessions)


def with_options(name: str, *extra: str) -> dict[str, PropertySpec | str]:
    spec = DEFAULT_SCHEMA[name]
    return {**DEFAULT_SCHEMA, name: PropertySpec(spec.type, (*spec.options, *extra))}


async def link_rows(world: World) -> list[tuple[Any, ...]]:
    async with world.sessions() as session:
        rows = await session.execute(sa.select(NotionPage).join(Task).where(
            Task.channel_id == world.channel.id).order_by(NotionPage.task_id))
        return [(p.task_id, p.status, p.error_len, p.youtube_url, p.updated_at)
                for p in rows.scalars()]


# --- pull -----------------------------------------------------------------------------------


async def test_250_pages_over_three_pages_of_results_then_a_rerun_is_a_no_op(
        world: World) -> None:
    pages = [world.page(f"Video {i}", "Queued" if i % 2 else "Draft",
                        Topic=rich_text(f"topic {i}"), Priority=select("High"))
             for i in range(250)]

    first = await world.sync()

    queries = world.queries()
    assert len(queries) == 3
    assert [bool(q.json.get("start_cursor")) for q in queries] == [False, True, True]
    assert first.counts() == {"seen": 250, "created": 250, "updated": 0, "unchanged": 0,
                              "queued": 125, "approved": 0, "refused": 0, "bad": 0,
                              "pushed": 0, "push_failed": 0}
    tasks = await world.tasks()
    assert len(tasks) == 250
    assert sum(t.status is TaskStatus.queued for t in tasks.values()) == 125
    task = tasks[compact(pages[7])]
    assert (task.title, task.topic, task.priority, task.status) == (
        "Video 7", "topic 7", PriorityLevel.high, TaskStatus.queued)
    events = await world.events()
    assert len(events) == 250 and {e.actor for e in events} == {"notion-sync"}
    assert world.patches() == []

    links_before = await link_rows(world)
    world.notion.clear_requests()
    second = await world.sync()

    assert await link_rows(world) == links_before  # not even a bookkeeping write
    queries = world.queries()
    assert len(queries) == 2
    since = queries[0].json["filter"]["last_edited_time"]["on_or_after"]
    assert since == "2026-11-22T10:02:10.000Z"  # newest page (10:04:10) minus the overlap
    assert second.seen == 121 and second.unchanged == second.seen
    assert second.created == second.updated == second.queued == second.pushed == 0
    assert len(await world.events()) == 250
    assert world.patches() == []


async def test_draft_page_set_to_queued_queues_the_task_and_wakes_workers(
        world: World, redis_url: str, unique: str) -> None:
    page = world.page("Queue me", "Draft")
    queue = f"test:sync:{unique}"

    async def wake(count: int) -> None:
        await wakeups.wake_url(redis_url, count, queue_name=queue)

    created = await world.sync(wake=wake)
    assert (await world.task(page)).status is TaskStatus.draft and created.queued == 0

    world.notion.edit_page(page["id"], {"Status": status("Queued")})
    queued = await world.sync(wake=wake)

    assert (queued.queued, queued.updated) == (1, 1)
    task = await world.task(page)
    assert task.status is TaskStatus.queued
    last = (await world.events())[-1]
    assert (last.from_status, last.to_status, last.actor) == (
        TaskStatus.draft, TaskStatus.queued, "notion-sync")
    redis = await create_pool(wakeups.redis_settings(redis_url))
    try:
        assert await redis.zcard(queue) == 1
    finally:
        await redis.delete(queue)
        await redis.aclose()
    assert world.patches() == []


async def test_pages_are_committed_before_the_workers_are_woken(world: World) -> None:
    page = world.page("Queue me", "Queued")

    async def wake(count: int) -> None:
        raise ConnectionError("redis is down")

    with pytest.raises(ConnectionError):
        await world.sync(wake=wake)
    assert (await world.task(page)).status is TaskStatus.queued  # committed before the wake


@pytest.mark.parametrize("gate", GATES, ids=lambda gate: gate.name)
async def test_approval_in_notion_passes_the_gate_the_task_waits_at(
        world: World, gate: Gate) -> None:
    page = world.page("Review me", LABELS[gate.waiting])
    task = await world.make_task(page, gate.waiting, title="Review me")
    linked = await world.sync()
    assert (linked.unchanged, linked.approved, linked.refused) == (1, 0, 0)

    world.notion.edit_page(page["id"], {"Status": status(LABELS[gate.approved])})
    approved = await world.sync()

    assert (approved.approved, approved.updated, approved.refused) == (1, 1, 0)
    assert (await world.task(page)).status is gate.approved
    [event] = [e for e in await world.events() if e.task_id == task.id]
    assert (event.from_status, event.to_status, event.actor) == (
        gate.waiting, gate.approved, "notion-sync")
    again = await world.sync()
    assert (again.approved, again.unchanged) == (0, 1)
    assert world.patches() == []
    assert world.shows(page) == LABELS[gate.approved]


async def test_status_edits_the_state_machine_refuses_are_written_back(world: World) -> None:
    cases = [  # (task status, what the user sets, part of the reason)
        (TaskStatus.generating_video, "Published", "Generating Video → Published is not"),
        (TaskStatus.generating_assets, "Assets Ready", "only a worker moves"),
        (TaskStatus.assets_ready, "Video Approved", "not waiting for this approval"),
        (TaskStatus.asset_error, "Queued", "Asset Error → Queued is not allowed"),
    ]
    pages = []
    for current, _, _ in cases:
        page = world.page("Busy", LABELS[current])
        await world.make_task(page, current, title="Busy")
        pages.append(page)
    new_page = world.page("Jumping ahead", "Assets Approved")
    assert (await world.sync()).refused == 1  # the new page: tasks start as Draft or Queued
    assert (await world.task(new_page)).status is TaskStatus.draft
    assert world.shows(new_page) == "Draft"

    world.notion.clear_requests()
    for page, (_, asked, _) in zip(pages, cases, strict=True):
        world.notion.edit_page(page["id"], {"Status": status(asked)})
    refused = await world.sync()

    assert (refused.refused, refused.updated, refused.pushed) == (4, 0, 4)
    for page, (current, asked, reason) in zip(pages, cases, strict=True):
        [problem] = [line for line in refused.problems if compact(page) in line]
        assert repr(asked) in problem and reason in problem
        assert f"set back to {LABELS[current]!r}" in problem
        assert (await world.task(page)).status is current
        assert world.shows(page) == LABELS[current]
    assert len(world.patches()) == 4
    assert {e.actor for e in await world.events()} == {"notion-sync"}  # only the creation

    world.notion.clear_requests()
    quiet = await world.sync()
    assert (quiet.refused, quiet.pushed, quiet.updated) == (0, 0, 0)
    assert world.patches() == []


async def test_unknown_status_label_is_refused_once_and_written_back(
        notion: FakeNotion, pg_sessions: async_sessionmaker[AsyncSession]) -> None:
    world = await make_world(notion, pg_sessions, with_options("Status", "Someday"))
    page = world.page("Later", "Queued")
    await world.sync()
    notion.fail_next(1, 503, method="PATCH")  # the write-back fails the first time
    notion.edit_page(page["id"], {"Status": status("Someday")})

    with pytest.raises(NotionUnavailable, match="503"):
        await world.sync()
    assert world.shows(page) == "Someday"
    retried = await world.sync()

    assert (retried.refused, retried.pushed) == (0, 1)  # refused once, pushed when Notion is up
    assert world.shows(page) == "Queued"
    assert (await world.task(page)).status is TaskStatus.queued


async def test_unqueue_in_notion_returns_a_queued_task_to_draft(world: World) -> None:
    page = world.page("Not yet", "Queued")
    await world.sync()
    world.notion.edit_page(page["id"], {"Status": status("Draft")})

    summary = await world.sync()

    assert (summary.updated, summary.refused) == (1, 0)
    assert (await world.task(page)).status is TaskStatus.draft


async def test_bad_pages_are_counted_named_and_the_batch_goes_on(
        notion: FakeNotion, pg_sessions: async_sessionmaker[AsyncSession]) -> None:
    world = await make_world(notion, pg_sessions, with_options("Priority", "Urgent"))
    good = [world.page("Good 1")]
    bad = {  # page -> the property named in the report
        "Title": world.page(""),
        "Title ": world.page("x" * 256),
        "Topic": world.page("Long topic", Topic=rich_text("t" * 501)),
        "Channel": world.page("Unknown channel", Channel=rich_text("UCdoesnotexist")),
        "Channel ": world.page("No channel", Channel=rich_text("")),
        "Channel  ": world.page("Malformed channel", Channel=rich_text("U" * 65)),
        "Priority": world.page("Urgent", Priority=select("Urgent")),
    }
    good.append(world.page("Good 2", "Queued"))

    summary = await world.sync()

    assert (summary.seen, summary.created, summary.bad, summary.queued) == (9, 2, 7, 1)
    assert not summary.clean
    for field, page in bad.items():
        [line] = [p for p in summary.problems if compact(page) in p]
        assert f": {field.strip()}: " in line
    assert set(await world.tasks()) == {compact(page) for page in good}


# --- outages, watermark, overlap ------------------------------------------------------------


async def watermark(world: World) -> Any:
    async with world.sessions() as session:
        return await session.scalar(sa.select(NotionSyncState.watermark).where(
            NotionSyncState.data_source_id == world.ds.replace("-", "")))


@pytest.mark.parametrize("fault", ["500", "timeout"])
async def test_outage_mid_pull_ends_the_run_and_the_next_run_completes(
        world: World, fault: str) -> None:
    for i in range(250):
        world.page(f"Video {i}", "Queued")
    if fault == "500":
        world.notion.fail_next(1, 500, path_contains="/query", skip=1)
    else:
        world.notion.delay_next(1, 3.0, path_contains="/query", skip=1)

    with pytest.raises(NotionUnavailable, match="500" if fault == "500" else "timed out"):
        await world.sync(notion_timeout_s=0.5)

    assert len(await world.tasks()) == 100  # the first page of results, each page whole
    assert await watermark(world) is None
    resumed = await world.sync()
    assert (resumed.created, resumed.unchanged, resumed.queued) == (150, 100, 150)
    assert len(await world.tasks()) == 250 and len(await world.events()) == 250
    assert await watermark(world) is not None


async def test_a_page_edited_during_the_pull_is_not_skipped_and_is_caught_next_run(
        world: World) -> None:
    pages = [world.page(f"Video {i}") for i in range(150)]
    edited = pages[120]  # among the newest 100: read by the first request
    world.notion.on_request(
        lambda: world.notion.edit_page(edited["id"], {"Status": status("Queued")}),
        path_contains="/query", skip=1)

    first = await world.sync()

    assert len(await world.tasks()) == 150  # nothing skipped though positions moved
    assert first.created == 150 and (await world.task(edited)).status is TaskStatus.draft
    second = await world.sync()
    assert second.queued == 1 and (await world.task(edited)).status is TaskStatus.queued


async def test_a_stop_request_ends_the_round_without_moving_the_watermark(
        world: World) -> None:
    for i in range(150):
        world.page(f"Video {i}")
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    world.notion.on_request(lambda: running.call_soon_threadsafe(stop.set),
                            path_contains="/query", skip=1)

    async with client.connect(world.settings) as notion:
        stopped = await sync_once(world.sessions, notion, world.settings, stop=stop)

    assert (stopped.seen, stopped.created) == (100, 100)
    assert await watermark(world) is None
    assert (await world.sync()).created == 50


async def test_loop_rides_out_an_outage_and_ends_on_a_configuration_error(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.page("One", "Queued")
    world.notion.fail_next(1, 500, path_contains="/query")
    settings = world.settings.model_copy(update={"notion_sync_interval_s": 0.05})
    stop, rounds = asyncio.Event(), []

    def on_round(summary: SyncSummary) -> None:
        rounds.append(summary)
        stop.set()

    async with client.connect(settings) as notion:
        await asyncio.wait_for(sync_loop(world.sessions, notion, settings, stop=stop,
                                         on_round=on_round), 30)
    assert [r.status for r in world.queries()] == [500, 200]
    assert len(rounds) == 1 and rounds[0].created == 1
    assert "500 internal_server_error; next round in 0.05s" in caplog.text

    wrong = settings.model_copy(update={"notion_token": "ntn_wrong"})
    async with client.connect(wrong) as notion:
        with pytest.raises(NotionConfigError, match="401"):
            await asyncio.wait_for(sync_loop(world.sessions, notion, wrong,
                                             stop=asyncio.Event()), 30)


@pytest.mark.parametrize("overlap_s", [120.0, 0.0])
async def test_overlap_catches_a_page_that_shows_up_late_with_an_older_edit_time(
        notion: FakeNotion, pg_sessions: async_sessionmaker[AsyncSession],
        overlap_s: float) -> None:
    world = await make_world(notion, pg_sessions, notion_sync_overlap_s=overlap_s)
    world.page("Early")
    newest = world.page("Newest")
    await world.sync()
    # Notion's query index lags: an edit made before the newest one becomes visible only now.
    late = notion.add_page(world.ds, {"Title": title("Late"),
                                      "Channel": rich_text(world.channel.channel_id),
                                      "Status": status("Queued")},
                           last_edited_time="2026-11-22T10:00:01.500Z")
    assert late["last_edited_time"] < newest["last_edited_time"]

    summary = await world.sync()

    caught = compact(late) in await world.tasks()
    assert caught is (overlap_s > 0) and summary.created == int(caught)


async def test_misconfiguration_is_a_config_error_naming_the_cause(world: World) -> None:
    missing = world.settings.model_copy(update={"notion_token": None})
    with pytest.raises(NotionConfigError, match="NOTION_TOKEN"):
        async with client.connect(missing):
            pass
    with pytest.raises(NotionConfigError, match="401"):
        await world.sync(notion_token="ntn_wrong")
    with pytest.raises(NotionConfigError, match="not shared"):
        await world.sync(notion_data_source_id=uuid.uuid4().hex)
    with pytest.raises(NotionConfigError, match="NOTION_PROP_CHANNEL"):
        await world.sync(notion_prop_channel="Kanal")


# --- push -----------------------------------------------------------------------------------


async def pending_pushes(world: World, count: int) -> list[dict[str, Any]]:
    """``count`` linked pages whose tasks then move on (queued → claimed by a raw UPDATE)."""
    pages = [world.page(f"Video {i}", "Queued") for i in range(count)]
    await world.sync()
    for page in pages:
        await world.set_columns(page, status=TaskStatus.claimed)
    world.notion.clear_requests()
    return pages


async def test_push_writes_status_error_line_and_youtube_url_once(world: World) -> None:
    page = world.page("Video", "Queued")
    await world.sync()
    async with session_scope(world.sessions) as session:
        task = await world.task(page)
        for target in (TaskStatus.claimed, TaskStatus.generating_assets,
                       TaskStatus.asset_error):
            await transitions.transition(session, task.id, target, actor="w1",
                                         note=f"boom at {target.value}")
    await world.set_columns(page, youtube_url="https://youtu.be/abc")

    pushed = await world.sync()

    assert pushed.pushed == 1
    assert world.shows(page) == "Asset Error"
    assert world.shows(page, "Error").endswith(  # type: ignore[union-attr]
        "asset_error (from generating_assets): boom at asset_error")
    assert world.shows(page, "YouTube URL") == "https://youtu.be/abc"
    assert (await world.sync()).pushed == 0

    world.notion.edit_page(page["id"], {"Error": rich_text("someone typed here")})
    restored = await world.sync()
    assert (restored.pushed, restored.refused) == (1, 0)
    assert "boom at asset_error" in world.shows(page, "Error")  # type: ignore[operator]
    assert len(world.patches()) == 2


async def test_pushes_are_batched_and_bounded_in_rate(world: World) -> None:
    pages = await pending_pushes(world, 20)

    summary = await world.sync(notion_rate_per_s=10.0, notion_push_batch=5)

    assert summary.pushed == 20
    times = [r.time for r in world.patches()]
    assert len(times) == 20
    # At most 10 requests start in any one second: the 11th comes a second after the 1st.
    assert min(times[i + 10] - times[i] for i in range(len(times) - 10)) > 0.9
    assert all(world.shows(page) == "Claimed" for page in pages)
    assert (await world.sync()).pushed == 0


async def test_429_retry_after_is_honoured(world: World) -> None:
    await pending_pushes(world, 1)
    world.notion.fail_next(1, 429, retry_after=1, method="PATCH")

    summary = await world.sync()

    first, retry = world.patches()
    assert (first.status, retry.status, summary.pushed) == (429, 200, 1)
    assert retry.time - first.time >= 0.95


async def test_failed_push_batch_keeps_what_went_out_and_the_next_run_does_the_rest(
        world: World) -> None:
    pages = await pending_pushes(world, 20)
    world.notion.fail_next(1, 500, method="PATCH", skip=7)  # inside the second batch of 5

    with pytest.raises(NotionUnavailable, match="500"):
        await world.sync(notion_push_batch=5)
    after_outage = [r for r in world.patches() if r.status == 200]
    resumed = await world.sync(notion_push_batch=5)

    assert 7 <= len(after_outage) <= 9 and resumed.pushed == 20 - len(after_outage)
    written = [r.path.rsplit("/", 1)[1] for r in world.patches() if r.status == 200]
    assert sorted(written) == sorted(compact(page) for page in pages)  # each exactly once


async def test_a_page_notion_refuses_to_update_is_reported_once(world: World) -> None:
    pages = await pending_pushes(world, 2)
    world.notion.trash_page(pages[0]["id"])

    summary = await world.sync()

    assert (summary.pushed, summary.push_failed, summary.clean) == (1, 1, False)
    assert compact(pages[0]) in summary.problems[0]
    assert (await world.sync()).push_failed == 0


# --- secrets, dialects ----------------------------------------------------------------------


async def test_token_never_appears_in_logs_or_output(
        world: World, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    page = world.page("Video", "Queued")
    bad = world.page("Bad", Channel=rich_text("UCnope"))
    await world.sync()
    await world.set_columns(page, status=TaskStatus.claimed)
    world.notion.fail_next(1, 429, retry_after=0, method="PATCH")
    await world.sync()
    world.notion.fail_next(1, 500, path_contains="/query")
    with pytest.raises(NotionUnavailable) as outage:
        await world.sync()

    out, err = capsys.readouterr()
    logged = caplog.text + "".join(str(record.args) for record in caplog.records)
    assert world.notion.token not in logged + out + err + str(outage.value)
    assert world.notion.token not in repr(world.settings)
    assert "httpcore" in {record.name.split(".")[0] for record in caplog.records}
    assert compact(bad) in caplog.text  # the logs do carry what matters


async def test_the_sync_on_both_dialects(
        notion: FakeNotion, sessions: async_sessionmaker[AsyncSession]) -> None:
    world = await make_world(notion, sessions)
    draft, other = world.page("One", "Draft"), world.page("Two", "Queued")
    assert (await world.sync()).created == 2
    notion.edit_page(draft["id"], {"Status": status("Queued")})
    notion.edit_page(other["id"], {"Status": status("Published")})

    summary = await world.sync()

    assert (summary.queued, summary.refused, summary.pushed) == (1, 1, 1)
    assert world.shows(other) == "Queued"
    assert (await world.sync()).counts()["unchanged"] == 2
    assert await watermark(world) is not None


def test_fake_status_options_are_our_labels() -> None:
    assert tuple(LABELS.values()) == STATUS_OPTIONS
    assert tuple(p.value.title() for p in PriorityLevel) == PRIORITY_OPTIONS


async def test_push_shows_a_hold_on_the_page_when_a_hold_property_is_named(
        notion: FakeNotion, pg_sessions: async_sessionmaker[AsyncSession]) -> None:
    world = await make_world(notion, pg_sessions,
                             {**DEFAULT_SCHEMA, "On Hold": PropertySpec("rich_text")},
                             notion_prop_hold="On Hold")
    page = world.page("Video", "Queued")
    await world.sync()
    task = await world.task(page)
    async with session_scope(world.sessions) as session:
        await holds.hold(session, [task.id], actor="cli:ops", reason="wrong voice",
                         now=transitions.utcnow())
    assert (await world.sync()).pushed == 1
    shown = world.shows(page, "On Hold")
    assert shown is not None and shown.startswith("On hold since ")
    assert shown.endswith("by cli:ops: wrong voice")
    assert world.shows(page) == "Queued"
    assert (await world.sync()).pushed == 0
    async with session_scope(world.sessions) as session:
        await holds.release(session, [task.id], actor="cli:ops", reason=None,
                            now=transitions.utcnow())
    assert (await world.sync()).pushed == 1
    assert not world.shows(page, "On Hold")

    missing = await make_world(notion, pg_sessions, notion_prop_hold="On Hold")
    with pytest.raises(NotionConfigError, match="NOTION_PROP_HOLD"):
        await missing.sync()
