"""``pipeline prune`` at scale: 100,000 published tasks removed in bounded batches, each its
own transaction, while real workers publish other tasks in the same database."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from app.db.models import Channel, Task, TaskEvent
from app.execution import wakeups
from app.lifecycle import TaskStatus
from app.moves import utcnow
from app.services import retention
from tests import workerprocs
from tests.workerprocs import Sessions, Workers, seed, wait_published

db, queue, workers = workerprocs.db, workerprocs.queue, workerprocs.workers   # fixtures

PIPELINE = Path(sys.executable).with_name("pipeline")
OLD = 100_000


async def test_prune_of_100k_tasks_goes_in_batches_while_workers_run(
        db: tuple[str, Sessions], workers: Workers, redis_url: str, queue: str) -> None:
    url, sessions = db
    live = await seed(sessions, [None, 2], per_channel=10)
    async with sessions() as session, session.begin():
        channel = Channel(channel_id="UCarchive", channel_name="Archive")
        session.add(channel)
        await session.flush()
        old = utcnow() - timedelta(days=60)
        await session.execute(sa.text(
            "INSERT INTO tasks (channel_id, notion_page_id, title, status, published_at)"
            " SELECT :c, md5('old' || g), 'Old ' || g, 'published', :old"
            " FROM generate_series(1, :n) g"), {"c": channel.id, "old": old, "n": OLD})
        await session.execute(sa.text(
            "INSERT INTO task_events (task_id, from_status, to_status, actor, created_at)"
            " SELECT id, 'uploading', 'published', 'w', :old FROM tasks WHERE channel_id = :c"),
            {"c": channel.id, "old": old})
    workers.start(**workerprocs.FAST)
    await wakeups.wake_url(redis_url, len(live), queue_name=queue)

    env = os.environ | {"DATABASE_URL": url, "REDIS_URL": redis_url, "QUEUE_NAME": queue}
    proc = await asyncio.create_subprocess_exec(
        str(PIPELINE), "prune", "--older-than", "30d", "--published-only", "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(300):
        out, err = await proc.communicate()
    stderr = err.decode()
    assert proc.returncode == 0, stderr
    report = json.loads(out)
    assert (report["tasks"], report["task_events"]) == (OLD, OLD)
    assert report["batches"] >= OLD // retention.BATCH          # never one long transaction
    assert len([line for line in stderr.splitlines() if line.startswith("prune [")]) >= 5

    await wait_published(sessions, len(live), timeout_s=120)
    async with sessions() as session:
        left = await session.scalar(sa.select(sa.func.count()).select_from(Task)
                                    .where(Task.channel_id == channel.id))
        events = await session.scalar(sa.select(sa.func.count()).select_from(TaskEvent)
                                      .where(TaskEvent.task_id.in_(live)))
        published = await session.scalar(sa.select(sa.func.count()).select_from(Task)
                                         .where(Task.status == TaskStatus.published))
    assert left == 0
    assert published == len(live) and events and events >= len(live)
