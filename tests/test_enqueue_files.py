"""Hostile ``pipeline enqueue`` files, run through the real console script against PostgreSQL.

Every case says what stderr reports, the exit code, and exactly which rows are in the database
afterwards: a bad row is reported and skipped, a file that cannot be read is refused in one
line, never a traceback. An import stopped midway says which rows were committed, and those
rows, and only those, are in the database.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from app.commands.enqueue import CHUNK
from app.db import connect_kwargs
from app.db.models import Channel, Task, TaskEvent
from app.errors import BadPage
from app.notion import mapping
from app.schemas import STORY_DIRECTION_MAX_CHARS, TaskCreate, field_errors
from tests import dbtools, test_cli
from tests.factories import make_channel, page_id
from tests.notion_fake import rich_text
from tests.test_cli import PIPELINE, Cli, Result, assert_one_line_error

# The ``pipeline`` fixture of test_cli: a migrated database of this module's own.
cli = test_cli.cli

COLUMNS = ["notion_page_id", "title", "channel", "topic", "story_direction"]
Rows = list[dict[str, str]]
DASH = "\N{EN DASH}"


async def _channel(cli: Cli) -> str:
    async with cli.sessions() as session, session.begin():
        return str((await make_channel(session)).channel_id)


async def _stored(cli: Cli, channel: str) -> dict[str, Task]:
    """The channel's tasks by page id."""
    async with cli.sessions() as session:
        found = await session.scalars(sa.select(Task).join(Channel)
                                      .where(Channel.channel_id == channel))
        return {task.notion_page_id: task for task in found}


