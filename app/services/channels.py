"""Channels: create, look up by YouTube channel id, list, deactivate. Never commits."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Channel
from app.errors import ChannelExists, ChannelInactive, ChannelNotFound
from app.schemas import ChannelCreate


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
