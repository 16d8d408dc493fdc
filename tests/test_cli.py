"""The ``pipeline`` console script, run as a real subprocess against a database of its own.

Each test reads the outcome back from PostgreSQL (and Redis for wake-ups), not only from the
command's output; expected errors must be one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.db.models import Channel, Task, TaskEvent
from app.lifecycle import STAGE_BY_NAME, TaskStatus
from app.services import transitions
from tests import dbtools
from tests.factories import make_channel, make_task, page_id

Sessions = async_sessionmaker[AsyncSession]
PIPELINE = Path(sys.executable).with_name("pipeline")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Cli:
    url: str
    redis_url: str
    queue: str
    sessions: Sessions

    def __call__(self, *args: str, env: dict[str, str] | None = None,
                 stdin: str | None = None) -> Result:
        full = os.environ | {"DATABASE_URL": self.url, "REDIS_URL": self.redis_url,
                             "QUEUE_NAME": self.queue} | (env or {})
        done = subprocess.run([str(PIPELINE), *args], env=full, capture_output=True,
                              text=True, timeout=120, input=stdin)
        return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
async def cli(pg_server_url: str, redis_url: str, settings: Settings) -> AsyncIterator[Cli]:
    async with dbtools.scratch_database(pg_server_url, migrate=True) as url:
        engine = make_engine(settings, url)
        yield Cli(url, redis_url, f"test:{uuid.uuid4().hex[:8]}", make_sessionmaker(engine))
        await engine.dispose()


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.code == 2, result
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert lines and lines[-1].startswith("pipeline"), result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


def channel_id() -> str:
    return f"UC{uuid.uuid4().hex[:12]}"


async def _tasks(cli: Cli, **where: Any) -> list[Task]:
    async with cli.sessions() as session:
        return list(await session.scalars(sa.select(Task).filter_by(**where)
                                          .order_by(Task.created_at)))


async def _events(cli: Cli, task_id: uuid.UUID) -> list[TaskEvent]:
    async with cli.sessions() as session:
        return list(await session.scalars(sa.select(TaskEvent).where(TaskEvent.task_id == task_id)
                                          .order_by(TaskEvent.id)))


# --- channels -----------------------------------------------------------------------------------


def test_channel_add_list_deactivate(cli: Cli) -> None:
    cid = channel_id()
    added = cli("channel", "add", "--channel-id", cid, "--name", "Science", "--max-concurrent",
                "2", "--json")
    assert added.code == 0, added
    assert added.json()["channel_id"] == cid and added.json()["max_concurrent"] == 2
    listed = cli("channel", "list")
    line = next(line for line in listed.out.splitlines() if line.startswith(cid))
    assert "Science" in line and "yes" in line
    assert_one_line_error(cli("channel", "add", "--channel-id", cid, "--name", "Again"),
                          "already exists")
    assert_one_line_error(cli("channel", "add", "--channel-id", channel_id(), "--name", "X",
                              "--max-concurrent", "0"), "max_concurrent")
    assert cli("channel", "deactivate", cid).code == 0
    listing = {c["channel_id"]: c for c in cli("channel", "list", "--json").json()}
    assert listing[cid]["is_active"] is False
    assert_one_line_error(cli("channel", "deactivate", "UCnope"), "'UCnope' not found")


async def test_channel_activate_update_remove(cli: Cli) -> None:
    """A deactivated channel comes back, a cap changes both ways, and a channel is removed only
    while it has no tasks (never cascaded)."""
    cid, empty = channel_id(), channel_id()
    assert cli("channel", "add", "--channel-id", cid, "--name", "Science",
               "--max-concurrent", "1").code == 0
    assert cli("channel", "add", "--channel-id", empty, "--name", "Spare").code == 0
    async with cli.sessions() as session, session.begin():
        owner = await session.scalar(sa.select(Channel).where(Channel.channel_id == cid))
        assert owner is not None
        task = await make_task(session, owner)
    assert cli("channel", "deactivate", cid).code == 0

    back = cli("channel", "activate", cid, "--json")
    assert back.code == 0, back
    assert back.json()["is_active"] is True and back.json()["runnable"] == 1
    assert "1 task(s) of it can be claimed" in cli("channel", "activate", cid).out

    assert cli("channel", "update", cid, "--max-concurrent", "3", "--json").json()[
        "max_concurrent"] == 3
    unlimited = cli("channel", "update", cid, "--no-limit", "--name", "Science II", "--json")
    assert unlimited.json()["max_concurrent"] is None
    assert unlimited.json()["channel_name"] == "Science II"
    listing = {c["channel_id"]: c for c in cli("channel", "list", "--json").json()}
    assert listing[cid]["max_concurrent"] is None and listing[cid]["is_active"] is True
    assert_one_line_error(cli("channel", "update", cid), "nothing to change")
    assert_one_line_error(cli("channel", "update", cid, "--max-concurrent", "0"),
                          "max_concurrent")
    assert_one_line_error(cli("channel", "update", cid, "--name", "  "), "channel_name")
    both = cli("channel", "update", cid, "--max-concurrent", "2", "--no-limit")
    assert both.code == 2 and "not allowed with argument" in both.err
    assert_one_line_error(cli("channel", "activate", "UCnope"), "'UCnope' not found")

    assert_one_line_error(cli("channel", "remove", cid), "has 1 task(s)", "deactivate it")
    assert (await _tasks(cli, id=task.id))[0].channel_id == owner.id
    gone = cli("channel", "remove", empty, "--json")
    assert gone.code == 0 and gone.json() == {"channel_id": empty, "removed": True}
    remaining = {c["channel_id"] for c in cli("channel", "list", "--json").json()}
    assert empty not in remaining and cid in remaining
    assert_one_line_error(cli("channel", "remove", empty), "not found")


# --- enqueue ------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = ["notion_page_id", "title", "channel", "priority", "topic", "story_direction",
               "status"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


async def test_enqueue_csv_reports_bad_rows_and_imports_the_rest(cli: Cli, tmp_path: Path,
                                                               ) -> None:
    cid, off = channel_id(), channel_id()
    assert cli("channel", "add", "--channel-id", cid, "--name", "Good").code == 0
    assert cli("channel", "add", "--channel-id", off, "--name", "Off").code == 0
    assert cli("channel", "deactivate", off).code == 0
    good = [page_id() for _ in range(3)]
    rows = [
        {"notion_page_id": good[0], "title": "One", "channel": cid, "priority": "High"},
        {"notion_page_id": page_id(), "title": "", "channel": cid},                  # 2
        {"notion_page_id": "not-a-page", "title": "Bad id", "channel": cid},         # 3
        {"notion_page_id": page_id(), "title": "Who", "channel": "UCunknown"},       # 4
        {"notion_page_id": page_id(), "title": "x" * 256, "channel": cid},           # 5
        {"notion_page_id": page_id(), "title": "Urgent", "channel": cid,
         "priority": "urgent"},                                                       # 6
        {"notion_page_id": good[1], "title": "Two\nlines", "channel": cid,
         "story_direction": "calm,\nslow"},
        {"notion_page_id": page_id(), "title": "Off", "channel": off},               # 8
        {"notion_page_id": good[2], "title": "Later", "channel": cid, "status": "draft"},
    ]
    path = _write_csv(tmp_path / "tasks.csv", rows)
    first = cli("enqueue", str(path))
    assert first.code == 2
    assert "Traceback" not in first.err
    for expected in ("row 2: title:", "row 3: notion_page_id:", "row 4: channel: unknown",
                     "row 5: title:", "row 6: priority:", "row 8: channel:"):
        assert expected in first.err, first.err
    imported = {t.notion_page_id: t for t in await _tasks(cli)}
    assert set(good) <= set(imported)
    assert imported[good[0]].status is TaskStatus.queued
    assert imported[good[0]].priority.value == "high"
    assert imported[good[1]].story_direction == "calm,\nslow"
    assert imported[good[2]].status is TaskStatus.draft
    before = {t.id: len(await _events(cli, t.id)) for t in imported.values()}

    again = cli("enqueue", str(path), "--json")
    assert again.code == 2
    summary = again.json()
    assert (summary["created"], summary["updated"], summary["unchanged"], summary["bad"]) == (
        0, 0, 3, 6)
    assert {(e["row"], e["field"]) for e in summary["errors"]} >= {(2, "title"), (6, "priority")}
    after = {t.id: len(await _events(cli, t.id)) for t in await _tasks(cli)
             if t.id in before}
    assert after == before                       # a re-run writes no history


async def test_enqueue_json_queues_a_draft_and_wakes_workers(cli: Cli, tmp_path: Path) -> None:
    cid = channel_id()
    cli("channel", "add", "--channel-id", cid, "--name", "Json")
    draft, fresh = page_id(), page_id()
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([
        {"notion_page_id": draft, "title": "Draft first", "channel": cid, "status": "draft"},
        {"notion_page_id": fresh, "title": "Fresh", "channel": cid, "topic": "Bees"}]))
    assert cli("enqueue", str(path)).code == 0
    redis = Redis.from_url(cli.redis_url)
    try:
        await redis.delete(cli.queue)
        path.write_text(json.dumps([
            {"notion_page_id": draft, "title": "Draft first", "channel": cid}]))
        result = cli("enqueue", str(path), "--json")
        assert result.code == 0, result
        assert result.json()["queued"] == 1
        assert await redis.zcard(cli.queue) == 1          # one wake-up, after the commit
    finally:
        await redis.aclose()
    (task,) = await _tasks(cli, notion_page_id=draft)
    assert task.status is TaskStatus.queued
    assert [e.to_status for e in await _events(cli, task.id)] == [TaskStatus.draft,
                                                                  TaskStatus.queued]


async def test_enqueue_reads_stdin_and_drops_extra_columns_when_asked(cli: Cli) -> None:
    """``enqueue -`` reads standard input; a spreadsheet export's extra columns are refused
    unless ``--ignore-extra-columns``, which names what it dropped; a null priority is the
    default one."""
    cid = channel_id()
    assert cli("channel", "add", "--channel-id", cid, "--name", "Exports").code == 0
    pages = [page_id() for _ in range(3)]
    export = (f"notion_page_id,title,channel,Created by,Tags\n"
              f"{pages[0]},From a sheet,{cid},Ana,space\n")
    assert_one_line_error(cli("enqueue", "-", stdin=export), "unknown CSV column(s) Created by",
                          "--ignore-extra-columns", "nothing imported")
    taken = cli("enqueue", "-", "--ignore-extra-columns", "--json", stdin=export)
    assert taken.code == 0, taken
    assert taken.json()["created"] == 1 and "ignored column(s): Created by, Tags" in taken.err
    doc = json.dumps([{"notion_page_id": pages[1], "title": "Null priority", "channel": cid,
                       "priority": None, "owner": "x"},
                      {"notion_page_id": pages[2], "title": "High", "channel": cid,
                       "priority": "HIGH"}])
    assert "owner" in cli("enqueue", "-", stdin=doc).err
    loaded = cli("enqueue", "-", "--ignore-extra-columns", "--json", stdin=doc)
    assert loaded.code == 0, loaded
    by_page = {t.notion_page_id: t for t in await _tasks(cli)}
    assert by_page[pages[1]].priority.value == "normal"
    assert by_page[pages[2]].priority.value == "high"
    assert by_page[pages[0]].title == "From a sheet"


def test_enqueue_refuses_unreadable_files(cli: Cli, tmp_path: Path) -> None:
    assert_one_line_error(cli("enqueue", str(tmp_path / "missing.csv")), "missing.csv")
    (tmp_path / "obj.json").write_text('{"title": "x"}')
    assert_one_line_error(cli("enqueue", str(tmp_path / "obj.json")), "JSON array")
    (tmp_path / "broken.json").write_text('[{"title": ')
    assert_one_line_error(cli("enqueue", str(tmp_path / "broken.json")), "invalid JSON")
    (tmp_path / "cols.csv").write_text("notion_page_id,title,channel,colour\n")
    assert_one_line_error(cli("enqueue", str(tmp_path / "cols.csv")), "colour")


async def test_enqueue_thousands_of_rows_shows_progress(cli: Cli, tmp_path: Path) -> None:
    cid = channel_id()
    cli("channel", "add", "--channel-id", cid, "--name", "Bulk")
    rows = [{"notion_page_id": page_id(), "title": f"Bulk {n}", "channel": cid}
            for n in range(2000)]
    result = cli("enqueue", str(_write_csv(tmp_path / "bulk.csv", rows)), "--json")
    assert result.code == 0, result.err
    assert result.json()["created"] == 2000
    progress = [line for line in result.err.splitlines() if line.startswith("enqueue [")]
    assert len(progress) == 10 and progress[-1].split("]")[1].startswith(" 2000/2000")
    stats = cli("stats", "--json").json()
    assert stats["by_channel"][cid] == {"queued": 2000}
    listed = cli("list", "--channel", cid)
    assert len(listed.out.splitlines()) == 2 + 100 + 1 and "--limit N for more" in listed.out
    assert len(cli("list", "--channel", cid, "--limit", "5", "--json").json()) == 5


# --- approve and requeue ------------------------------------------------------------------------


async def _task_in(cli: Cli, channel: str | None, status: TaskStatus, **kw: Any) -> uuid.UUID:
    async with cli.sessions() as session, session.begin():
        owner = await make_channel(session, **({"channel_id": channel} if channel else {}))
        task = await make_task(session, owner, status, **kw)
    return task.id


async def _failed(cli: Cli, stage: str, channel: str | None = None) -> uuid.UUID:
    """A task whose ``stage`` failed, walked through the real edge so its history says so."""
    st = STAGE_BY_NAME[stage]
    task_id = await _task_in(cli, channel, st.active, attempts=3)
    async with cli.sessions() as session, session.begin():
        await transitions.transition(session, task_id, st.error, actor="worker-x", note="boom")
    return task_id


async def test_approve(cli: Cli) -> None:
    task_id = await _task_in(cli, None, TaskStatus.video_ready)
    wrong = cli("approve", str(task_id), "--gate", "audio")
    assert_one_line_error(wrong, "not waiting at audio_ready")
    passed = cli("approve", str(task_id), "--gate", "assets", "--json")
    assert passed.code == 0 and passed.json()["already_approved"][0]["gate"] == "assets"
    ok = cli("approve", str(task_id), "--gate", "video", "--note", "looks good", "--json")
    assert ok.code == 0, ok
    assert ok.json() == {"task_id": str(task_id), "from": "video_ready", "to": "video_approved"}
    last = (await _events(cli, task_id))[-1]
    assert (last.to_status, last.note) == (TaskStatus.video_approved, "looks good")
    assert last.actor.startswith("cli")
    again = cli("approve", str(task_id), "--gate", "video")       # a script re-run
    assert again.code == 0 and "already past their gate" in again.out
    assert len(await _events(cli, task_id)) == 1
    assert_one_line_error(cli("approve", str(task_id)), "not waiting at a review gate")
    assert_one_line_error(cli("approve", str(uuid.uuid4())), "not found")
    assert_one_line_error(cli("approve", "nonsense"), "not a task id")
    for usage in (cli("approve"), cli("approve", "--channel", "UCx")):
        assert usage.code == 2 and usage.err.startswith("usage: pipeline approve"), usage


async def test_bulk_approve_by_gate_and_channel(cli: Cli) -> None:
    """Every task at a gate (of one channel), previewed, then approved; re-running reports the
    tasks already past it; a task short of the gate among named ones is refused, the rest
    pass."""
    cid = channel_id()
    async with cli.sessions() as session, session.begin():
        mine = await make_channel(session, channel_id=cid)
        other = await make_channel(session)
        at_gate = [(await make_task(session, mine, TaskStatus.assets_ready)).id for _ in range(3)]
        elsewhere = (await make_task(session, other, TaskStatus.assets_ready)).id
        short = (await make_task(session, mine, TaskStatus.generating_assets)).id

    preview = cli("approve", "--gate", "assets", "--channel", cid, "--dry-run", "--json")
    assert preview.code == 0, preview
    assert {t["task_id"] for t in preview.json()["approved"]} == {str(t) for t in at_gate}
    assert {t.status for t in await _tasks(cli, channel_id=mine.id)} == {
        TaskStatus.assets_ready, TaskStatus.generating_assets}

    done = cli("approve", "--gate", "assets", "--channel", cid, "--note", "batch")
    assert done.code == 0, done
    assert "3 task(s) approved, 0 already past their gate, 0 refused" in done.out
    for task_id in at_gate:
        assert (await _tasks(cli, id=task_id))[0].status is TaskStatus.assets_approved
        assert (await _events(cli, task_id))[-1].note == "batch"
    assert (await _tasks(cli, id=elsewhere))[0].status is TaskStatus.assets_ready

    rerun = cli("approve", *map(str, at_gate), "--gate", "assets", "--json")
    assert rerun.code == 0 and len(rerun.json()["already_approved"]) == 3
    mixed = cli("approve", str(elsewhere), str(short), "--json")
    assert mixed.code == 2
    assert [t["task_id"] for t in mixed.json()["approved"]] == [str(elsewhere)]
    assert mixed.json()["refused"] and "generating_assets" in mixed.err
    assert (await _tasks(cli, id=short))[0].status is TaskStatus.generating_assets


async def test_requeue_dry_run_changes_nothing_then_requeue_records_reason(cli: Cli) -> None:
    video, sfx = await _failed(cli, "video"), await _failed(cli, "sfx")
    before = [len(await _events(cli, t)) for t in (video, sfx)]
    dry = cli("requeue", str(video), str(sfx), "--dry-run")
    assert dry.code == 0, dry
    rows = {line.split()[0]: line.split() for line in dry.out.splitlines()[2:4]}
    assert rows[str(video)][1:4] == ["video_error", "video", "generating_video"]
    assert rows[str(sfx)][1:4] == ["audio_error", "sfx", "generating_sfx"]
    assert "nothing changed" in dry.out
    assert [len(await _events(cli, t)) for t in (video, sfx)] == before

    done = cli("requeue", str(video), str(sfx), "--reason", "voice model fixed", "--json")
    assert done.code == 0, done
    assert {t["resumes_at"] for t in done.json()["tasks"]} == {"generating_video",
                                                               "generating_sfx"}
    for task_id, status in ((video, TaskStatus.video_error), (sfx, TaskStatus.audio_error)):
        (task,) = await _tasks(cli, id=task_id)
        assert task.status is status and task.attempts == 0 and task.retry_at is not None
        last = (await _events(cli, task_id))[-1]
        assert (last.from_status, last.to_status) == (status, status)
        assert last.actor.startswith("cli") and "voice model fixed" in (last.note or "")


async def test_requeue_refuses_tasks_not_in_error_by_name_and_changes_nothing(cli: Cli) -> None:
    failed = await _failed(cli, "upload")
    queued = await _task_in(cli, None, TaskStatus.queued)
    missing = uuid.uuid4()
    result = cli("requeue", str(failed), str(queued), str(missing))
    assert_one_line_error(result, f"task {queued}: is queued, not in an error state",
                          f"task {missing} not found", "nothing requeued")
    (task,) = await _tasks(cli, id=failed)
    assert task.attempts == 3                               # untouched
    assert_one_line_error(cli("requeue"), "TASKs or --status")
    assert_one_line_error(cli("requeue", "--status", "queued"), "invalid choice")


async def test_bulk_requeue_by_status_and_channel(cli: Cli) -> None:
    cid, other = channel_id(), channel_id()
    async with cli.sessions() as session, session.begin():
        mine = await make_channel(session, channel_id=cid)
        await make_channel(session, channel_id=other)
    async with cli.sessions() as session, session.begin():
        for _ in range(250):
            await make_task(session, mine, TaskStatus.asset_error, attempts=3)
    elsewhere = await _failed(cli, "assets", channel=None)
    result = cli("requeue", "--status", "asset_error", "video_error", "--channel", cid,
                 "--reason", "bulk", "--json")
    assert result.code == 0, result.err
    assert result.json()["count"] == 250
    assert sum(1 for line in result.err.splitlines() if line.startswith("requeue [")) == 10
    requeued = await _tasks(cli, channel_id=mine.id)
    assert all(t.attempts == 0 and t.retry_at is not None for t in requeued)
    (untouched,) = await _tasks(cli, id=elsewhere)
    assert untouched.attempts == 3


# --- list, show, stats --------------------------------------------------------------------------


async def test_list_show_stats(cli: Cli) -> None:
    cid = channel_id()
    queued = await _task_in(cli, cid, TaskStatus.queued, title="Queued one")
    errored = await _failed(cli, "audio")
    listed = cli("list", "--channel", cid, "--json").json()
    assert [t["id"] for t in listed] == [str(queued)]
    assert listed[0]["channel"] == cid
    text = cli("list", "--status", "audio_error")
    assert str(errored) in text.out and str(queued) not in text.out
    shown = cli("show", str(errored))
    assert shown.code == 0
    assert "audio_error (Audio Error)" in shown.out and "worker-x" in shown.out
    detail = cli("show", str(errored), "--json").json()
    assert [e["to_status"] for e in detail["events"]] == ["audio_error"]
    stats = cli("stats", "--json").json()
    assert stats["by_channel"][cid] == {"queued": 1}
    assert stats["queued"] >= 1 and stats["oldest_queued_age_seconds"] >= 0
    assert stats["runnable"] >= stats["queued"]
    human = cli("stats").out
    assert cid in human and "oldest queued" in human
    assert_one_line_error(cli("show", str(uuid.uuid4())), "not found")
    assert_one_line_error(cli("list", "--channel", "UCnobody"), "not found")


async def test_tasks_are_found_by_prefix_or_page_id(cli: Cli) -> None:
    """``show``, ``approve`` and ``requeue`` take an id, a unique prefix of it or the Notion page
    id; an ambiguous or too short prefix is one line naming the problem."""
    cid = channel_id()
    twin = uuid.uuid4().hex[:8]
    first = await _task_in(cli, cid, TaskStatus.assets_ready,
                           id=uuid.UUID(twin + "0" * 24), title="Twin A")
    await _task_in(cli, None, TaskStatus.queued, id=uuid.UUID(twin + "f" * 24), title="Twin B")
    page = page_id()
    waiting = await _task_in(cli, None, TaskStatus.video_ready, notion_page_id=page)
    failed = await _failed(cli, "video")

    dashed = f"{page[:8]}-{page[8:12]}-{page[12:16]}-{page[16:20]}-{page[20:]}".upper()
    for ref in (str(waiting), waiting.hex, page, dashed, str(waiting)[:13]):
        assert cli("show", ref, "--json").json()["id"] == str(waiting), ref
    assert cli("show", twin + "0", "--json").json()["id"] == str(first)
    assert_one_line_error(cli("show", twin), "ambiguous", str(first), "more characters")
    assert_one_line_error(cli("show", twin[:7]), "at least 8 hex digits")
    assert_one_line_error(cli("show", "not-a-task"), "hex digits")
    assert_one_line_error(cli("show", uuid.uuid4().hex[:10]), "not found")

    approved = cli("approve", dashed, "--json")
    assert approved.code == 0, approved
    assert approved.json() == {"task_id": str(waiting), "from": "video_ready",
                               "to": "video_approved"}
    requeued = cli("requeue", str(failed)[:8 + 1 + 4], "--json")
    assert requeued.code == 0, requeued
    assert [t["task_id"] for t in requeued.json()["tasks"]] == [str(failed)]
    assert (await _tasks(cli, id=failed))[0].retry_at is not None     # due again
    refused = cli("requeue", str(failed), twin)
    assert refused.code == 2 and "ambiguous" in refused.err


async def test_list_searches_sorts_and_pages(cli: Cli) -> None:
    cid = channel_id()
    ids = [await _task_in(cli, cid if n == 0 else None, TaskStatus.queued,
                          title=f"Volcanoes 100% {n}") for n in range(3)]
    async with cli.sessions() as session, session.begin():
        owner = (await _tasks(cli, id=ids[0]))[0].channel_id
        channel = await session.get(Channel, owner)
        assert channel is not None
        later = transitions.utcnow() + timedelta(seconds=1)
        more = [(await make_task(session, channel, title=f"Deep sea {n}",
                                 created_at=later + timedelta(seconds=n))).id for n in range(4)]
    page = (await _tasks(cli, id=more[2]))[0].notion_page_id

    found = cli("list", "--search", "VOLCANOES 100%", "--json").json()
    assert [t["id"] for t in found] == [str(i) for i in ids]
    assert cli("list", "--search", "100_", "--json").json() == []     # no wildcards
    assert [t["id"] for t in cli("list", "--page-id", page.upper(), "--json").json()] == [
        str(more[2])]
    newest = cli("list", "--channel", cid, "--sort", "newest", "--json").json()
    assert [t["id"] for t in newest] == [str(i) for i in [*more[::-1], ids[0]]]
    pages = [cli("list", "--channel", cid, "--limit", "2", "--offset", str(k), "--json").json()
             for k in (0, 2, 4)]
    assert [t["id"] for p in pages for t in p] == [str(i) for i in [ids[0], *more]]
    text = cli("list", "--channel", cid, "--limit", "2", "--offset", "2").out
    assert "tasks 3 to 4 shown; --offset 4 for the next page" in text
    assert cli("list", "--offset", "-1").code == 2


async def test_stats_separates_retries_from_errors_that_need_a_person(cli: Cli) -> None:
    before = cli("stats", "--json").json()["errors"]
    soon = transitions.utcnow() + timedelta(minutes=5)
    retrying = await _task_in(cli, None, TaskStatus.video_error, retry_at=soon, attempts=1)
    await _task_in(cli, None, TaskStatus.upload_error, attempts=3)        # no retry left
    after = cli("stats", "--json").json()["errors"]
    assert after["retrying"] == before["retrying"] + 1
    assert after["out_of_attempts"] == before["out_of_attempts"] + 1
    assert after["next_retry_at"] is not None
    human = cli("stats").out
    assert "retrying" in human and "waiting for a person (pipeline requeue)" in human
    shown = cli("list", "--status", "video_error").out
    line = next(row for row in shown.splitlines() if row.startswith(str(retrying)))
    assert f"{soon:%Y-%m-%d %H:%M}" in line


async def test_prune_removes_old_published_tasks_and_history_in_batches(cli: Cli) -> None:
    """Published tasks past the horizon go with their events, in batches that each commit
    (progress on stderr); a live task keeps its row and loses only old events; a dry run
    counts and changes nothing."""
    old = transitions.utcnow() - timedelta(days=40)
    async with cli.sessions() as session, session.begin():
        channel = await make_channel(session)
        live = await make_task(session, channel, TaskStatus.queued)
        recent = await make_task(session, channel, TaskStatus.published,
                                 published_at=transitions.utcnow())
        await session.execute(sa.text(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status, published_at)"
            " SELECT :c, md5(:salt || g), 'Old ' || g, 'published', :old"
            " FROM generate_series(1, 2500) g"), {"c": channel.id, "salt": page_id(), "old": old})
        await session.execute(sa.text(
            "INSERT INTO task_events (task_id, from_status, to_status, actor, created_at)"
            " SELECT id, 'uploading', 'published', 'w', :old FROM tasks"
            " WHERE channel_id = :c AND status = 'published' AND published_at = :old"),
            {"c": channel.id, "old": old})
        session.add_all([TaskEvent(task_id=live.id, from_status=TaskStatus.draft,
                                   to_status=TaskStatus.queued, actor="cli", created_at=old),
                         TaskEvent(task_id=live.id, from_status=TaskStatus.queued,
                                   to_status=TaskStatus.queued, actor="cli", note="recent")])

    preview = cli("prune", "--older-than", "30d", "--dry-run", "--json").json()
    assert (preview["tasks"], preview["task_events"]) == (2500, 2500)
    assert preview["older_events"] >= 1
    assert len(await _tasks(cli, channel_id=channel.id)) == 2502

    first = cli("prune", "--older-than", "30d", "--published-only", "--json")
    assert first.code == 0, first
    assert (first.json()["tasks"], first.json()["task_events"], first.json()["older_events"]) \
        == (2500, 2500, 0)
    assert [line for line in first.err.splitlines() if line.startswith("prune [")]
    assert {t.id for t in await _tasks(cli, channel_id=channel.id)} == {live.id, recent.id}
    assert len(await _events(cli, live.id)) == 2

    second = cli("prune", "--older-than", "4w")
    assert second.code == 0 and "removed 0 published task(s)" in second.out
    assert [e.note for e in await _events(cli, live.id)] == ["recent"]
    assert_one_line_error(cli("prune", "--older-than", "soon"), "--older-than 'soon'")
    assert cli("prune").code == 2


# --- configuration ------------------------------------------------------------------------------


async def test_unmigrated_database_is_refused_with_the_fix(cli: Cli, pg_server_url: str) -> None:
    async with dbtools.scratch_database(pg_server_url, migrate=False) as empty:
        result = cli("stats", env={"DATABASE_URL": empty})
    assert_one_line_error(result, "alembic upgrade head")


def test_version_and_a_closed_pipe(cli: Cli) -> None:
    """``--version`` names the release; a reader that closes the pipe early (``| head``) ends
    the command quietly, never with "connection failed"."""
    version = cli("--version")
    assert version.code == 0 and version.out.startswith("pipeline ")
    env = os.environ | {"DATABASE_URL": cli.url, "REDIS_URL": cli.redis_url}
    done = subprocess.run(["sh", "-c", f'"{PIPELINE}" list --limit 1000 | true'], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.stderr == "", done.stderr


def test_bad_setting_is_one_line(cli: Cli) -> None:
    assert_one_line_error(cli("stats", env={"LEASE_SECONDS": "soon"}), "LEASE_SECONDS")
    assert_one_line_error(cli("stats", env={"DATABASE_URL": "mysql://u@db/app"}),
                          "DATABASE_URL: unsupported scheme 'mysql'")
    assert_one_line_error(cli("stats", env={"DATABASE_URL": "not a url"}),
                          "DATABASE_URL: not a database URL")
    assert_one_line_error(cli("stats", env={"REDIS_URL": "http://cache"}),
                          "REDIS_URL: not a Redis URL")



async def test_admin_commands_on_sqlite(cli: Cli, sqlite_url: str, tmp_path: Path) -> None:
    """SQLite is the second dialect for local use: the admin commands work on it too."""
    on_sqlite = {"DATABASE_URL": sqlite_url}
    cid = channel_id()
    assert cli("channel", "add", "--channel-id", cid, "--name", "Lite", env=on_sqlite).code == 0
    page = page_id()
    rows = [{"notion_page_id": page, "title": "Local", "channel": cid, "priority": "low"},
            {"notion_page_id": page_id(), "title": "Nowhere", "channel": "UCnone"}]
    result = cli("enqueue", str(_write_csv(tmp_path / "lite.csv", rows)), "--json", env=on_sqlite)
    assert result.code == 2, result
    assert result.json()["created"] == 1
    (listed,) = cli("list", "--channel", cid, "--json", env=on_sqlite).json()
    assert (listed["notion_page_id"], listed["status"], listed["priority"]) == (
        page, "queued", "low")
    shown = cli("show", listed["id"], "--json", env=on_sqlite).json()
    assert [e["to_status"] for e in shown["events"]] == ["queued"]
    assert cli("stats", "--json", env=on_sqlite).json()["by_channel"][cid] == {"queued": 1}
    refused = cli("requeue", listed["id"], env=on_sqlite)
    assert_one_line_error(refused, "not in an error state")


def test_worker_on_sqlite_is_refused_in_one_line(cli: Cli, sqlite_url: str) -> None:
    assert_one_line_error(cli("worker", "--burst", env={"DATABASE_URL": sqlite_url}),
                          "workers need PostgreSQL")
