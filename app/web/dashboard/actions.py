"""The dashboard's actions (POST, each with the session's CSRF token): approve tasks at their
gates, requeue an errored task, hold and release one. They go through the service layer, one
short transaction per task, record the actor ``web`` and wake the workers after the commit,
as the CLI's verbs do; then the browser is sent back to a page (post/redirect/get)."""

from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form
from fastapi.responses import RedirectResponse, Response

from app import moves
from app.db import session_scope
from app.errors import PipelineError
from app.lifecycle import GATES
from app.services import holds, tasks, transitions
from app.web.dashboard.context import ACTOR, Viewer, writer
from app.web.dashboard.pages import PAGE_SIZE, status_code

router = APIRouter(include_in_schema=False)

Writer = Annotated[Viewer, Depends(writer)]
#: The longest reason or note kept from a form.
REASON_MAX = 500


def _back(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _task_path(task_id: uuid.UUID, done: str) -> str:
    return f"/tasks/{task_id}?done={quote(done)}"


def _reason(text: str | None) -> str | None:
    text = (text or "").strip()
    return text[:REASON_MAX] or None


@router.post("/review/approve")
async def approve(viewer: Writer,
                  task_id: Annotated[list[uuid.UUID] | None, Form()] = None) -> Response:
    """Pass each chosen task's gate; one a worker or another operator moved meanwhile is
    counted as refused, the others go on."""
    chosen = list(dict.fromkeys(task_id or []))[:PAGE_SIZE * len(GATES)]
    approved = 0
    for one in chosen:
        try:
            async with session_scope(viewer.web.sessions) as session:
                await transitions.approve(session, one, actor=ACTOR)
            approved += 1
        except PipelineError:
            continue
    await viewer.commands.wake(approved)
    return _back(f"/review?approved={approved}&refused={len(chosen) - approved}")


@router.post("/tasks/{ref}/approve")
async def approve_one(viewer: Writer, ref: str) -> Response:
    """Pass the gate the task waits at (from its page)."""
    try:
        async with session_scope(viewer.web.sessions) as session:
            task = await transitions.approve(session, await tasks.find_task(session, ref),
                                             actor=ACTOR)
    except PipelineError as exc:
        return viewer.error(str(exc), status_code(exc))
    await viewer.commands.wake(1)
    return _back(_task_path(task.id, f"approved: now {task.status.value}"))


@router.post("/tasks/{ref}/requeue")
async def requeue(viewer: Writer, ref: str,
                  reason: Annotated[str | None, Form()] = None) -> Response:
    try:
        async with session_scope(viewer.web.sessions) as session:
            plan = await transitions.requeue(session, await tasks.find_task(session, ref),
                                             actor=ACTOR, reason=_reason(reason))
    except PipelineError as exc:
        return viewer.error(str(exc), status_code(exc))
    await viewer.commands.wake(1)
    return _back(_task_path(plan.task_id, f"requeued: {plan.stage.name} retries at "
                                          f"{plan.resumes_at.value}"))


async def _hold_or_release(viewer: Viewer, ref: str, reason: str | None, *,
                           holding: bool) -> Response:
    write = holds.hold if holding else holds.release
    try:
        async with session_scope(viewer.web.sessions) as session:
            task_id = await tasks.find_task(session, ref)
            changed = await write(session, [task_id], actor=ACTOR, reason=_reason(reason),
                                  now=moves.utcnow())
    except PipelineError as exc:
        return viewer.error(str(exc), status_code(exc))
    if changed and not holding:
        await viewer.commands.wake(1)
    verb = "held" if holding else "released"
    outcome = verb if changed else ("already on hold" if holding else "was not on hold")
    return _back(_task_path(task_id, outcome))


@router.post("/tasks/{ref}/hold")
async def hold(viewer: Writer, ref: str,
               reason: Annotated[str | None, Form()] = None) -> Response:
    return await _hold_or_release(viewer, ref, reason, holding=True)


@router.post("/tasks/{ref}/release")
async def release(viewer: Writer, ref: str,
                  reason: Annotated[str | None, Form()] = None) -> Response:
    return await _hold_or_release(viewer, ref, reason, holding=False)
