"""``pipeline demo``: migrations, channels, and tasks walked through the state machine.

Every move goes through the service layer (as a worker or an operator would make it), so the
output shows the guarded transitions, the review gates, a failed stage with its retry requeued
through the admin path, and both guards (service and database) refusing an illegal move.
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import lifecycle, migrations, tables
from app.errors import ChannelExists, InvalidTransition
from app.lifecycle import GATE_BY_WAITING, STAGE_BY_ACTIVE, PriorityLevel, TaskStatus
from app.models import Task, TaskEvent
from app.schemas import ChannelCreate, TaskCreate
from app.services import channels, tasks, transitions

Sessions = async_sessionmaker[AsyncSession]

CHANNELS = (
    ChannelCreate(channel_id="UCdemo-science", channel_name="Science Shorts", max_concurrent=2),
    ChannelCreate(channel_id="UCdemo-history", channel_name="History Hour"),
    ChannelCreate(channel_id="UCdemo-nature", channel_name="Nature Notes"),
)
TITLES = ("Why the sky is blue", "The fall of Rome [fail:video]", "How bees see colour",
          "Volcanoes in 60 seconds", "The printing press", "Migrating birds")


async def run(sessions: Sessions, url: str) -> None:
    """The whole walk-through; prints as it goes."""
    started = time.monotonic()
    await migrations.upgrade(url)
    print(f"migrated to head in {time.monotonic() - started:.2f}s")
    await _ensure_channels(sessions)
    task_ids = await _enqueue(sessions)
    for task_id in task_ids:
        await _walk(sessions, task_id)
    await _show_guards(sessions, task_ids[0])
    await _summary(sessions, task_ids)


async def _ensure_channels(sessions: Sessions) -> None:
    for data in CHANNELS:
        try:
            async with sessions() as session, session.begin():
                await channels.create_channel(session, data)
            print(f"channel {data.channel_id} created")
        except ChannelExists:
            print(f"channel {data.channel_id} exists")


async def _enqueue(sessions: Sessions) -> list[uuid.UUID]:
    priorities = list(PriorityLevel)
    ids = []
    async with sessions() as session, session.begin():
        for i, title in enumerate(TITLES):
            data = TaskCreate(notion_page_id=uuid.uuid4().hex, title=title,
                              channel=CHANNELS[i % len(CHANNELS)].channel_id,
                              priority=priorities[i % len(priorities)])
            ids.append((await tasks.enqueue(session, data, actor="demo")).task_id)
    print(f"enqueued {len(ids)} tasks")
    return ids


async def _walk(sessions: Sessions, task_id: uuid.UUID) -> None:
    """Drive one task to ``published``: each step is one short transaction."""
    failed_once = False
    while True:
        async with sessions() as session, session.begin():
            task = await tasks.get_task(session, task_id)
            if task.status is TaskStatus.published:
                break
            failed_once = await _step(session, task, failed_once)
    print(f"  {task.title:<40} published")


async def _step(session: AsyncSession, task: Task, failed_once: bool) -> bool:
    status = task.status
    if status in GATE_BY_WAITING:
        await transitions.approve(session, task.id, actor="reviewer")
    elif status in lifecycle.ERROR:
        plan = await transitions.requeue(session, task.id, actor="ops", reason="demo retry")
        await transitions.transition(session, task.id, plan.resumes_at, actor="worker",
                                     expected=status, note="retry")
    elif status in STAGE_BY_ACTIVE:
        stage = STAGE_BY_ACTIVE[status]
        if "[fail:" + stage.name in task.title and not failed_once:
            await transitions.transition(session, task.id, stage.error, actor="worker",
                                         expected=status, note=f"simulated {stage.name} failure")
            return True
        await transitions.transition(session, task.id, stage.done, actor="worker",
                                     expected=status)
    else:
        target = _forward(status)
        await transitions.transition(session, task.id, target, actor="worker", expected=status)
    return failed_once


def _forward(status: TaskStatus) -> TaskStatus:
    """The next move from a waiting or runnable state: claim, start a stage, or move on."""
    if status is TaskStatus.queued:
        return TaskStatus.claimed
    stage = lifecycle.stage_after(status)
    if stage is not None:
        return stage.active
    return lifecycle.AUTOMATIC.get(status, TaskStatus.queued)


async def _show_guards(sessions: Sessions, task_id: uuid.UUID) -> None:
    try:
        async with sessions() as session, session.begin():
            await transitions.transition(session, task_id, TaskStatus.queued, actor="demo")
    except InvalidTransition as exc:
        print(f"service refused: {exc}")
    if sessions.kw["bind"].dialect.name != "postgresql":
        return
    try:
        async with sessions() as session, session.begin():
            await session.execute(sa.text("UPDATE tasks SET status = 'draft' WHERE id = :id"),
                                  {"id": task_id})
    except DBAPIError as exc:
        print(f"database refused: {str(exc.orig).splitlines()[0]}")


async def _summary(sessions: Sessions, task_ids: list[uuid.UUID]) -> None:
    async with sessions() as session:
        rows = (await session.execute(
            sa.select(Task.title, Task.priority, Task.status, sa.func.count(TaskEvent.id))
            .join(TaskEvent, TaskEvent.task_id == Task.id).where(Task.id.in_(task_ids))
            .group_by(Task.id).order_by(Task.created_at))).all()
    print(tables.render(["task", "priority", "status", "events"],
                        [(t, p.value, s.value, n) for t, p, s, n in rows]))
