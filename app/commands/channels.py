"""``pipeline channel add | list | deactivate``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pydantic import ValidationError

from app.commands import tables
from app.commands.context import Context
from app.db import session_scope
from app.db.models import Channel
from app.errors import PipelineError
from app.schemas import ChannelCreate, ChannelResponse, field_errors
from app.services import channels

HEADERS = ("channel_id", "name", "active", "max_concurrent", "created")


class BadChannel(PipelineError):
    """The channel's fields are invalid."""


def _rows(found: Sequence[Channel]) -> list[tuple[object, ...]]:
    return [(c.channel_id, c.channel_name, "yes" if c.is_active else "no", c.max_concurrent,
             f"{c.created_at:%Y-%m-%d %H:%M}") for c in found]


def _json(found: Sequence[Channel]) -> list[dict[str, object]]:
    return [ChannelResponse.model_validate(c).model_dump(mode="json") for c in found]


async def add(ctx: Context, args: argparse.Namespace) -> int:
    try:
        data = ChannelCreate(channel_id=args.channel_id, channel_name=args.name,
                             max_concurrent=args.max_concurrent)
    except ValidationError as exc:
        field, message = field_errors(exc)[0]
        raise BadChannel(f"channel {args.channel_id!r}: {field}: {message}") from None
    async with session_scope(ctx.sessions) as session:
        channel = await channels.create_channel(session, data)
    ctx.emit(_json([channel])[0], tables.render(HEADERS, _rows([channel])))
    return 0


async def list_(ctx: Context, args: argparse.Namespace) -> int:
    async with session_scope(ctx.sessions) as session:
        found = await channels.list_channels(session)
    ctx.emit(_json(found), tables.render(HEADERS, _rows(found)) if found else "no channels")
    return 0


async def deactivate(ctx: Context, args: argparse.Namespace) -> int:
    async with session_scope(ctx.sessions) as session:
        channel = await channels.deactivate_channel(session, args.channel_id)
    ctx.emit(_json([channel])[0], f"channel {channel.channel_id} deactivated: its queued tasks "
             "wait, running stages finish")
    return 0
