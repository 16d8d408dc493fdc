"""A quota bucket's record (``quota_merge``): exact up to ``EXACT_STARTS`` starts, never letting
more starts into a window than the limit past that, freeing at most one slice late, and small
whatever the limit; several starts recorded together (``quota_admit``) as one by one; and what
the claims and the cleaning make of it."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app.db.ddl import merge_0016
from app.db.ddl.claim_task import EXACT_STARTS, QUOTA_ADMIT, QUOTA_MERGE, SLICES
from app.db.models import QuotaUsage, Task
from app.services import claims, quotas
from tests.workerprocs import Sessions, db, seed

__all__ = ["db"]

WINDOW_S = 60
SLICE = timedelta(seconds=WINDOW_S / SLICES)
BASE = datetime(2026, 1, 1, tzinfo=UTC)
MERGE = sa.text(f"SELECT m.starts, m.counts, m.frees FROM {QUOTA_MERGE}("
                "CAST(:starts AS timestamptz[]), CAST(:counts AS integer[]), :at, :max, :window)"
                " m")
ADMIT = sa.text(f"SELECT a.starts, a.counts, a.blocked_until, a.admitted FROM {QUOTA_ADMIT}("
                "CAST(:starts AS timestamptz[]), CAST(:counts AS integer[]), :blocked, :paused,"
                " :at, :max, :window, :n) a")


def _in(starts: list[datetime], since: datetime, until: datetime) -> int:
    """Starts in ``(since, until]``."""
    return sum(1 for s in starts if since < s <= until)


async def _run(sessions: Sessions, limit: int, attempts: int, seed_: int) -> tuple[
        list[tuple[datetime, bool]], list[datetime], int, int]:
    """Attempts at random times (about twice the limit per window, in bursts), each let in
    when the bucket does not block it (as a claim checks ``blocked_until``) and then recorded:
    every attempt with whether it got in, the starts let in, the longest record and the
    largest count of one entry."""
    rng = random.Random(seed_)
    starts: list[datetime] = []
    counts: list[int] = []
    frees: datetime | None = None
    let_in: list[datetime] = []
    tried: list[tuple[datetime, bool]] = []
    longest = widest = 0
    at = BASE
    async with sessions() as session:
        for _ in range(attempts):
            gap = rng.expovariate(2 * limit / WINDOW_S) * rng.choice((0.2, 1.0, 3.0))
            at += timedelta(seconds=gap, microseconds=1)
            ok = frees is None or frees <= at
            tried.append((at, ok))
            if not ok:
                continue
            let_in.append(at)
            row = (await session.execute(MERGE, {"starts": starts, "counts": counts, "at": at,
                                                 "max": limit, "window": WINDOW_S})).one()
            starts, counts, frees = list(row.starts), list(row.counts), row.frees
            longest = max(longest, len(starts))
            widest = max([widest, *counts])
    return tried, let_in, longest, widest


@pytest.mark.parametrize("limit", [1, 2, 6, EXACT_STARTS])
async def test_a_quota_of_up_to_exact_starts_is_counted_exactly(
        db: tuple[str, Sessions], limit: int) -> None:
    """Every attempt gets in exactly when fewer than ``limit`` starts stand in the window before
    it: the rolling window, to the microsecond."""
    _, sessions = db
    tried, let_in, longest, widest = await _run(sessions, limit, 400, limit)
    window = timedelta(seconds=WINDOW_S)
    for at, ok in tried:
        assert ok == (_in(let_in, at - window, at - timedelta(microseconds=1)) < limit), at
    assert any(not ok for _, ok in tried) and longest <= limit and widest <= 1


@pytest.mark.parametrize("limit", [EXACT_STARTS + 1, 150, 400])
async def test_a_larger_quota_never_lets_more_in_and_frees_at_most_a_slice_late(
        db: tuple[str, Sessions], limit: int) -> None:
    """Past ``EXACT_STARTS`` entries starts of one slice share an entry: no window ever holds
    more than ``limit`` starts, an attempt is turned away only when the window widened by one
    slice holds ``limit``, and the record stays within ``EXACT_STARTS + SLICES + 1`` entries."""
    _, sessions = db
    tried, let_in, longest, widest = await _run(sessions, limit, 1_500, limit)
    window = timedelta(seconds=WINDOW_S)
    for at, ok in tried:
        before = at - timedelta(microseconds=1)
        if ok:
            assert _in(let_in, at - window, before) < limit, at
        else:
            assert _in(let_in, at - window - SLICE, before) >= limit, at
    assert max(_in(let_in, s - window, s) for s in let_in) <= limit
    assert any(not ok for _, ok in tried) and widest > 1         # spent, and entries merged
    assert longest <= EXACT_STARTS + SLICES + 1


async def test_a_claim_brings_a_long_record_down_and_counts_every_start(
        db: tuple[str, Sessions]) -> None:
    """A bucket kept as before (every start its own, 3,000 of them in the window) is brought
    within bounds by the next claim of its stage; ``stats`` still counts every start, and the
    cleaning drops entries with their counts."""
    _, sessions = db
    [task_id] = await seed(sessions, [None], 1)
    now = datetime.now(UTC)
    async with sessions() as session, session.begin():
        quota, _ = await quotas.set_quota(session, stage="assets", per_channel=True,
                                          max_starts=100_000, window_s=3_600)
        channel = await session.scalar(sa.select(Task.channel_id).where(Task.id == task_id))
        assert channel is not None
        old = [now - timedelta(hours=2)] * 10           # left the window: go at the claim
        recent = [now - timedelta(seconds=3_000 - i) for i in range(3_000)]
        session.add(QuotaUsage(channel_id=channel, quota_id=quota.id, stage="assets",
                               starts=old + recent))
    async with sessions() as session, session.begin():
        claim = await claims.claim_next(session, worker_id="w", lease_s=30,
                                        now=datetime.now(UTC))
        assert claim is not None and claim.task_id == task_id
    async with sessions() as session:
        bucket = await session.get(QuotaUsage, (channel, quota.id))
        assert bucket is not None
        assert len(bucket.starts) == len(bucket.counts) <= EXACT_STARTS + SLICES + 1
        assert sum(bucket.counts) == 3_001 and bucket.blocked_until is None
        assert bucket.starts == sorted(bucket.starts)
        _, found = await quotas.buckets(session)
        assert [b.used for b in found] == [3_001]
    # Half the entries leave the window: the cleaning drops them with their counts.
    async with sessions() as session, session.begin():
        await session.execute(sa.text(
            "UPDATE quota_usage SET starts = ARRAY(SELECT x.s - interval '35 minutes'"
            " FROM unnest(starts) WITH ORDINALITY x (s, i) ORDER BY x.i)"))
        assert await quotas.clean(session) == 1
    async with sessions() as session:
        bucket = await session.get(QuotaUsage, (channel, quota.id))
        assert bucket is not None and len(bucket.starts) == len(bucket.counts)
        cut = datetime.now(UTC) - timedelta(hours=1)
        assert all(s > cut for s in bucket.starts)
        _, found = await quotas.buckets(session)
        assert 0 < found[0].used == sum(bucket.counts) < 3_001


async def test_lowering_a_limit_below_a_merged_record_frees_it_conservatively(
        db: tuple[str, Sessions]) -> None:
    """``quota_refresh`` (a limit set again) keeps what matters of a merged record and blocks
    the bucket until enough of it left the window."""
    _, sessions = db
    now = datetime.now(UTC).replace(microsecond=0)
    async with sessions() as session, session.begin():
        quota, _ = await quotas.set_quota(session, stage="video", per_channel=False,
                                          max_starts=1_000, window_s=3_600)
        times = [now - timedelta(minutes=30), now - timedelta(minutes=20),
                 now - timedelta(minutes=10)]
        session.add(QuotaUsage(channel_id=uuid.UUID(int=0), quota_id=quota.id, stage="video",
                               starts=times, counts=[300, 300, 300]))
    async with sessions() as session, session.begin():
        await quotas.set_quota(session, stage="video", per_channel=False, max_starts=500,
                               window_s=3_600)
    async with sessions() as session:
        bucket = await session.get(QuotaUsage, (uuid.UUID(int=0), quota.id))
        assert bucket is not None
        # 600 starts stand after the oldest 300 go: the bucket frees when the second entry
        # (20 minutes ago) leaves the window.
        assert (bucket.starts, bucket.counts) == (times[1:], [300, 300])
        assert bucket.blocked_until == times[1] + timedelta(hours=1)


@pytest.mark.parametrize("seed_", range(8))
async def test_starts_admitted_together_are_those_merged_one_by_one(
        db: tuple[str, Sessions], seed_: int) -> None:
    """``quota_admit`` (the picks of one bucket recorded in one write) records and refuses
    exactly what ``quota_merge`` does start by start, a start let in while the bucket does not
    block it, whatever the limit, the record so far, a pause and the number of starts."""
    _, sessions = db
    rng = random.Random(seed_)
    async with sessions() as session:
        for _ in range(20):
            limit = rng.choice([1, 2, 3, 6, EXACT_STARTS, EXACT_STARTS + 2, 200])
            starts: list[datetime] = []
            counts: list[int] = []
            blocked: datetime | None = None
            at = BASE
            for _ in range(rng.randint(0, 3 * min(limit, 70))):      # a record to start from
                at += timedelta(seconds=rng.random() * 2 * WINDOW_S / limit)
                if blocked is None or blocked <= at:
                    row = (await session.execute(MERGE, {
                        "starts": starts, "counts": counts, "at": at, "max": limit,
                        "window": WINDOW_S})).one()
                    starts, counts, blocked = list(row.starts), list(row.counts), row.frees
            at += timedelta(seconds=rng.choice([0.0, 0.5, WINDOW_S / 2, WINDOW_S]))
            paused = rng.choice([None, None, at - SLICE, at + SLICE])
            blocked = max((b for b in (blocked, paused) if b is not None), default=None)
            n = rng.randint(1, 5)
            one = (starts, counts, blocked, 0)
            while one[3] < n and (one[2] is None or one[2] <= at):
                row = (await session.execute(MERGE, {
                    "starts": one[0], "counts": one[1], "at": at, "max": limit,
                    "window": WINDOW_S})).one()
                frees = max((b for b in (paused, row.frees) if b is not None), default=None)
                one = (list(row.starts), list(row.counts), frees, one[3] + 1)
            row = (await session.execute(ADMIT, {
                "starts": starts, "counts": counts, "blocked": blocked, "paused": paused,
                "at": at, "max": limit, "window": WINDOW_S, "n": n})).one()
            assert (list(row.starts), list(row.counts), row.blocked_until, row.admitted) == one


async def test_the_record_is_revision_0016s(db: tuple[str, Sessions]) -> None:
    """``quota_merge`` keeps the record revision 0016's did (``merge_0016``, installed here
    beside it), start after start, through entries leaving the window, long records brought
    down and limits below the record."""
    _, sessions = db
    old = merge_0016.render_merge().replace(f"FUNCTION {QUOTA_MERGE}(", "FUNCTION merge_0016(", 1)
    rng = random.Random(16)
    async with sessions() as session:
        await session.execute(sa.text(old))
        for _ in range(30):
            limit = rng.choice([1, 5, EXACT_STARTS, EXACT_STARTS + 1, 150, 1_000_000])
            # Empty, or a long record of every start on its own (as kept before revision 0016).
            record: tuple[list[datetime], list[int]] = ([], []) if rng.random() < 0.7 else (
                [BASE - timedelta(seconds=0.1 * k) for k in range(rng.randint(130, 300), 0, -1)],
                [])
            at = BASE
            for _ in range(rng.randint(1, 150)):
                at += timedelta(seconds=rng.choice([0.0, 0.01, 0.5, 3.0, WINDOW_S / 2]))
                given = {"starts": record[0], "counts": record[1], "max": limit,
                         "window": WINDOW_S, "at": None if rng.random() < 0.05 else at}
                new = (await session.execute(MERGE, given)).one()
                was = (await session.execute(sa.text(
                    str(MERGE).replace(QUOTA_MERGE, "merge_0016")), given)).one()
                assert tuple(new) == tuple(was), given
                record = (list(new.starts), list(new.counts))
