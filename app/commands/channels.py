"""``pipeline channel add | list | activate | deactivate | update | remove``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pydantic import ValidationError

from app.commands import tables
from app.commands.context import Context
from app.db import session_scope
from app.db.models import Channel
from app.errors import PipelineError
from app.schemas import ChannelCreate, ChannelResponse, ChannelUpdate, field_errors
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


async def activate(ctx: Context, args: argparse.Namespace) -> int:
    async with session_scope(ctx.sessions) as session:
        channel = await channels.activate_channel(session, args.channel_id)
        waiting = await channels.runnable_tasks(session, channel)
    await ctx.wake(waiting)
    ctx.emit(_json([channel])[0] | {"runnable": waiting},
             f"channel {channel.channel_id} active: {waiting} task(s) of it can be claimed")
    return 0


async def update(ctx: Context, args: argparse.Namespace) -> int:
    given: dict[str, object] = {}
    if args.name is not None:
        given["channel_name"] = args.name
    if args.no_limit:
        given["max_concurrent"] = None
    elif args.max_concurrent is not None:
        given["max_concurrent"] = args.max_concurrent
    changes = channel_changes(args.channel_id, given,
                              hint="give --name, --max-concurrent N or --no-limit")
    async with session_scope(ctx.sessions) as session:
        channel = await channels.update_channel(session, args.channel_id, changes)
        waiting = await channels.runnable_tasks(session, channel)
    await ctx.wake(waiting)          # a higher cap (or none) may free slots
    ctx.emit(_json([channel])[0], updated(channel.channel_id, channel.channel_name,
                                          channel.max_concurrent))
    return 0


def channel_changes(channel_id: str, given: dict[str, object], *, hint: str) -> ChannelUpdate:
    """The changes asked of a channel, validated (``BadChannel`` names what is wrong; ``hint``
    says how to ask for one when none was given)."""
    if not given:
        raise BadChannel(f"channel {channel_id!r}: nothing to change ({hint})")
    try:
        return ChannelUpdate(**given)
    except ValidationError as exc:
        field, message = field_errors(exc)[0]
        raise BadChannel(f"channel {channel_id!r}: {field}: {message}") from None


def updated(channel_id: str, name: str, max_concurrent: int | None) -> str:
    """What an update says it did."""
    cap = ("no limit" if max_concurrent is None
           else f"at most {max_concurrent} task(s) active at once")
    return f"channel {channel_id} updated: {name!r}, {cap}"
    return 0


async def remove(ctx: Context, args: argparse.Namespace) -> int:
    async with session_scope(ctx.sessions) as session:
        await channels.remove_channel(session, args.channel_id)
    ctx.emit({"channel_id": args.channel_id, "removed": True},
             f"channel {args.channel_id} removed")
    return 0
