"""The web dashboard in a real Chromium (Playwright, Debian's ``/usr/bin/chromium``) against a
real ``pipeline serve`` process on the test's own database, with real workers where tasks must
move: the board follows a worker live (no reload), a gate is approved by clicking, a requeue
shows its preview before it applies, an XSS-shaped title stays text, a form without its CSRF
token is refused, and pages need a login while ``API_TOKEN`` is set. A screenshot of every
page goes to ``tmp_path`` and to ``$TEST_ARTIFACTS_DIR`` (default ``.artifacts/screenshots``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from playwright.async_api import Browser, Page, async_playwright, expect

from app.db.models import Task, TaskEvent
from app.lifecycle import TaskStatus
from app.services import transitions
from app.web.dashboard import sessions
from app.web.dashboard.live import Poller
from tests.factories import make_channel, make_task
from tests.webserver import TOKEN, Server, Web, web
from tests.workerprocs import REPO, Sessions, Workers, db, eventually, queue, seed, workers

__all__ = ["db", "queue", "web", "workers"]

CHROMIUM = Path("/usr/bin/chromium")
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is needed (.ci/run installs it)")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the whole module (a browser starts in about a second)."""
    async with async_playwright() as p:
        found = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield found
        await found.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    found = await context.new_page()
    yield found
    await context.close()


def artefacts_dir() -> Path:
    return Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO / ".artifacts" / "screenshots")


