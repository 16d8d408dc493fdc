"""Quotas: at most N starts of a stage (or of every stage) in any rolling window, per channel
or shared by all channels.

The claim enforces them (``app.db.ddl.claim_task``: spent quotas are passed over, each start
is counted under its buckets' locks); this module sets, lists and removes them, reads what is
spent and until when, and pauses a quota when a provider says so (``RateLimited``). Functions
take the session first and never commit.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.ddl.claim_task import EVERY_STAGE, SHARED
from app.db.models import Channel, Quota, QuotaUsage
from app.errors import BadQuota, QuotaNotFound
from app.lifecycle import STAGE_BY_NAME

SHARED_KEY = uuid.UUID(SHARED)
_RATE = re.compile(r"(\d+)\s*/\s*(\d+)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
#: What ``quota set`` accepts for "every stage".
EVERY = ("all", EVERY_STAGE)


def stage_name(text: str) -> str:
    """A stage's name, or ``*`` for every stage (``all``)."""
    name = text.strip().lower()
    if name in EVERY:
        return EVERY_STAGE
    if name not in STAGE_BY_NAME:
        raise BadQuota(f"stage {text!r}: expected one of {', '.join(STAGE_BY_NAME)} or all")
    return name


def rate(text: str) -> tuple[int, int]:
    """``LIMIT/WINDOW`` (``6/24h``, ``30/1h``, ``2/30s``, ``100/7d``) as (starts, seconds)."""
    found = _RATE.fullmatch(text.strip().lower())
    if found is None:
        raise BadQuota(f"{text!r}: expected LIMIT/WINDOW, a number of starts and a window such"
                       " as 6/24h, 30/1h, 100/10m or 2/30s")
    limit, window = int(found.group(1)), int(found.group(2)) * _UNITS[found.group(3)]
    if limit < 1 or window < 1:
        raise BadQuota(f"{text!r}: the limit and the window must be at least 1")
    if limit > 1_000_000 or window > 366 * 86_400:
        raise BadQuota(f"{text!r}: at most 1000000 starts and a window of at most 366d")
    return limit, window


def window_text(seconds: int) -> str:
    """The window in its largest whole unit: ``24h``, ``10m``, ``45s``."""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and (unit != "d" or seconds > 2 * 86_400):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def scope(per_channel: bool) -> str:
    return "per-channel" if per_channel else "shared"


def display(stage: str) -> str:
    """A stage name as people write it (``all`` for every stage)."""
    return "all" if stage == EVERY_STAGE else stage


def describe(stage: str, max_starts: int, window_s: int, per_channel: bool) -> str:
    """``upload: 6 starts per 24h per channel``."""
    return (f"{display(stage)}: {max_starts} starts per {window_text(window_s)}"
            f" {'per channel' if per_channel else 'shared by all channels'}")


@dataclass(frozen=True)
class Bucket:
    """One quota's starts still in its window, for one channel (or shared: ``channel_id`` is
    None), and when it can start again if it is spent now."""

    quota: Quota
    channel_id: uuid.UUID | None
    used: int
    paused_until: datetime | None
    #: None: not spent now.
    next_slot: datetime | None


async def set_quota(session: AsyncSession, *, stage: str, per_channel: bool, max_starts: int,
                    window_s: int) -> tuple[Quota, bool]:
    """Set the quota on ``stage`` and scope, replacing one set before (its recorded starts
    count against the new limit). Returns it and whether it replaced one."""
    old = await session.scalar(sa.select(Quota).where(Quota.stage == stage,
                                                      Quota.per_channel == per_channel))
    if old is not None:
        old.max_starts, old.window_s = max_starts, window_s
        await session.flush()
        if session.get_bind().dialect.name == "postgresql":   # when its buckets free now
            await session.execute(sa.text("SELECT quota_refresh(:id)"), {"id": old.id})
            await session.execute(sa.select(QuotaUsage).where(QuotaUsage.quota_id == old.id)
                                  .execution_options(populate_existing=True))
        return old, True
    quota = Quota(stage=stage, per_channel=per_channel, max_starts=max_starts, window_s=window_s)
    session.add(quota)
    await session.flush()
    return quota, False


async def list_quotas(session: AsyncSession) -> list[Quota]:
    return list((await session.scalars(
        sa.select(Quota).order_by(Quota.stage, Quota.per_channel))).all())


async def remove_quota(session: AsyncSession, *, stage: str, per_channel: bool) -> None:
    """Remove a quota (its buckets go with it); ``QuotaNotFound`` if there is none."""
    gone = await session.execute(sa.delete(Quota).where(Quota.stage == stage,
                                                        Quota.per_channel == per_channel)
                                 .returning(Quota.id))
    if gone.first() is None:
        raise QuotaNotFound(stage, scope(per_channel))


