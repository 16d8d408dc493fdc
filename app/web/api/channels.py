"""Channel writes: add, activate, deactivate and update, each with a dry run (the real change in a
transaction that is rolled back: what it would give, and nothing kept)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from app.commands.channels import channel_changes, updated
from app.db import session_scope
from app.db.models import Channel
from app.schemas import ChannelCreate
from app.services import channels
from app.web.api.context import Ctx, rehearsal
from app.web.models import ChannelBody, ChannelChange, ChannelNew, ChannelResult, DryRun

router = APIRouter(tags=["channels"])
Change = Callable[[AsyncSession], Awaitable[Channel]]


async def _run(ctx: Ctx, change: Change, *, dry_run: bool, wake: bool) -> ChannelBody:
    """``change`` committed (then the workers woken when ``wake``), or rehearsed."""
    scope = rehearsal(ctx.sessions) if dry_run else session_scope(ctx.sessions)
    async with scope as session:
        channel = await change(session)
        body = ChannelBody.model_validate(channel).model_copy(
            update={"runnable": await channels.runnable_tasks(session, channel)})
    if wake and not dry_run:
        await ctx.wake(body.runnable or 0)
    return body


@router.post("/channels", response_model=ChannelResult)
async def add(ctx: Ctx, body: ChannelNew) -> ChannelResult:
    """Add a channel (409 when its YouTube id is taken), as ``pipeline channel add``."""
    data = ChannelCreate(**body.model_dump(exclude={"dry_run"}))
    found = await _run(ctx, lambda s: channels.create_channel(s, data), dry_run=body.dry_run,
                       wake=False)
    return ChannelResult(dry_run=body.dry_run, channel=found,
                         message=f"channel {found.channel_id} added")


@router.post("/channels/{channel_id}/activate", response_model=ChannelResult)
async def activate(ctx: Ctx, channel_id: str, body: DryRun | None = None) -> ChannelResult:
    """Claim the channel's tasks again (idempotent); the workers are woken."""
    dry_run = body.dry_run if body else False
    found = await _run(ctx, lambda s: channels.activate_channel(s, channel_id),
                       dry_run=dry_run, wake=True)
    return ChannelResult(dry_run=dry_run, channel=found, message=(
        f"channel {found.channel_id} active: {found.runnable} task(s) of it can be claimed"))


@router.post("/channels/{channel_id}/deactivate", response_model=ChannelResult)
async def deactivate(ctx: Ctx, channel_id: str, body: DryRun | None = None) -> ChannelResult:
    """Stop claiming the channel's tasks (idempotent); running stages finish."""
    dry_run = body.dry_run if body else False
    found = await _run(ctx, lambda s: channels.deactivate_channel(s, channel_id),
                       dry_run=dry_run, wake=False)
    return ChannelResult(dry_run=dry_run, channel=found, message=(
        f"channel {found.channel_id} deactivated: its queued tasks wait, running stages"
        " finish"))


@router.patch("/channels/{channel_id}", response_model=ChannelResult)
async def update(ctx: Ctx, channel_id: str, body: ChannelChange) -> ChannelResult:
    """Rename the channel or change its cap (``max_concurrent`` null: no cap); a higher cap
    wakes the workers."""
    changes = channel_changes(channel_id, body.model_dump(exclude_unset=True,
                                                          exclude={"dry_run"}),
                              hint="give channel_name or max_concurrent")
    found = await _run(ctx, lambda s: channels.update_channel(s, channel_id, changes),
                       dry_run=body.dry_run, wake=True)
    return ChannelResult(dry_run=body.dry_run, channel=found, message=updated(
        found.channel_id, found.channel_name, found.max_concurrent))
