"""Factories that insert rows directly, in any status (no walking through the lifecycle)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Channel, Task
from app.lifecycle import PriorityLevel, TaskStatus


def page_id() -> str:
    return uuid.uuid4().hex


async def make_channel(session: AsyncSession, **overrides: Any) -> Channel:
    suffix = uuid.uuid4().hex[:12]
    values: dict[str, Any] = {"channel_id": f"UC{suffix}", "channel_name": f"Channel {suffix}"}
    channel = Channel(**(values | overrides))
    session.add(channel)
    await session.flush()
    return channel


async def make_task(
    session: AsyncSession, channel: Channel, status: TaskStatus = TaskStatus.queued,
    **overrides: Any,
) -> Task:
    values: dict[str, Any] = {
        "id": uuid.uuid4(), "channel_id": channel.id, "notion_page_id": page_id(),
        "title": "A video", "status": status, "priority": PriorityLevel.normal,
    }
    task = Task(**(values | overrides))
    session.add(task)
    await session.flush()
    return task