async def buckets(session: AsyncSession) -> tuple[datetime, list[Bucket]]:
    """Every bucket, by the database's clock (the one the claim reads), and that clock. What is
    spent is read from the row (``blocked_until``, written with each start); ``used`` counts the
    starts in the window, for showing."""
    now = await session.scalar(sa.select(sa.func.clock_timestamp()))
    assert now is not None
    rows = (await session.execute(
        sa.select(Quota, QuotaUsage).join(QuotaUsage, QuotaUsage.quota_id == Quota.id)
        .order_by(Quota.stage, Quota.per_channel, QuotaUsage.channel_id))).all()
    found = []
    for quota, usage in rows:
        since = now - timedelta(seconds=quota.window_s)
        counts = usage.counts or [1] * len(usage.starts)
        used = sum(n for start, n in zip(usage.starts, counts, strict=True) if start > since)
        paused = usage.paused_until if usage.paused_until and usage.paused_until > now else None
        slot = usage.blocked_until if usage.blocked_until and usage.blocked_until > now else None
        channel = None if usage.channel_id == SHARED_KEY else usage.channel_id
        found.append(Bucket(quota, channel, used, paused, slot))
    return now, found


@dataclass(frozen=True)
class Spent:
    """The stages that cannot start now, and when each can: by channel (None: every channel,
    a shared quota) and stage name."""

    until: dict[tuple[uuid.UUID | None, str], datetime]

    def next_slot(self, channel_id: uuid.UUID, stage: str) -> datetime | None:
        """When ``stage`` can next start on ``channel_id``; None if it can now."""
        slots = [self.until.get((key, name)) for key in (channel_id, None)
                 for name in (stage, EVERY_STAGE)]
        times = [slot for slot in slots if slot is not None]
        return max(times) if times else None


async def spent(session: AsyncSession) -> Spent:
    """What is spent now (see ``Spent``); nothing on SQLite, where no claim runs."""
    if session.get_bind().dialect.name != "postgresql":
        return Spent({})
    _, found = await buckets(session)
    until: dict[tuple[uuid.UUID | None, str], datetime] = {}
    for bucket in found:
        if bucket.next_slot is None:
            continue
        key = (bucket.channel_id, bucket.quota.stage)
        until[key] = max(until.get(key, bucket.next_slot), bucket.next_slot)
    return Spent(until)


async def pause(session: AsyncSession, *, channel_id: uuid.UUID, stage: str,
                seconds: float) -> int:
    """Pause every quota a start of ``stage`` on ``channel_id`` counts against for ``seconds``
    (a provider's rate limit); how many buckets were paused (0: the stage has no quota)."""
    return int(await session.scalar(
        sa.text("SELECT quota_pause(:channel, :stage, :seconds)"),
        {"channel": channel_id, "stage": stage, "seconds": seconds}) or 0)




#: Drop the starts that left their window (an entry of several with its newest), and pauses
#: and blocks that have passed, from the buckets no claim holds now (a held bucket is cleaned by
#: its own claim's write).
CLEAN = sa.text("""
UPDATE quota_usage u
   SET starts = ARRAY(SELECT e.s FROM unnest(u.starts) WITH ORDINALITY e (s, i)
                      WHERE e.s > n.since ORDER BY e.i),
       counts = ARRAY(SELECT e.c FROM unnest(u.starts, u.counts) WITH ORDINALITY e (s, c, i)
                      WHERE e.c IS NOT NULL AND e.s > n.since ORDER BY e.i),
       paused_until = CASE WHEN u.paused_until > n.now THEN u.paused_until END,
       blocked_until = CASE WHEN u.blocked_until > n.now THEN u.blocked_until END
  FROM quotas q
 CROSS JOIN LATERAL (SELECT c.now, c.now - make_interval(secs => q.window_s) AS since
                       FROM (SELECT clock_timestamp() AS now) c) n
 WHERE q.id = u.quota_id AND (u.channel_id, u.quota_id) IN (
       SELECT v.channel_id, v.quota_id FROM quota_usage v JOIN quotas w ON w.id = v.quota_id
        WHERE v.starts[1] <= clock_timestamp() - make_interval(secs => w.window_s)
           OR v.paused_until <= clock_timestamp() OR v.blocked_until <= clock_timestamp()
          FOR UPDATE OF v SKIP LOCKED)""")


async def clean(session: AsyncSession) -> int:
    """Clean the buckets as their windows pass (``CLEAN``; the workers' sweep runs it): how
    many were cleaned. Nothing on SQLite, where no claim runs."""
    if session.get_bind().dialect.name != "postgresql":
        return 0
    result = await session.execute(CLEAN)
    return int(getattr(result, "rowcount", 0) or 0)


async def channel_names(session: AsyncSession) -> dict[uuid.UUID, str]:
    """The YouTube channel id of each channel row (for showing buckets)."""
    rows = await session.execute(sa.select(Channel.id, Channel.channel_id))
    return {row.id: row.channel_id for row in rows}
