"""Channels: create, look up by YouTube channel id, list, activate, deactivate, update,
remove. Never commits."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Channel, Task
from app.errors import ChannelExists, ChannelHasTasks, ChannelInactive, ChannelNotFound
from app.lifecycle import RUNNABLE
from app.schemas import ChannelCreate, ChannelUpdate


async def create_channel(session: AsyncSession, data: ChannelCreate) -> Channel:
    """Insert a channel; ``ChannelExists`` if its YouTube id is taken (decided by the database)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = (insert(Channel).values(**data.model_dump())
            .on_conflict_do_nothing(index_elements=[Channel.channel_id]).returning(Channel))
    channel = (await session.execute(stmt)).scalar_one_or_none()
    if channel is None:
        raise ChannelExists(data.channel_id)
    return channel


async def get_channel(session: AsyncSession, channel_id: str, *,
                      require_active: bool = False) -> Channel:
    """The channel with this YouTube id; ``ChannelNotFound`` / ``ChannelInactive``."""
    channel = await session.scalar(sa.select(Channel).where(Channel.channel_id == channel_id))
    if channel is None:
        raise ChannelNotFound(channel_id)
    if require_active and not channel.is_active:
        raise ChannelInactive(channel_id)
    return channel


async def list_channels(session: AsyncSession) -> list[Channel]:
    return list(await session.scalars(sa.select(Channel).order_by(Channel.channel_id)))


async def deactivate_channel(session: AsyncSession, channel_id: str) -> Channel:
    """Stop claiming the channel's tasks (running stages finish); idempotent."""
    channel = await get_channel(session, channel_id)
    channel.is_active = False
    await session.flush()
    await session.refresh(channel)      # updated_at is set by the database trigger
    return channel


async def activate_channel(session: AsyncSession, channel_id: str) -> Channel:
    """Claim the channel's tasks again; idempotent."""
    channel = await get_channel(session, channel_id)
    channel.is_active = True
    await session.flush()
    await session.refresh(channel)
    return channel


async def update_channel(session: AsyncSession, channel_id: str, changes: ChannelUpdate) -> Channel:
    """Rename the channel or change its cap (``max_concurrent`` None: no limit). Lowering the cap
    below the stages running now stops nobody: the channel takes no new task until it is under."""
    channel = await get_channel(session, channel_id)
    for field, value in changes.model_dump(exclude_unset=True).items():
        setattr(channel, field, value)
    await session.flush()
    await session.refresh(channel)
    return channel


async def remove_channel(session: AsyncSession, channel_id: str) -> Channel:
    """Delete a channel that has no tasks; ``ChannelHasTasks`` otherwise (the foreign key
    refuses it too, so a task added meanwhile cannot be orphaned)."""
    channel = await get_channel(session, channel_id)
    count = await session.scalar(sa.select(sa.func.count()).select_from(Task)
                                 .where(Task.channel_id == channel.id))
    if count:
        raise ChannelHasTasks(channel_id, count)
    try:
        async with session.begin_nested():
            await session.delete(channel)
    except sa.exc.IntegrityError:
        raise ChannelHasTasks(channel_id, await session.scalar(
            sa.select(sa.func.count()).select_from(Task)
            .where(Task.channel_id == channel.id)) or 1) from None
    return channel


async def runnable_tasks(session: AsyncSession, channel: Channel) -> int:
    """How many of the channel's tasks wait for a claim (workers to wake)."""
    return await session.scalar(sa.select(sa.func.count()).select_from(Task).where(
        Task.channel_id == channel.id, Task.status.in_(RUNNABLE))) or 0