def _csv(rows: Rows) -> bytes:
    """A CSV; a value may carry undecodable bytes as ``surrogateescape`` characters."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8", "surrogateescape")


def _json(rows: Rows) -> bytes:
    """A JSON array, one row per line (row N on line N + 1), non-ASCII left as it is."""
    lines = ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    return f"[\n{lines}\n]\n".encode("utf-8", "surrogateescape")


def _pipeline_lines(result: Result) -> list[str]:
    return [line for line in result.err.splitlines() if line.startswith("pipeline:")]


# --- the table of hostile files -----------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    name: str
    suffix: str
    #: The rows as dictionaries (built from the channel and one fresh page id per row).
    rows: Callable[[str, list[str]], Rows]
    #: The file's bytes from those rows.
    encode: Callable[[Rows], bytes]
    #: stderr's ``pipeline:`` lines, ``{path}`` standing for the file.
    lines: list[str]
    code: int
    #: Row numbers (from 1) that must be in the database afterwards, and no others.
    imported: set[int]
    #: Row number → field → the value stored.
    stored: dict[int, dict[str, str]] = field(default_factory=dict)
    count: int = 3


def _plain(cid: str, pages: list[str]) -> Rows:
    return [{"notion_page_id": p, "title": f"Row {n}", "channel": cid}
            for n, p in enumerate(pages, start=1)]


def _with(row: int, **values: str) -> Callable[[str, list[str]], Rows]:
    """Plain rows, with ``values`` on row ``row`` (``{cid}`` in a value is the channel)."""
    def build(cid: str, pages: list[str]) -> Rows:
        rows = _plain(cid, pages)
        rows[row - 1] |= {k: v.replace("{cid}", cid) for k, v in values.items()}
        return rows
    return build


STORY = ('A "quoted" brief,\twith tabs,\r\nCRLF and\nLF line breaks, commas; ' * 40_000)[
    :2_000_000] + "end."
SURROGATE_E9 = b"\xe9".decode("utf-8", "surrogateescape")    # the byte 0xE9 alone: not UTF-8
NUL_TITLE = "row 2: title: control character U+0000 at character 4 is not allowed"

CASES = [
    Hostile("NUL in a CSV title", "csv", _with(2, title="bad\x00title"), _csv,
            [f"pipeline: {NUL_TITLE}"], 2, {1, 3}),
    Hostile("NUL in a JSON title", "json", _with(2, title="bad\x00title"), _json,
            [f"pipeline: {NUL_TITLE}"], 2, {1, 3}),
    Hostile("a control character in a channel", "csv", _with(2, channel="{cid}\x07"), _csv,
            ["pipeline: row 2: channel: control character U+0007 at character 15 is not "
             "allowed"], 2, {1, 3}),
    Hostile("an escape sequence in a topic", "json", _with(1, topic="\x1b[31mred"), _json,
            ["pipeline: row 1: topic: control character U+001B at character 1 is not allowed"],
            2, {2, 3}),
    Hostile("a control character in a story direction", "csv",
            _with(3, story_direction="tab\tkept, bell\x07 not"), _csv,
            ["pipeline: row 3: story_direction: control character U+0007 at character 15 is "
             "not allowed"], 2, {1, 2}),
    Hostile("a 2 MB story direction", "csv", _with(2, story_direction=STORY), _csv,
            [], 0, {1, 2, 3}, stored={2: {"story_direction": STORY}}),
    Hostile("a story direction over the cap", "csv",
            _with(1, story_direction="x" * (STORY_DIRECTION_MAX_CHARS + 1)), _csv,
            [f"pipeline: row 1: story_direction: String should have at most "
             f"{STORY_DIRECTION_MAX_CHARS} characters"], 2, {2, 3}),
    Hostile("an over-long title; line breaks in a title fold to a space", "csv",
            lambda cid, pages: [_plain(cid, pages)[0] | {"title": "x" * 255},
                                _plain(cid, pages)[1] | {"title": "y" * 256},
                                _plain(cid, pages)[2] | {"title": "Two\r\n\tlines"}], _csv,
            ["pipeline: row 2: title: String should have at most 255 characters"], 2, {1, 3},
            stored={1: {"title": "x" * 255}, 3: {"title": "Two lines"}}),
    Hostile("invalid UTF-8 on one CSV row", "csv", _with(2, title=f"caf{SURROGATE_E9}"), _csv,
            ["pipeline: row 2: title: not valid UTF-8 (byte 0xE9 at character 4)"], 2, {1, 3}),
    Hostile("invalid UTF-8 in a JSON file", "json", _with(2, title=f"caf{SURROGATE_E9}"),
            _json, ["pipeline: {path}: not UTF-8 text (line 3: byte 0xE9); nothing imported"],
            2, set()),
    Hostile("an unpaired surrogate escaped in JSON", "json", _with(1, title="\ud800x"),
            lambda rows: json.dumps(rows).encode(),
            ["pipeline: row 1: title: unpaired surrogate U+D800 at character 1 is not valid "
             "Unicode text"], 2, {2, 3}),
    Hostile("deeply nested JSON", "json", _plain,
            lambda rows: (b'[{"title": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]"),
            ["pipeline: {path}: JSON nested too deeply (a task is one flat object); nothing "
             "imported"], 2, set()),
    Hostile("a 5000-digit number in JSON", "json", _plain,
            lambda rows: b'[{"priority": ' + b"7" * 5000 + b"}]",
            ["pipeline: {path}: invalid JSON: Exceeds the limit (4300 digits) for integer "
             "string conversion; nothing imported"], 2, set()),
    Hostile("a NUL in a JSON key", "json",
            lambda cid, pages: [{"notion_page_id": pages[0], "ti\x00tle": "x", "channel": cid},
                                *_plain(cid, pages)[1:]], _json,
            ["pipeline: row 1: title: Field required",
             "pipeline: row 1: 'ti\\x00tle': Extra inputs are not permitted"], 2, {2, 3}),
    Hostile("800 rows with a NUL on row 700", "csv", _with(700, title="bad\x00title"), _csv,
            [f"pipeline: {NUL_TITLE.replace('row 2', 'row 700')}"], 2,
            set(range(1, 801)) - {700}, count=800),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_hostile_file(cli: Cli, tmp_path: Path, case: Hostile) -> None:
    cid = await _channel(cli)
    pages = [page_id() for _ in range(case.count)]
    rows = case.rows(cid, pages)
    path = tmp_path / f"tasks.{case.suffix}"
    path.write_bytes(case.encode(rows))

    result = cli("enqueue", str(path))

    assert "Traceback" not in result.err, result.err
    assert result.code == case.code, result
    assert _pipeline_lines(result) == [line.format(path=path) for line in case.lines]
    if not case.imported:
        assert_one_line_error(result)
    stored = await _stored(cli, cid)
    assert set(stored) == {pages[n - 1] for n in case.imported}
    for number, values in case.stored.items():
        task = stored[pages[number - 1]]
        assert {name: getattr(task, name) for name in values} == values


# --- duplicates and database refusals -----------------------------------------------------------


def _dashed(page: str) -> str:
    return "-".join((page[:8], page[8:12], page[12:16], page[16:20], page[20:])).upper()


async def test_duplicate_page_ids_first_row_wins_and_a_reimport_is_unchanged(
        cli: Cli, tmp_path: Path) -> None:
    cid = await _channel(cli)
    a, b, c = page_id(), page_id(), page_id()
    rows = [{"notion_page_id": a, "title": "A first", "channel": cid},
            {"notion_page_id": b, "title": "B", "channel": cid},
            {"notion_page_id": _dashed(a), "title": "A again", "channel": cid},
            {"notion_page_id": b, "title": "B again", "channel": cid},
            {"notion_page_id": c, "title": "C", "channel": cid}]
    path = tmp_path / "dupes.csv"
    path.write_bytes(_csv(rows))

    first = cli("enqueue", str(path))
    assert first.code == 2, first
    assert _pipeline_lines(first) == [
        "pipeline: row 3: notion_page_id: duplicate notion_page_id: also on row 1",
        "pipeline: row 4: notion_page_id: duplicate notion_page_id: also on row 2"]
    stored = await _stored(cli, cid)
    assert {p: t.title for p, t in stored.items()} == {a: "A first", b: "B", c: "C"}
    async with cli.sessions() as session:
        events = await session.scalar(sa.select(sa.func.count()).select_from(TaskEvent)
                                      .where(TaskEvent.task_id.in_(t.id for t in stored.values())))

    again = cli("enqueue", str(path), "--json")
    assert again.code == 2, again
    summary = again.json()
    assert (summary["created"], summary["updated"], summary["unchanged"], summary["bad"]) == (
        0, 0, 3, 2)
    assert [(e["row"], e["field"]) for e in summary["errors"]] == [(3, "notion_page_id"),
                                                                  (4, "notion_page_id")]
    assert {p: t.title for p, t in (await _stored(cli, cid)).items()} == {
        a: "A first", b: "B", c: "C"}
    async with cli.sessions() as session:
        assert await session.scalar(
            sa.select(sa.func.count()).select_from(TaskEvent)
            .where(TaskEvent.task_id.in_(t.id for t in stored.values()))) == events


async def test_a_row_the_database_refuses_is_a_bad_row_and_the_rest_go_in(
        cli: Cli, tmp_path: Path) -> None:
    """Whatever validation misses (here a constraint it knows nothing of) costs one row, its
    savepoint rolled back, in any chunk."""
    cid = await _channel(cli)
    pages = [page_id() for _ in range(600)]
    rows = _plain(cid, pages)
    for number in (2, 550):
        rows[number - 1]["title"] = "[refused] by the database"
    path = tmp_path / "refused.csv"
    path.write_bytes(_csv(rows))
    add = ("ALTER TABLE tasks ADD CONSTRAINT test_refused_marker "
           "CHECK (title NOT LIKE '[refused]%') NOT VALID")
    async with cli.sessions() as session, session.begin():
        await session.execute(sa.text(add))
    try:
        result = cli("enqueue", str(path))
    finally:
        async with cli.sessions() as session, session.begin():
            await session.execute(sa.text(
                "ALTER TABLE tasks DROP CONSTRAINT test_refused_marker"))
    assert result.code == 2, result
    refusal = ('row: the database refused it: new row for relation "tasks" violates check '
               'constraint "test_refused_marker"')
    assert _pipeline_lines(result) == [f"pipeline: row 2: {refusal}",
                                       f"pipeline: row 550: {refusal}"]
    assert set(await _stored(cli, cid)) == set(pages) - {pages[1], pages[549]}


# --- stopped midway -----------------------------------------------------------------------------

TOTAL = 1200
PROGRESS = re.compile(r"enqueue \[[#.]+\] (\d+)/(\d+)")
STOP = re.compile(rf"pipeline: (?P<reason>.+?): rows 1{DASH}(?P<last>\d+) "
                  rf"imported and committed; rows (?P<next>\d+){DASH}(?P<total>\d+) not imported")


def _start_import(cli: Cli, path: Path) -> subprocess.Popen[str]:
    env = os.environ | {"DATABASE_URL": cli.url, "REDIS_URL": cli.redis_url,
                        "QUEUE_NAME": cli.queue}
    return subprocess.Popen([str(PIPELINE), "enqueue", str(path), "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_progress(proc: subprocess.Popen[str], at_least: int) -> list[str]:
    """stderr up to the first progress line showing ``at_least`` rows done; the test fails if
    the import ends before."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if (found := PROGRESS.match(line)) and int(found[1]) >= at_least:
            return seen
    pytest.fail(f"the import ended before {at_least} rows: {''.join(seen)}")


