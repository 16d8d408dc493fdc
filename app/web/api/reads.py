"""``GET /api/stats``, ``/api/channels`` and ``/api/workers``: what ``pipeline stats``,
``channel list`` and ``workers`` show, as JSON."""

from __future__ import annotations

from fastapi import APIRouter

from app.commands import workers
from app.db import session_scope
from app.services import channels, stats, transitions
from app.web.api.context import Ctx
from app.web.models import ChannelBody, ErrorsSummary, StatsBody, WorkerBody

router = APIRouter(tags=["queue"])


@router.get("/stats", response_model=StatsBody)
async def get_stats(ctx: Ctx) -> StatsBody:
    """Counts by status and channel, what can run now and what is blocked (by reason), queue
    depth and the oldest queued task's age, errors retrying apart from those out of attempts."""
    now = transitions.utcnow()
    async with session_scope(ctx.sessions) as session:
        found = await stats.collect(session, now=now)
    oldest = found.oldest_queued_at
    return StatsBody(
        by_status={s.value: n for s, n in found.by_status().items()},
        by_channel={c: {s.value: n for (ch, s), n in found.counts.items() if ch == c}
                    for c in found.channels()},
        runnable=found.runnable, blocked=dict(found.blocked), next_slot_at=found.next_slot_at,
        queued=found.queued,
        oldest_queued_age_seconds=(now - oldest).total_seconds() if oldest else None,
        errors=ErrorsSummary(retrying=found.retrying, next_retry_at=found.next_retry_at,
                             out_of_attempts=found.out_of_attempts))


@router.get("/channels", response_model=list[ChannelBody])
async def list_channels(ctx: Ctx) -> list[ChannelBody]:
    """Every channel with its cap, whether it is active and how many of its tasks can run."""
    async with session_scope(ctx.sessions) as session:
        found = await channels.list_channels(session)
        return [ChannelBody.model_validate(channel).model_copy(
            update={"runnable": await channels.runnable_tasks(session, channel)})
            for channel in found]


@router.get("/workers", response_model=list[WorkerBody])
async def list_workers(ctx: Ctx) -> list[WorkerBody]:
    """The live worker processes (from their registry in Redis) and the tasks each holds."""
    return [WorkerBody(**record.__dict__, holds=holds)
            for record, holds in await workers.live_workers(ctx)]
