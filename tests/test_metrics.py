"""Prometheus metrics from real processes: a ``pipeline serve``'s ``/metrics`` shows the rows
the test wrote (tasks by channel and status, runnable and blocked work, the oldest runnable
task's age, the live workers from the registry) and its own request counters; a ``pipeline
worker`` with ``METRICS_PORT`` counts the stages it ran, by outcome, and its claims and retries.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Channel, Task
from app.errors import NotionUnavailable
from app.execution import registry
from app.lifecycle import STAGES, TaskStatus
from app.services import claims, holds
from tests.notion_fake import FakeNotion
from tests.test_sync import make_world
from tests.webserver import Web, free_port, web
from tests.workerprocs import (
    Sessions,
    Workers,
    db,
    eventually,
    queue,
    seed,
    status_of,
    wait_published,
    workers,
)

__all__ = ["db", "queue", "web", "workers"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and label set."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def _task(channel: Channel, status: TaskStatus, **values: object) -> dict[str, object]:
    return {"id": uuid.uuid4(), "channel_id": channel.id, "notion_page_id": uuid.uuid4().hex,
            "title": "Video", "status": status} | values


async def _rows(sessions: Sessions) -> dict[str, Channel]:
    """Three channels: ``open`` (no cap) with queued work waiting five minutes, one task on
    hold, one at a gate, two published and one error out of attempts; ``capped`` (cap 1) with
    its slot taken and two queued; ``off`` (inactive) with one queued."""
    now = datetime.now(UTC)
    async with sessions() as session, session.begin():
        channels = {name: Channel(channel_id=f"UC{name}-{uuid.uuid4().hex[:6]}",
                                  channel_name=name, **extra)
                    for name, extra in (("open", {}), ("capped", {"max_concurrent": 1}),
                                        ("off", {"is_active": False}))}
        session.add_all(channels.values())
        await session.flush()
        c = channels
        rows: Iterable[dict[str, object]] = [
            *(_task(c["open"], TaskStatus.queued, updated_at=now - timedelta(minutes=5 - n))
              for n in range(3)),
            _task(c["open"], TaskStatus.queued, hold_since=now - timedelta(hours=1),
                  hold_by="cli:test", updated_at=now - timedelta(hours=1)),
            _task(c["open"], TaskStatus.assets_ready, updated_at=now - timedelta(hours=2)),
            *(_task(c["open"], TaskStatus.published) for _ in range(2)),
            _task(c["open"], TaskStatus.video_error, attempts=3, failed_stage="video",
                  updated_at=now - timedelta(hours=3)),
            _task(c["capped"], TaskStatus.generating_video, claimed_by="worker-elsewhere",
                  claim_token=uuid.uuid4(), lease_expires_at=now + timedelta(minutes=5)),
            *(_task(c["capped"], TaskStatus.queued, updated_at=now - timedelta(hours=4))
              for _ in range(2)),
            _task(c["off"], TaskStatus.queued, updated_at=now - timedelta(hours=5)),
        ]
        await session.execute(sa.insert(Task), list(rows))
    return channels


async def test_the_servers_metrics_are_the_rows_as_of_the_scrape(
    db: tuple[str, Sessions], web: Web, redis_url: str, queue: str,
) -> None:
    _, sessions = db
    channels = await _rows(sessions)
    client = Redis.from_url(redis_url)
    record = registry.WorkerRecord("worker-metrics0test", "host", 1, datetime.now(UTC)
                                   .isoformat(), datetime.now(UTC).isoformat(), 4)
    await registry.announce(client, queue, record, heartbeat_s=60)
    server = await web.start()
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers()) as http:
        try:
            first = await http.get("/metrics")
        finally:
            await registry.retire(client, queue, record.id)
            await client.aclose()
        assert first.status_code == 200, first.text
        assert first.headers["content-type"].startswith("text/plain; version=")
        assert (await http.get("/no-such-page")).status_code == 404
        assert (await http.request("BREW", "/metrics")).status_code == 405
        one = (await http.get("/api/tasks", params={"limit": 1})).json()["tasks"][0]
        assert (await http.get(f"/api/tasks/{one['id']}")).status_code == 200
        refused = await http.get("/metrics", headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401, refused.text      # a read: the token is needed
        second = parse((await http.get("/metrics")).text)
    samples = parse(first.text)
    ids = {name: channel.channel_id for name, channel in channels.items()}
    assert named(samples, "pipeline_tasks") == {
        frozenset({("channel", ids[name]), ("status", status)}): count
        for name, status, count in (("open", "queued", 4), ("open", "assets_ready", 1),
                                    ("open", "published", 2), ("open", "video_error", 1),
                                    ("capped", "generating_video", 1), ("capped", "queued", 2),
                                    ("off", "queued", 1))}
    assert value(samples, "pipeline_tasks_runnable") == 3
    blocked = {"on_hold": 1, "inactive_channel": 1, "channel_at_cap": 2}
    assert named(samples, "pipeline_tasks_blocked") == {
        frozenset({("reason", reason)}): blocked.get(reason, 0)
        for reason in claims.BLOCKED_REASONS}
    age = value(samples, "pipeline_oldest_runnable_age_seconds")
    assert age is not None and 300 <= age < 360      # the open channel's oldest, not the rest
    assert value(samples, "pipeline_workers_live") == 1
    # The web process's own counters: the first scrape, the 404 and the refusal, as the last
    # scrape saw them.
    assert value(second, "pipeline_http_requests_total", method="GET", route="/metrics",
                 status="200") == 1
    assert value(second, "pipeline_http_requests_total", method="GET", route="unmatched",
                 status="404") == 1
    assert value(second, "pipeline_http_requests_total", method="GET", route="/metrics",
                 status="401") == 1
    assert [labels for labels in named(second, "pipeline_http_requests_total")
            if ("method", "other") in labels] == [
        frozenset({("method", "other"), ("route", "/metrics"), ("status", "405")})]
    # Routes by their whole template, an included router's prefix too: never a task's id.
    assert value(second, "pipeline_http_requests_total", method="GET", route="/api/tasks",
                 status="200") == 1
    assert value(second, "pipeline_http_requests_total", method="GET",
                 route="/api/tasks/{ref}", status="200") == 1
    assert value(second, "pipeline_http_request_duration_seconds_count", method="GET",
                 route="/metrics") == 2
    assert value(second, "pipeline_workers_live") == 0       # the record was retired


async def test_the_live_boards_streams_and_reads_are_counted(web: Web) -> None:
    """With public reads, ``/metrics`` and the live board need no token; an open board is one
    watcher, until it is closed."""
    server = await web.start(API_PUBLIC_READ="true")
    async with httpx.AsyncClient(base_url=server.base_url) as http:

        async def scraped() -> Samples:
            answer = await http.get("/metrics")
            assert answer.status_code == 200, answer.text
            return parse(answer.text)

        assert value(await scraped(), "pipeline_live_board_watchers") == 0
        async with http.stream("GET", "/events") as stream:
            lines = stream.aiter_lines()        # held: a dropped reader would close the stream
            async for line in lines:
                if line.startswith("event: board"):
                    break                       # subscribed, and the board was read for it
            samples = await scraped()
            assert value(samples, "pipeline_live_board_watchers") == 1
            reads = value(samples, "pipeline_live_board_reads_total")
            assert reads is not None and reads >= 1

        async def closed() -> bool:
            return value(await scraped(), "pipeline_live_board_watchers") == 0

        await eventually(closed, timeout_s=10, what="the closed board no longer watching")


async def test_a_workers_endpoint_counts_its_stages_claims_and_retries(
    db: tuple[str, Sessions], workers: Workers,
) -> None:
    """Four tasks through every stage, one failing its video stage once and one told by its
    provider to wait: the histogram holds four successes of each stage, the failure and the
    rate-limited run; the claims count the retry and the claim after the wait."""
    _, sessions = db
    port = free_port()
    worker = workers.start(METRICS_PORT=str(port))
    await worker.wait_for_line(f"metrics: serving on port {port}")
    await seed(sessions, [None], per_channel=2)
    await seed(sessions, [None], per_channel=1, title="Retried [fail:video:1]")
    await seed(sessions, [None], per_channel=1, title="Waited [ratelimit:video:0.3]")
    await wait_published(sessions, 4, timeout_s=60)

    async def scraped() -> Samples | None:
        async with httpx.AsyncClient() as http:
            found = parse((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
        done = value(found, "pipeline_stage_duration_seconds_count", stage="upload",
                     outcome="success")
        return found if done == 4 else None

    samples = await eventually(scraped, timeout_s=10, what="four uploads counted")
    for stage in STAGES:
        assert value(samples, "pipeline_stage_duration_seconds_count", stage=stage.name,
                     outcome="success") == 4, stage.name
        claims = 6 if stage.name == "video" else 4
        assert value(samples, "pipeline_claims_total", stage=stage.name) == claims, stage.name
    assert named(samples, "pipeline_retries_total") == {frozenset({("stage", "video")}): 1}
    for outcome in ("failure", "rate_limited"):
        assert value(samples, "pipeline_stage_duration_seconds_count", stage="video",
                     outcome=outcome) == 1, outcome
        assert value(samples, "pipeline_stage_duration_seconds_bucket", stage="video",
                     outcome=outcome, le="0.05") == 1      # simulated stages take no time here
    assert named(samples, "pipeline_hand_backs_total") == {frozenset({("stage", "video")}): 1}
    # A second process on the same host and port runs without an endpoint, and says so.
    other = workers.start(METRICS_PORT=str(port))
    await other.wait_for_line(f"metrics: not served on port {port}")
    await other.started()
    assert other.alive


async def test_a_workers_endpoint_counts_hand_backs_and_reaps(
    db: tuple[str, Sessions], workers: Workers,
) -> None:
    """A running stage put on hold is handed back (counted with its time); a task whose holder
    is gone (its lease expired) is reaped by this worker's sweep, and its retry claimed."""
    _, sessions = db
    port = free_port()
    worker = workers.start(METRICS_PORT=str(port), SIMULATED_STAGE_SECONDS="30",
                           LEASE_SECONDS="1.5", WORKER_CONCURRENCY="1")
    worker_id = await worker.started()
    [task_id] = await seed(sessions, [None], per_channel=1)

    async def running() -> bool:
        return await status_of(sessions, task_id) == (TaskStatus.generating_assets, worker_id)

    await eventually(running, timeout_s=30, what="the assets stage running")
    async with sessions() as session, session.begin():
        await holds.hold(session, [task_id], actor="cli:test", reason="metrics",
                         now=datetime.now(UTC))

    async def scraped(name: str, **labels: str) -> Samples | None:
        async with httpx.AsyncClient() as http:
            found = parse((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
        return found if value(found, name, **labels) else None

    samples = await eventually(lambda: scraped("pipeline_hand_backs_total", stage="assets"),
                               timeout_s=15, what="the hand-back counted")
    assert value(samples, "pipeline_hand_backs_total", stage="assets") == 1
    assert value(samples, "pipeline_stage_duration_seconds_count", stage="assets",
                 outcome="handed_back") == 1
    assert not named(samples, "pipeline_reaps_total")
    async with sessions() as session, session.begin():
        channel_id = await session.scalar(sa.select(Task.channel_id).where(Task.id == task_id))
        await session.execute(sa.insert(Task), [{
            "id": uuid.uuid4(), "channel_id": channel_id, "notion_page_id": uuid.uuid4().hex,
            "title": "Orphan", "status": TaskStatus.generating_video, "claimed_by": "worker-gone",
            "claim_token": uuid.uuid4(), "attempts": 1,
            "lease_expires_at": datetime.now(UTC) - timedelta(seconds=5)}])
    samples = await eventually(lambda: scraped("pipeline_retries_total", stage="video"),
                               timeout_s=15, what="the reap and the retry counted")
    assert named(samples, "pipeline_reaps_total") == {
        frozenset({("status", "generating_video")}): 1}
    assert value(samples, "pipeline_claims_total", stage="video") == 1


def _counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_sync_rounds_and_notion_errors_are_counted(
    notion: FakeNotion, pg_sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Against the fake Notion: a round with a bad page, then an outage. (Counted in this
    process's registry, which a worker serves on ``METRICS_PORT``.)"""
    world = await make_world(notion, pg_sessions)
    kinds = ("bad", "refused", "push_failed", "unavailable")
    outcomes = ("ok", "unavailable", "misconfigured", "failed")
    errors = {kind: _counted("pipeline_notion_errors_total", kind=kind) for kind in kinds}
    rounds = {o: _counted("pipeline_sync_rounds_total", outcome=o) for o in outcomes}
    world.page("Good", "Queued")
    world.page("")                                  # no title: refused as input
    assert (await world.sync()).bad == 1
    notion.fail_next(1, 500, path_contains="/query")
    with pytest.raises(NotionUnavailable):
        await world.sync()
    assert {kind: _counted("pipeline_notion_errors_total", kind=kind) - errors[kind]
            for kind in kinds} == {"bad": 1, "refused": 0, "push_failed": 0, "unavailable": 1}
    assert {o: _counted("pipeline_sync_rounds_total", outcome=o) - rounds[o]
            for o in outcomes} == {"ok": 1, "unavailable": 1, "misconfigured": 0, "failed": 0}