async def _big_file(cli: Cli, tmp_path: Path) -> tuple[str, list[str], Path]:
    cid = await _channel(cli)
    pages = [page_id() for _ in range(TOTAL)]
    path = tmp_path / "big.csv"
    path.write_bytes(_csv(_plain(cid, pages)))
    return cid, pages, path


def _finish(proc: subprocess.Popen[str], seen: list[str]) -> tuple[Any, str]:
    out, rest = proc.communicate(timeout=60)
    return json.loads(out), "".join(seen) + rest


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_an_interrupted_import_says_which_rows_were_committed(
        cli: Cli, tmp_path: Path, signum: signal.Signals) -> None:
    cid, pages, path = await _big_file(cli, tmp_path)
    proc = _start_import(cli, path)
    seen = _wait_for_progress(proc, CHUNK + 1)   # a chunk is committed
    proc.send_signal(signum)
    summary, err = _finish(proc, seen)

    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    stop = STOP.search(err)
    assert stop is not None, err
    assert stop["reason"] == f"interrupted by {signum.name}"
    last = int(stop["last"])
    assert (int(stop["next"]), int(stop["total"])) == (last + 1, TOTAL)
    assert CHUNK <= last < TOTAL and last % CHUNK == 0        # whole chunks only
    assert summary["created"] == last
    assert summary["stopped"]["committed_rows"] == [1, last]
    assert set(await _stored(cli, cid)) == set(pages[:last])

    if signum == signal.SIGINT:                 # a re-run completes it, idempotently
        rerun = cli("enqueue", str(path), "--json")
        assert rerun.code == 0, rerun.err
        assert (rerun.json()["created"], rerun.json()["unchanged"]) == (TOTAL - last, last)
        assert set(await _stored(cli, cid)) == set(pages)