async def snap(page: Page, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot under ``tmp_path``, copied to the artefacts directory."""
    shot = tmp_path / f"{name}.png"
    await page.screenshot(path=str(shot), full_page=True)
    target = artefacts_dir()
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, target / shot.name)
    return shot


async def log_in(page: Page, server: Server, path: str = "/") -> None:
    await page.goto(server.base_url + path)
    await expect(page).to_have_url(re.compile(r"/login\?next="))
    await page.get_by_label("API token").fill(TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(server.base_url + path)


async def make_tasks(sessions: Sessions, status: TaskStatus, titles: list[str],
                     **values: object) -> list[uuid.UUID]:
    async with sessions() as session, session.begin():
        channel = await make_channel(session, max_concurrent=2)
        tasks = [await make_task(session, channel, status, title=title, **values)
                 for title in titles]
    return [task.id for task in tasks]


async def test_the_board_follows_a_worker_live(
    web: Web, workers: Workers, db: tuple[str, Sessions], page: Page, tmp_path: Path,
) -> None:
    sessions = db[1]
    ids = await seed(sessions, [2, 1, None], 3, title="Live video")
    await make_tasks(sessions, TaskStatus.audio_ready, ["Waiting for a listen"])
    await make_tasks(sessions, TaskStatus.upload_error, ["Quota exceeded"], failed_stage="upload",
                     attempts=3, error_log="upload_error: quota exceeded")
    server = await web.start()
    await log_in(page, server)
    await expect(page.locator("#queued")).to_have_text("9")
    await expect(page.locator("#live-state")).to_have_class(re.compile(r"\bon\b"))
    await page.evaluate("window.notReloaded = true")
    # A transition written by someone else shows within a second, without a reload.
    async with sessions() as session, session.begin():
        await transitions.transition(session, ids[0], TaskStatus.draft, actor="test")
    await expect(page.locator("#queued")).to_have_text("8", timeout=1500)
    async with sessions() as session, session.begin():
        await transitions.transition(session, ids[0], TaskStatus.queued, actor="test")
    await expect(page.locator("#queued")).to_have_text("9", timeout=1500)
    await expect(page.locator(".attention")).to_contain_text("Quota exceeded")
    await snap(page, tmp_path, "board-before")

    worker = workers.start(SIMULATED_STAGE_SECONDS="0.1")
    worker_id = await worker.started()
    running = page.locator("tr.all td.r").filter(has_text=re.compile(r"^[1-9]"))
    await expect(running.first).to_be_visible(timeout=10_000)
    await snap(page, tmp_path, "board-live")
    worker = workers.start()
    worker_id = await worker.started()
    await expect(page.locator("#published")).to_have_text("9", timeout=30_000)
    await expect(page.locator("#all-upload-done")).to_have_text("9")
    await expect(page.locator("#queued")).to_have_text("0")
    assert await page.evaluate("window.notReloaded") is True
    await snap(page, tmp_path, "board")

    await page.get_by_role("link", name="Workers").click()
    await expect(page.locator(f'tr[data-worker="{worker_id}"]')).to_be_visible()
    await snap(page, tmp_path, "workers")
    await page.get_by_role("link", name="Charts").click()
    await expect(page.locator("#throughput tbody tr").first).to_contain_text("assets")
    upload = page.locator("#throughput tbody tr").filter(has_text="upload")
    await expect(upload.locator("td").first).to_have_text("9")
    await expect(page.locator("#durations")).to_contain_text("p95")
    await snap(page, tmp_path, "charts")


async def test_a_gate_is_approved_by_clicking(
    web: Web, page: Page, db: tuple[str, Sessions], tmp_path: Path,
) -> None:
    sessions = db[1]
    chosen, other = await make_tasks(sessions, TaskStatus.video_ready,
                                     ["Review me", "Leave me"],
                                     artifacts={"video": {"path": "/out/v.mp4", "seconds": 42}})
    server = await web.start()
    await log_in(page, server, "/review")
    row = page.locator(f'tr[data-task="{chosen}"]')
    await expect(row).to_contain_text("/out/v.mp4")
    await snap(page, tmp_path, "review")
    await row.get_by_role("checkbox").check()
    await page.get_by_role("button", name="Approve chosen").click()
    await expect(page.locator("#flash")).to_have_text("1 approved.")
    await expect(page.locator(f'tr[data-task="{chosen}"]')).to_have_count(0)
    await expect(page.locator(f'tr[data-task="{other}"]')).to_have_count(1)
    async with sessions() as session:
        status = await session.scalar(sa.select(Task.status).where(Task.id == chosen))
        actor = await session.scalar(sa.select(TaskEvent.actor).where(
            TaskEvent.task_id == chosen, TaskEvent.to_status == TaskStatus.video_approved))
    assert (status, actor) == (TaskStatus.video_approved, "web")


async def test_a_requeue_shows_its_preview_then_applies(
    web: Web, page: Page, db: tuple[str, Sessions], tmp_path: Path,
) -> None:
    sessions = db[1]
    [task_id] = await make_tasks(sessions, TaskStatus.video_error, ["Broken video"],
                                 failed_stage="assembly", attempts=3,
                                 error_log="2026-01-01T00:00:00Z video_error: boom")
    server = await web.start()
    await log_in(page, server, f"/tasks/{task_id}")
    await expect(page.locator("#error-log")).to_contain_text("boom")
    await snap(page, tmp_path, "task")
    await page.get_by_role("link", name="Requeue…").click()
    await expect(page.locator("#plan-stage")).to_have_text("assembly")
    await expect(page.locator("#plan-resumes")).to_have_text("assembling")
    await snap(page, tmp_path, "requeue-preview")
    async with sessions() as session:     # the preview changed nothing
        retry_at = await session.scalar(sa.select(Task.retry_at).where(Task.id == task_id))
    assert retry_at is None
    await page.get_by_label("Reason").fill("disk was full")
    await page.get_by_role("button", name="Requeue now").click()
    await expect(page.locator("#flash")).to_have_text(
        "requeued: assembly retries at assembling")
    await expect(page.locator("#timeline")).to_contain_text("reason: disk was full")
    await page.get_by_role("button", name="Hold").click()
    await expect(page.locator("#hold-badge")).to_contain_text("on hold since")
    await page.get_by_role("button", name="Release").click()
    await expect(page.locator("#flash")).to_have_text("released")
    await snap(page, tmp_path, "task-history")
    async with sessions() as session:
        row = (await session.execute(sa.select(Task.retry_at, Task.attempts, Task.hold_since)
                                     .where(Task.id == task_id))).one()
        actors = set(await session.scalars(sa.select(TaskEvent.actor)
                                           .where(TaskEvent.task_id == task_id)))
    assert row.retry_at is not None and row.attempts == 0 and row.hold_since is None
    assert actors == {"web"}


async def test_titles_are_text_never_markup(
    web: Web, page: Page, db: tuple[str, Sessions], tmp_path: Path,
) -> None:
    [task_id] = await make_tasks(db[1], TaskStatus.assets_ready, [XSS])
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    server = await web.start()
    await log_in(page, server)
    await expect(page.locator(".attention").get_by_text(XSS)).to_be_visible()
    await page.goto(f"{server.base_url}/review")
    await expect(page.locator(f'tr[data-task="{task_id}"] a.title')).to_have_text(XSS)
    await page.goto(f"{server.base_url}/tasks/{task_id}")
    await expect(page.locator("#task-title")).to_have_text(XSS)
    await snap(page, tmp_path, "task-xss")
    assert await page.locator("script:not([src])").count() == 0
    await page.get_by_role("button", name="Approve (assets gate)").click()
    await expect(page.locator("#flash")).to_have_text("approved: now assets_approved")
    await expect(page.locator("#timeline")).to_contain_text("assets approved")
    assert dialogs == []


async def test_login_and_csrf_guard_every_page_and_form(
    web: Web, page: Page, db: tuple[str, Sessions], tmp_path: Path,
) -> None:
    [task_id] = await make_tasks(db[1], TaskStatus.assets_ready, ["Guarded"])
    server = await web.start()
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        for path in ("/", "/review", f"/tasks/{task_id}", "/workers", "/charts", "/events"):
            answer = await client.get(path)
            assert (answer.status_code, answer.headers["location"]) == (
                303, f"/login?next={path.replace('/', '%2F')}"), path
        refused = await client.post("/review/approve", data={"task_id": str(task_id)})
        assert refused.status_code == 403
    await page.goto(server.base_url + "/login")
    await page.get_by_label("API token").fill("not-the-token")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#login-failed")).to_be_visible()
    await snap(page, tmp_path, "login")
    await page.get_by_label("API token").fill(TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#queued")).to_have_text("0")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "pipeline_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]
    # Logged in, a form without its CSRF token (or with another session's) is refused.
    for csrf in (None, "0" * 64):
        answer = await page.request.post(server.base_url + "/review/approve", form={
            "task_id": str(task_id), **({"csrf": csrf} if csrf else {})})
        assert answer.status == 403
    async with db[1]() as session:
        status = await session.scalar(sa.select(Task.status).where(Task.id == task_id))
    assert status is TaskStatus.assets_ready


async def test_one_poller_feeds_every_board_and_sends_changes_only() -> None:
    """Three watchers and a burst of page views cost one read per interval; an unchanged board
    is not sent again; the poller stops when the last watcher leaves."""
    reads: list[int] = []
    state = {"value": 1}

    async def read() -> int:
        reads.append(state["value"])
        await asyncio.sleep(0.01)
        return state["value"]

    poller = Poller(read, facts=lambda v: v, render=lambda v: f"board {v}", interval_s=0.05)
    async with contextlib.AsyncExitStack() as stack:
        queues = [await stack.enter_async_context(poller.subscribe()) for _ in range(3)]
        assert [await q.get() for q in queues] == ["board 1"] * 3
        before = len(reads)
        views = await asyncio.gather(*(poller.latest(max_age_s=1) for _ in range(20)))
        assert views == [1] * 20 and len(reads) <= before + 1
        await eventually(lambda: _true(len(reads) >= 4), timeout_s=5, what="four polls")
        assert all(q.empty() for q in queues)        # nothing changed, nothing sent
        state["value"] = 2
        assert [await q.get() for q in queues] == ["board 2"] * 3
        polls = len(reads)
        assert poller.polls == polls and poller.watching == 3
    await eventually(lambda: _true(not poller.running), timeout_s=5, what="the poller to stop")
    assert len(reads) <= polls + 2
    await poller.stop()


async def _true(value: bool) -> bool:
    return value


def test_a_session_cookie_cannot_be_forged_or_reused_across_keys() -> None:
    key, other_key = b"k" * 32, b"o" * 32
    visitor = sessions.new_session(logged_in=False)
    cookie = sessions.encode(key, visitor)
    assert sessions.decode(key, cookie) == visitor
    sid, _, mac = cookie.split(".")
    assert sessions.decode(key, f"{sid}.1.{mac}") is None          # promoted by hand
    assert sessions.decode(other_key, cookie) is None                 # another token's key
    assert sessions.decode(key, "garbage") is None
    token = sessions.csrf_token(key, visitor)
    assert sessions.csrf_matches(key, visitor, token)
    assert not sessions.csrf_matches(key, sessions.new_session(logged_in=False), token)
    assert not sessions.csrf_matches(key, visitor, None)


async def test_pages_are_open_without_a_token_and_forms_still_need_csrf(
    web: Web, db: tuple[str, Sessions],
) -> None:
    [task_id, public] = await make_tasks(db[1], TaskStatus.assets_ready, ["Open", "Public"])
    server = await web.start(API_TOKEN="")
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        board = await client.get("/")
        assert board.status_code == 200
        assert "script-src" not in board.headers["content-security-policy"]
        assert board.headers["content-security-policy"].startswith("default-src 'self'")
        review = await client.get("/review")
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', review.text)
        assert csrf is not None
        assert (await client.post("/review/approve",
                                  data={"task_id": str(task_id)})).status_code == 403
        done = await client.post("/review/approve",
                                 data={"task_id": str(task_id), "csrf": csrf.group(1)})
        assert (done.status_code, done.headers["location"]) == (
            303, "/review?approved=1&refused=0")
        assert (await client.get("/static/dashboard.css")).status_code == 200
        assert (await client.get("/static/..%2Fpages.py")).status_code == 404
    # With a token and public reads: pages open, actions still need the login.
    server = await web.start(API_PUBLIC_READ="true")
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        review = await client.get("/review")
        assert review.status_code == 200 and 'href="/login?next=/review"' in review.text
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', review.text)
        assert csrf is not None
        refused = await client.post("/review/approve",
                                    data={"task_id": str(public), "csrf": csrf.group(1)})
        assert refused.status_code == 403
    async with db[1]() as session:
        status = await session.scalar(sa.select(Task.status).where(Task.id == public))
    assert status is TaskStatus.assets_ready
