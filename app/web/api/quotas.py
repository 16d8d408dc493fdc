"""Quotas: list, set and remove, as ``pipeline quota`` (set and remove with a dry run)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.commands.quotas import quota_json
from app.db import session_scope
from app.services import quotas
from app.web.api.context import Ctx, rehearsal

reads = APIRouter(tags=["quotas"])
writes = APIRouter(tags=["quotas"])
Scope = Literal["per-channel", "shared"]


class QuotaBucket(BaseModel):
    #: The channel's YouTube id; null for a shared quota's one bucket.
    channel: str | None
    used: int
    spent_until: str | None
    paused_until: str | None


class QuotaBody(BaseModel):
    stage: str
    scope: Scope
    limit: int
    window_s: int
    window: str
    buckets: list[QuotaBucket]


class QuotaSet(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    #: ``LIMIT/WINDOW``: ``6/24h``, ``30/1h``, ``2/30s``.
    rate: str = Field(examples=["6/24h"])
    dry_run: bool = False


class QuotaResult(BaseModel):
    dry_run: bool
    replaced: bool = False
    removed: bool = False
    quota: QuotaBody | None = None
    message: str


@reads.get("/quotas", response_model=list[QuotaBody])
async def list_quotas(ctx: Ctx) -> list[QuotaBody]:
    """Every quota with its buckets: starts in the window now, until when a spent one waits."""
    async with session_scope(ctx.sessions) as session:
        found = await quotas.list_quotas(session)
        _, buckets = await quotas.buckets(session)
        names = await quotas.channel_names(session)
    return [QuotaBody.model_validate(quota_json(q, [b for b in buckets if b.quota.id == q.id],
                                                names, iso=True)) for q in found]


@writes.put("/quotas/{stage}/{scope}", response_model=QuotaResult)
async def set_quota(ctx: Ctx, stage: str, scope: Scope, body: QuotaSet) -> QuotaResult:
    """At most LIMIT starts of STAGE (or ``all``) in any rolling WINDOW, per channel or shared;
    setting it again replaces it."""
    name = quotas.stage_name(stage)
    limit, window_s = quotas.rate(body.rate)
    per_channel = scope == "per-channel"
    run = rehearsal(ctx.sessions) if body.dry_run else session_scope(ctx.sessions)
    async with run as session:
        quota, replaced = await quotas.set_quota(session, stage=name, per_channel=per_channel,
                                                 max_starts=limit, window_s=window_s)
        data = QuotaBody.model_validate(quota_json(quota, [], iso=True))
    await ctx.wake(ctx.settings.worker_concurrency)       # a higher limit may free work
    what = quotas.describe(name, limit, window_s, per_channel)
    return QuotaResult(dry_run=body.dry_run, replaced=replaced, quota=data,
                       message=f"quota {'replaced' if replaced else 'set'}: {what}")


@writes.delete("/quotas/{stage}/{scope}", response_model=QuotaResult)
async def remove_quota(ctx: Ctx, stage: str, scope: Scope,
                       dry_run: bool = False) -> QuotaResult:
    """Remove a quota (404 when there is none); its work is claimable at once."""
    name = quotas.stage_name(stage)
    run = rehearsal(ctx.sessions) if dry_run else session_scope(ctx.sessions)
    async with run as session:
        await quotas.remove_quota(session, stage=name, per_channel=scope == "per-channel")
    if not dry_run:
        await ctx.wake(ctx.settings.worker_concurrency)
    return QuotaResult(dry_run=dry_run, removed=True,
                       message=f"removed the {scope} quota on {quotas.display(name)}")
