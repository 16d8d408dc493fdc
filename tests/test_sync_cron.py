"""The Notion sync in the workers: registered only when enabled, one round at a time."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis, create_pool
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import session_scope
from app.execution import wakeups
from app.notion import cron as notion_cron
from tests import factories
from tests.notion_fake import FakeNotion, rich_text, status, title
from workers.jobs import periodic_jobs
from workers.settings import worker_options


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(wakeups.redis_settings(redis_url))
    yield pool
    await pool.aclose()


def settings_for(notion: FakeNotion, ds: str, queue: str, **extra: object) -> Settings:
    return Settings(_env_file=None, notion_token=notion.token,  # type: ignore[call-arg]
                    notion_data_source_id=ds, notion_base_url=notion.base_url,
                    notion_rate_per_s=500.0, queue_name=queue, **extra)


def test_sync_job_is_registered_only_when_enabled(settings: Settings) -> None:
    def names(enabled: bool) -> list[str]:
        return [job.name for job in periodic_jobs(
            settings.model_copy(update={"notion_sync_in_worker": enabled}))]

    assert names(False) == ["sweep"]
    assert names(True) == ["sweep", "sync_notion"]
    [job] = [j for j in periodic_jobs(settings.model_copy(
        update={"notion_sync_in_worker": True})) if j.name == "sync_notion"]
    assert job.every_s == 30 and job.at_start    # every 30 s by default, and at start
    assert "cron_jobs" not in worker_options(settings)     # no arq job slot taken


async def test_one_round_at_a_time_and_workers_are_woken(
        notion: FakeNotion, redis: ArqRedis, pg_sessions: async_sessionmaker[AsyncSession],
        unique: str) -> None:
    async with session_scope(pg_sessions) as session:
        channel = await factories.make_channel(session)
    ds = notion.add_data_source(str(uuid.uuid4()))
    notion.add_page(ds, {"Title": title("One"), "Channel": rich_text(channel.channel_id),
                         "Status": status("Queued")})
    queue = f"test:cron:{unique}"
    settings = settings_for(notion, ds, queue)
    in_query, release = threading.Event(), threading.Event()
    notion.on_request(lambda: (in_query.set(), release.wait(10)), path_contains="/query")

    first = asyncio.create_task(notion_cron.sync_round(settings, pg_sessions, redis))
    assert await asyncio.to_thread(in_query.wait, 10)
    second = await notion_cron.sync_round(settings, pg_sessions, redis)  # first holds the lock
    release.set()
    counts = await first

    assert second is None
    assert counts is not None and (counts["created"], counts["queued"]) == (1, 1)
    assert await redis.zcard(queue) == 1
    assert await redis.get(notion_cron.LOCK_KEY) is None  # released
    third = await notion_cron.sync_round(settings, pg_sessions, redis)
    assert third is not None and third["unchanged"] == 1
    await redis.delete(queue)


async def test_a_round_wakes_no_more_workers_than_the_rule_allows(
        notion: FakeNotion, redis: ArqRedis, pg_sessions: async_sessionmaker[AsyncSession],
        unique: str) -> None:
    """Six tasks queued by one round, one slot per worker process: ``wakeups.wanted`` allows
    four wake-ups (``PER_SLOT``), as for an enqueue from the command line."""
    async with session_scope(pg_sessions) as session:
        channel = await factories.make_channel(session)
    ds = notion.add_data_source(str(uuid.uuid4()))
    for n in range(6):
        notion.add_page(ds, {"Title": title(f"Video {n}"),
                             "Channel": rich_text(channel.channel_id),
                             "Status": status("Queued")})
    queue = f"test:cron:{unique}"
    settings = settings_for(notion, ds, queue, worker_concurrency=1)

    counts = await notion_cron.sync_round(settings, pg_sessions, redis)

    assert counts is not None and counts["queued"] == 6
    assert await redis.zcard(queue) == wakeups.wanted(6, 1) == wakeups.PER_SLOT == 4
    await redis.delete(queue)


async def test_an_outage_is_logged_and_the_lock_released(
        notion: FakeNotion, redis: ArqRedis, pg_sessions: async_sessionmaker[AsyncSession],
        unique: str, caplog: pytest.LogCaptureFixture) -> None:
    ds = notion.add_data_source(str(uuid.uuid4()))
    notion.fail_next(1, 500, path_contains="/query")

    result = await notion_cron.sync_round(settings_for(notion, ds, f"test:cron:{unique}"),
                                          pg_sessions, redis)

    assert result is None
    assert "500 internal_server_error" in caplog.text
    assert await redis.get(notion_cron.LOCK_KEY) is None
