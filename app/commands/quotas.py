"""``pipeline quota set | list | remove``: rate limits on stage starts.

``quota set STAGE LIMIT/WINDOW (--per-channel | --shared)``: at most LIMIT starts of STAGE (or of
every stage: ``all``) in any rolling WINDOW, counted for each channel or across all of them.
Setting it again replaces it. ``quota list`` shows each quota with its busiest bucket: starts in
the window now, and when a spent one frees.
"""

from __future__ import annotations

import argparse
import uuid
from datetime import datetime

from app.commands import tables
from app.commands.context import Context
from app.db import session_scope
from app.db.models import Quota
from app.services import quotas
from app.services.quotas import Bucket

HEADERS = ("stage", "scope", "limit", "window", "busiest", "used", "spent until", "paused until")


def _at(value: datetime | None) -> str | None:
    return None if value is None else f"{value.astimezone():%Y-%m-%d %H:%M:%S}"


def check(args: argparse.Namespace) -> None:
    """The STAGE (and LIMIT/WINDOW) of ``quota set`` or ``remove``, checked before the database
    is opened: ``BadQuota`` names a bad one."""
    quotas.stage_name(args.stage)
    if getattr(args, "rate", None) is not None:
        quotas.rate(args.rate)


async def set_(ctx: Context, args: argparse.Namespace) -> int:
    stage = quotas.stage_name(args.stage)
    limit, window_s = quotas.rate(args.rate)
    async with session_scope(ctx.sessions) as session:
        quota, replaced = await quotas.set_quota(session, stage=stage,
                                                 per_channel=args.per_channel,
                                                 max_starts=limit, window_s=window_s)
        data = quota_json(quota, [])
    what = quotas.describe(stage, limit, window_s, args.per_channel)
    ctx.emit(data | {"replaced": replaced},
             f"quota {'replaced' if replaced else 'set'}: {what}")
    return 0


async def list_(ctx: Context, args: argparse.Namespace) -> int:
    async with session_scope(ctx.sessions) as session:
        found = await quotas.list_quotas(session)
        _, buckets = await quotas.buckets(session)
        names = await quotas.channel_names(session)
    rows, data = [], []
    for quota in found:
        mine = [b for b in buckets if b.quota.id == quota.id]
        data.append(quota_json(quota, mine, names))
        busiest = max(mine, key=lambda b: (b.next_slot is not None, b.used), default=None)
        where = None if busiest is None or busiest.channel_id is None \
            else names.get(busiest.channel_id, str(busiest.channel_id))
        rows.append((quotas.display(quota.stage), quotas.scope(quota.per_channel), quota.max_starts,
                     quotas.window_text(quota.window_s), where,
                     busiest.used if busiest else 0,
                     _at(busiest.next_slot) if busiest else None,
                     _at(busiest.paused_until) if busiest else None))
    ctx.emit(data, tables.render(HEADERS, rows) if rows else "no quotas")
    return 0


async def remove(ctx: Context, args: argparse.Namespace) -> int:
    stage = quotas.stage_name(args.stage)
    async with session_scope(ctx.sessions) as session:
        await quotas.remove_quota(session, stage=stage, per_channel=args.per_channel)
    scope = quotas.scope(args.per_channel)
    ctx.emit({"stage": quotas.display(stage), "scope": scope, "removed": True},
             f"removed the {scope} quota on {quotas.display(stage)}")
    return 0


def quota_json(quota: Quota, buckets: list[Bucket], names: dict[uuid.UUID, str] | None = None,
               *, iso: bool = False) -> dict[str, object]:
    """A quota and its buckets for ``--json`` and the API (``iso``: times as ISO strings)."""
    def when(value: datetime | None) -> object:
        return value.isoformat() if iso and value is not None else value

    return {"stage": quotas.display(quota.stage), "scope": quotas.scope(quota.per_channel),
            "limit": quota.max_starts, "window_s": quota.window_s,
            "window": quotas.window_text(quota.window_s),
            "buckets": [{"channel": None if b.channel_id is None
                         else (names or {}).get(b.channel_id, str(b.channel_id)),
                         "used": b.used, "spent_until": when(b.next_slot),
                         "paused_until": when(b.paused_until)} for b in buckets]}