async def test_a_second_signal_cancels_a_statement_that_hangs(cli: Cli, tmp_path: Path) -> None:
    """The first SIGINT waits for the row in flight; when that row waits on a lock, a second
    cancels it, and the import still says what got in (nothing)."""
    cid = await _channel(cli)
    path = tmp_path / "blocked.csv"
    path.write_bytes(_csv(_plain(cid, [page_id() for _ in range(5)])))
    async with cli.sessions() as session:
        await session.execute(sa.text("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE"))
        proc = _start_import(cli, path)
        try:
            await dbtools.wait_for_lock_waiters(cli.sessions, 1)
            proc.send_signal(signal.SIGINT)
            await asyncio.sleep(0.3)
            assert proc.poll() is None                 # still waiting for its row
            proc.send_signal(signal.SIGINT)
            summary, err = _finish(proc, [])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        await session.rollback()
    assert proc.returncode == 130, err
    assert _pipeline_lines(Result(proc.returncode, "", err)) == [
        f"pipeline: interrupted by SIGINT (forced): rows 1{DASH}5 not imported"]
    assert summary["stopped"]["not_imported_rows"] == [1, 5]
    assert await _stored(cli, cid) == {}


async def test_an_import_that_loses_its_database_says_which_rows_were_committed(
        cli: Cli, tmp_path: Path) -> None:
    cid, pages, path = await _big_file(cli, tmp_path)
    proc = _start_import(cli, path)
    seen = _wait_for_progress(proc, CHUNK + 1)   # a chunk is committed
    await _terminate_importing_backend(cli)
    summary, err = _finish(proc, seen)

    assert proc.returncode == 1, err
    assert "Traceback" not in err
    stop = STOP.search(err)
    assert stop is not None, err
    assert stop["reason"].startswith("database error: "), stop["reason"]
    last = int(stop["last"])
    assert (int(stop["next"]), int(stop["total"])) == (last + 1, TOTAL)
    assert CHUNK <= last < TOTAL and last % CHUNK == 0
    assert summary["stopped"]["not_imported_rows"] == [last + 1, TOTAL]
    assert set(await _stored(cli, cid)) == set(pages[:last])


