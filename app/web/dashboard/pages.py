"""The dashboard's pages (GET): the board, the review queue, a task, the workers and the
charts. Each reads in one short transaction and renders server-side."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import APIRouter, Depends
from fastapi.responses import RedirectResponse, Response
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from app import moves
from app.db import session_scope
from app.db.models import Channel, Task
from app.errors import AmbiguousTask, BadTaskRef, PipelineError, TaskNotFound
from app.execution import registry, wakeups
from app.lifecycle import ERROR, GATE_BY_WAITING, GATES
from app.services import tasks, transitions
from app.web.dashboard import charts
from app.web.dashboard.context import Viewer, reader

router = APIRouter(include_in_schema=False)
#: A board page shows the process's latest reading of the board when it is this fresh (it is
#: refreshed every half second while anyone watches live), so page views cost no more reads
#: than watchers do.
BOARD_MAX_AGE_S = 1.0
#: Events drawn on a task's timeline (the newest; ``pipeline show`` lists them all).
HISTORY_SHOWN = 300
#: The charts cover the last hour: a reading this old is shown as it is.
CHARTS_MAX_AGE_S = 10.0
#: Tasks listed per gate on the review page, and held tasks on the workers page.
PAGE_SIZE = 100

Reader = Annotated[Viewer, Depends(reader)]


def status_code(error: PipelineError) -> int:
    """The HTTP status of a refusal: the API's codes (404 unknown task, 409 illegal move)."""
    if isinstance(error, TaskNotFound | BadTaskRef):
        return 404
    return 409 if not isinstance(error, AmbiguousTask) else 400


@router.get("/")
async def board_page(viewer: Reader) -> Response:
    view = await viewer.dashboard.poller.latest(max_age_s=BOARD_MAX_AGE_S)
    return viewer.page("board.html", view=view, now=view.summary.at, nav="board")


async def _gate_rows(session: AsyncSession) -> list[tuple[str, int, list[tuple[Task, str]]]]:
    found = []
    for gate in GATES:
        waiting = Task.status == gate.waiting
        total = int(await session.scalar(sa.select(sa.func.count()).where(waiting)) or 0)
        rows = (await session.execute(
            sa.select(Task, Channel.channel_id).join(Channel, Channel.id == Task.channel_id)
            .where(waiting).order_by(Task.updated_at, Task.id).limit(PAGE_SIZE))).tuples().all()
        found.append((gate.name, total, list(rows)))
    return found


@router.get("/review")
async def review_page(viewer: Reader, approved: int | None = None,
                      refused: int | None = None) -> Response:
    async with session_scope(viewer.web.sessions) as session:
        gates = await _gate_rows(session)
    return viewer.page("review.html", gates=gates, now=moves.utcnow(), approved=approved,
                       refused=refused, page_size=PAGE_SIZE, nav="review")


@router.get("/tasks/{ref}")
async def task_page(viewer: Reader, ref: str, done: str | None = None) -> Response:
    try:
        async with session_scope(viewer.web.sessions) as session:
            task = await tasks.get_task(session, await tasks.find_task(session, ref))
            channel = await session.get(Channel, task.channel_id)
            history = await tasks.history(session, task.id)
    except PipelineError as exc:
        return viewer.error(str(exc), status_code(exc))
    earlier = max(0, len(history) - HISTORY_SHOWN)
    return viewer.page("task.html", task=task, channel=channel, history=history[earlier:],
                       earlier=earlier,
                       now=moves.utcnow(), done=done, errored=task.status in ERROR,
                       can_hold=moves.can_hold(task.status), nav="",
                       at_gate=gate.name if (gate := GATE_BY_WAITING.get(task.status)) else None)


@router.get("/tasks/{ref}/requeue")
async def requeue_preview(viewer: Reader, ref: str) -> Response:
    """What a requeue would do (the dry run), with the form that applies it."""
    try:
        async with session_scope(viewer.web.sessions) as session:
            plan = await transitions.plan_requeue(session, await tasks.find_task(session, ref))
    except PipelineError as exc:
        return viewer.error(str(exc), status_code(exc))
    return viewer.page("requeue.html", plan=plan, nav="")


async def _live_workers(viewer: Viewer) -> tuple[list[registry.WorkerRecord], str | None]:
    url = viewer.commands.redis_url()
    if url is None:
        return [], "no Redis is configured or running, so no worker can be"
    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        return await registry.live(client, viewer.web.settings.queue_name), None
    except wakeups.REDIS_GONE as exc:
        return [], f"the worker registry (Redis) cannot be read: {exc}"
    finally:
        await client.aclose()


@router.get("/workers")
async def workers_page(viewer: Reader) -> Response:
    records, problem = await _live_workers(viewer)
    async with session_scope(viewer.web.sessions) as session:
        rows = (await session.execute(
            sa.select(Task.id, Task.title, Task.status, Task.claimed_by, Task.claimed_at,
                      Task.lease_expires_at)
            .where(tasks.HELD)
            .order_by(Task.claimed_by, Task.claimed_at)
            .limit(PAGE_SIZE * 5))).all()
    held: dict[str, list[Any]] = {}
    for row in rows:
        held.setdefault(row.claimed_by or "", []).append(row)
    live = {r.id for r in records}
    # Without the registry nobody can be told dead: orphans only when Redis answered.
    orphans = {} if problem else {w: rows for w, rows in held.items() if w not in live}
    return viewer.page("workers.html", records=records, held=held, orphans=orphans,
                       problem=problem, now=moves.utcnow(), nav="workers")


@router.get("/charts")
async def charts_page(viewer: Reader) -> Response:
    found = await viewer.dashboard.charts.latest(max_age_s=CHARTS_MAX_AGE_S)
    if found.times is None:
        return viewer.error("the charts need PostgreSQL", 501)
    return viewer.page("charts.html", times=found.times, bars=charts.duration_bars(found.times),
                       spark=charts.spark_points, geometry=charts, now=found.at, nav="charts")


@router.get("/find")
async def find(viewer: Reader, q: str = "") -> Response:
    """The header's search box: straight to the task page of the id, prefix or page id."""
    return RedirectResponse(f"/tasks/{quote(q.strip(), safe='')}", status_code=303)
