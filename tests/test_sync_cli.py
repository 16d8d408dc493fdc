"""``pipeline sync-notion`` as a real process against the fake Notion server: output, exit
codes, configuration errors, and ``--loop`` surviving an outage and stopping on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.db.models import Channel, Task
from app.lifecycle import TaskStatus
from tests import factories
from tests.notion_fake import FakeNotion, rich_text, status, title

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def channel(pg_sessions: async_sessionmaker[AsyncSession]) -> Channel:
    async with session_scope(pg_sessions) as session:
        return await factories.make_channel(session)


def environment(notion: FakeNotion, ds: str, pg_url: str, redis_url: str,
                **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("NOTION_", "DATABASE_URL", "REDIS_URL"))}
    return env | {
        "PYTHONPATH": str(ROOT), "DATABASE_URL": pg_url, "REDIS_URL": redis_url,
        "NOTION_TOKEN": notion.token, "NOTION_DATA_SOURCE_ID": ds,
        "NOTION_BASE_URL": notion.base_url, "NOTION_RATE_PER_SECOND": "100",
        "NOTION_TIMEOUT_SECONDS": "5",
    } | extra


async def start(env: dict[str, str], cwd: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "sync-notion", *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def pipeline(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    process = await start(env, cwd, *args)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def add(notion: FakeNotion, ds: str, channel_id: str, name: str, state: str) -> str:
    page = notion.add_page(ds, {"Title": title(name), "Channel": rich_text(channel_id),
                                "Status": status(state)})
    return str(page["id"]).replace("-", "")


async def test_once_prints_a_summary_and_exits_0(
        notion: FakeNotion, channel: Channel, pg_url: str, redis_url: str, tmp_path: Path,
        pg_sessions: async_sessionmaker[AsyncSession]) -> None:
    ds = notion.add_data_source(str(uuid.uuid4()))
    queued = add(notion, ds, channel.channel_id, "One", "Queued")
    add(notion, ds, channel.channel_id, "Two", "Draft")
    env = environment(notion, ds, pg_url, redis_url)

    code, out, err = await pipeline(env, tmp_path, "--once")

    assert code == 0, err
    assert err == ""  # no per-request logging
    lines = out.splitlines()
    assert lines[0].split() == ["result", "pages"]
    assert {line.split()[0]: int(line.split()[1]) for line in lines[2:]} | {} == {
        "seen": 2, "created": 2, "updated": 0, "unchanged": 0, "queued": 1, "approved": 0,
        "refused": 0, "bad": 0, "pushed": 0, "push_failed": 0}
    async with pg_sessions() as session:
        task_status = await session.scalar(sa.select(Task.status).where(
            Task.notion_page_id == queued))
    assert task_status is TaskStatus.queued

    code, out, err = await pipeline(env, tmp_path, "--once", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["seen"], summary["unchanged"], summary["created"]) == (2, 2, 0)
    assert notion.token not in out + err


async def test_once_exits_1_when_a_page_is_bad(
        notion: FakeNotion, channel: Channel, pg_url: str, redis_url: str,
        tmp_path: Path) -> None:
    ds = notion.add_data_source(str(uuid.uuid4()))
    add(notion, ds, channel.channel_id, "Good", "Draft")
    bad = add(notion, ds, "UCnosuchchannel", "Bad", "Draft")

    code, out, _ = await pipeline(environment(notion, ds, pg_url, redis_url), tmp_path,
                                  "--once")

    assert code == 1
    assert f"page {bad}: Channel: channel 'UCnosuchchannel' not found" in out


@pytest.mark.parametrize("variable", ["NOTION_TOKEN", "NOTION_DATA_SOURCE_ID"])
async def test_missing_configuration_exits_2_naming_the_variable(
        notion: FakeNotion, pg_url: str, redis_url: str, tmp_path: Path,
        variable: str) -> None:
    env = environment(notion, notion.data_source_id, pg_url, redis_url)
    del env[variable]

    code, out, err = await pipeline(env, tmp_path, "--once")

    assert (code, out) == (2, "")
    assert err.strip() == f"pipeline sync-notion: {variable} is not set"


async def test_outage_exits_2_with_one_line_and_unreachable_redis_only_warns(
        notion: FakeNotion, channel: Channel, pg_url: str, tmp_path: Path) -> None:
    ds = notion.add_data_source(str(uuid.uuid4()))
    add(notion, ds, channel.channel_id, "One", "Queued")
    env = environment(notion, ds, pg_url, "redis://127.0.0.1:9/0")

    code, out, err = await pipeline(env, tmp_path, "--once")
    assert code == 0, err
    assert "could not wake the workers" in err

    notion.fail_next(1, 503, path_contains="/query")
    code, out, err = await pipeline(env, tmp_path, "--once")
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == (
        "pipeline sync-notion: Notion failed querying the data source: "
        "503 service_unavailable")
    assert "Traceback" not in err


async def test_loop_survives_an_outage_and_stops_on_sigterm(
        notion: FakeNotion, channel: Channel, pg_url: str, redis_url: str,
        tmp_path: Path) -> None:
    ds = notion.add_data_source(str(uuid.uuid4()))
    add(notion, ds, channel.channel_id, "One", "Draft")
    notion.fail_next(1, 500, path_contains="/query", skip=1)  # the second round fails
    fourth_round = threading.Event()
    notion.on_request(fourth_round.set, path_contains="/query", skip=3)
    env = environment(notion, ds, pg_url, redis_url, NOTION_SYNC_INTERVAL_SECONDS="0.1")

    process = await start(env, tmp_path, "--loop")
    try:
        assert await asyncio.to_thread(fourth_round.wait, 60)
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, err
    assert "500 internal_server_error" in err.decode() and "Traceback" not in err.decode()
    assert [r.status for r in notion.requests_to("/query")][:4] == [200, 500, 200, 200]