async def _terminate_importing_backend(cli: Cli) -> None:
    """End the import's connection the way a server restart does (the backend terminated
    while its chunk's transaction is open)."""
    conn = await asyncpg.connect(**connect_kwargs(cli.url))
    try:
        async with asyncio.timeout(20):
            while True:
                if await conn.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND xact_start IS NOT NULL"):
                    return
                await asyncio.sleep(0.005)
    finally:
        await conn.close()


# --- the same rules for the Notion sync ---------------------------------------------------------


@pytest.mark.parametrize(("values", "field", "message"), [
    ({"title": "a\x00b"}, "title", "control character U+0000 at character 2"),
    ({"topic": "x\x1f"}, "topic", "control character U+001F at character 2"),
    ({"channel": "UC\x7f"}, "channel", "control character U+007F at character 3"),
    ({"story_direction": "a\r\n\tb\x0bc"}, "story_direction",
     "control character U+000B at character 6"),
    ({"story_direction": "x\udcff"}, "story_direction", "unpaired surrogate U+DCFF"),
])
def test_task_create_refuses_control_characters(values: dict[str, str], field: str,
                                                message: str) -> None:
    data = {"notion_page_id": page_id(), "channel": "UCx", "title": "T"} | values
    with pytest.raises(ValidationError) as refused:
        TaskCreate.model_validate(data)
    assert any(f == field and message in m for f, m in field_errors(refused.value))


def test_task_create_keeps_multi_line_text_and_folds_one_line_text() -> None:
    task = TaskCreate.model_validate({"notion_page_id": page_id(), "channel": "UCx",
                                      "title": "Two\nlines", "topic": "a\tb",
                                      "story_direction": "one\r\n\ttwo\nthree"})
    assert (task.title, task.topic, task.story_direction) == (
        "Two lines", "a b", "one\r\n\ttwo\nthree")


def test_a_notion_page_with_a_nul_names_the_property() -> None:
    page = {"object": "page", "id": page_id(), "last_edited_time": "2026-11-22T10:00:00.000Z",
            "properties": {"Title": {"type": "title", "title": [{"plain_text": "A\x00B"}]},
                           "Channel": rich_text("UCabc")}}
    names = mapping.PropertyNames("Title", "Topic", "Story Direction", "Channel", "Priority",
                                  "Status", "", "")
    with pytest.raises(BadPage) as bad:
        mapping.read_page(page, names)
    assert bad.value.field == "Title" and "U+0000" in bad.value.reason
