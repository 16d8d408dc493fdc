"""Running claimed tasks: stage after stage, with a heartbeat, each outcome in its own short
transaction (claim → commit → run with no transaction open → record → commit).

A claim returns what its stage is given (nothing is loaded apart). A stage's success, the
automatic moves after it and the claim of the task's next stage are one write (a stage
boundary), so a task moves on through its stages with one statement and one commit each. The
next stage is taken as any claim of the task would be (the same capacity and quota rules); the
runner stops at a gate, an error, ``published``, or when that claim cannot be had now (the task
then waits, runnable, for the next claim in queue order). Every call (claim, boundary, fail,
hand back, renew) is one statement of ``app.execution.hotpath`` on the hot path's connections;
what each writes is ``app.moves``.

A stage stopped by a graceful shutdown (cancelled after the grace period) is handed back: the
task keeps its status with no holder, its attempt not spent and nothing in ``error_log``, and
the next claim takes it over. So is a stage whose task an operator put on hold: the heartbeat's
renewal reads the hold from the row and stops the stage; no claim takes the task until it is
released.

Every write a runner makes to its task carries the claim token, so a runner whose lease was
reaped is refused (``StaleClaim``) and stops. A runner also never runs a stage past the moment
its lease may have expired: when the heartbeat cannot renew the lease in time (the database is
unreachable) the stage is stopped, so the reaper never hands a stage to a second worker while
the first one still runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

import asyncpg  # type: ignore[import-untyped]  # ships no type information
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import db, moves
from app.config import Settings
from app.db.hotpool import HotPool
from app.errors import InvalidTransition, PipelineError, StaleClaim
from app.execution import hotpath
from app.execution.batching import Batcher
from app.execution.boundaries import Boundaries
from app.execution.boundaries import Settings as BoundarySettings
from app.execution.hotpath import Ending
from app.handlers import RateLimited, Registry, StageInput
from app.lifecycle import STAGE_BY_ACTIVE, TaskStatus
from app.moves import Claim, Renewal
from app.observability import instruments

T = TypeVar("T")

log = logging.getLogger(__name__)


async def _to_the_end(write: Awaitable[T]) -> T:
    """Run a write of the outcome to its end even if this job is cancelled meanwhile: cut
    off mid-statement, it might or might not land, and a stage's result would be lost. The
    cancellation is raised once the write is done. A future (a batch's call) is awaited as it
    is; a coroutine runs in a task of its own."""
    inner = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        await asyncio.wait([inner])
        raise


def _lease_claim(lease: Lease | None) -> Claim | None:
    """The claim of a lease, if any (what ``Runner._kept`` hands back)."""
    return None if lease is None else lease.claim


def _carried(done: hotpath.Boundary) -> Claim | None:
    """The claim of the next stage a boundary carried its task into, if any."""
    return None if done.taken is None else done.taken.claim


#: Pick-up calls of one process under way at once (the turnstile decides one at a time anyway).
PICK_UPS_IN_FLIGHT = 1
#: Pause between attempts to write to a database that is unavailable.
RETRY_PAUSE_S = 0.5


class LeaseNotRenewed(PipelineError):
    """The stage was stopped: its lease could not be renewed before it might expire."""


class PutOnHold(PipelineError):
    """An operator put the task on hold: its stage was handed back."""


class Deferred(PipelineError):
    """The stage's provider is rate limited: the stage was handed back to wait."""


@dataclass
class Lease:
    """A claim and what this process knows of its lease.

    ``expires`` is on the event loop's clock and measured from before the write that set the
    lease, so it is never later than the database's ``lease_expires_at``: until then no reaper
    can have taken the task. ``lost`` is set when the claim is gone or about to be.
    """

    claim: Claim
    expires: float
    #: What the stage is given, as the claim read it.
    given: hotpath.Loaded
    lost: PipelineError | None = None
    #: The renewal found the task put on hold: the stage is stopped and handed back.
    on_hold: bool = False


@dataclass
class Runner:
    """One worker process's view: its identity, settings, connections and handlers."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    handlers: Registry
    #: The hot path's connections (``db.make_pool``).
    pool: HotPool
    worker_id: str = field(default_factory=lambda: f"worker-{uuid.uuid4().hex[:12]}")
    #: Set when the process is asked to stop: running stages finish, no further one is claimed.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: The stages running now, by task (what a stopping worker waits for).
    running: dict[uuid.UUID, str] = field(default_factory=dict)
    #: The stage boundaries this process writes, together when stages end together.
    boundaries: Boundaries = field(init=False)
    #: The pick-ups of this process's claim loops, made together when asked for together.
    pick_ups: Batcher[None, Lease | None] = field(init=False)
    #: Pick-up calls under way, and the event set when none is.
    _picking: int = field(default=0, init=False)
    _picked: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        self.boundaries = Boundaries(self.pool, BoundarySettings(
            self.worker_id, self.settings.lease_s, self.settings.auto_approved))
        self.pick_ups = Batcher(self._pick_up, in_flight=PICK_UPS_IN_FLIGHT,
                                most=self.settings.worker_concurrency)

    def now(self) -> datetime:
        return moves.utcnow()

    async def claim(self, task_id: uuid.UUID | None = None) -> Lease | None:
        """Claim the next runnable task in fair order (or ``task_id`` only) and start its stage;
        None if none can be had now."""
        async with self.pool.acquire() as conn:
            return await self._claim(conn, task_id)

    async def _claim(self, conn: asyncpg.Connection, task_id: uuid.UUID | None) -> Lease | None:
        """A queued task comes back in its first stage (claimed and started in one commit),
        with what the stage is given. The lease's local expiry counts from before the claim was
        sent."""
        started = asyncio.get_running_loop().time()
        taken = await hotpath.take(conn, worker_id=self.worker_id,
                                   lease_s=self.settings.lease_s, now=self.now(),
                                   task_id=task_id)
        return None if taken is None else await self._leased(taken, started)

    async def _leased(self, taken: hotpath.Taken, started: float) -> Lease | None:
        """The lease of a claim written at ``started`` (loop time), at its stage's length. Its
        stage counts as running from here on (``running``), so that a stop signal arriving
        before the handler starts still names it."""
        claim = taken.claim
        if not self._renewed_first(claim):
            return self._holding(Lease(claim, started + self.settings.lease_s, taken.given))
        lease_s = self.settings.lease_for(claim.status)
        started = asyncio.get_running_loop().time()   # a stage with its own lease length
        async with self.pool.acquire() as conn:
            renewal = await hotpath.renew(conn, claim, lease_s=lease_s, now=self.now())
        if renewal is Renewal.lost:
            return None
        return self._holding(Lease(claim, started + lease_s, taken.given,
                                   on_hold=renewal is Renewal.on_hold))

    def _renewed_first(self, claim: Claim) -> bool:
        """The claim's stage has a lease length of its own: ``_leased`` renews it to that
        length first (a round trip); otherwise it returns at once."""
        return self.settings.lease_for(claim.status) != self.settings.lease_s

    def _holding(self, lease: Lease) -> Lease:
        stage = STAGE_BY_ACTIVE.get(lease.claim.status)
        if stage is not None:
            self.running[lease.claim.task_id] = stage.name
        return lease

    def dropped(self, lease: Lease) -> None:
        """``lease`` will not be run (its claim loop ended first): its stage is not running."""
        self.running.pop(lease.claim.task_id, None)

    async def next_lease(self) -> Lease | None:
        """Claim the next task in queue order (None when none can be had now, or the worker is
        stopping). Claim loops that ask at once share one call (``hotpath.take_many``): their
        turns are decided together, under one hold of the turnstile."""
        if self.stopping.is_set():
            return None
        return await self._kept(self.pick_ups.submit(None), _lease_claim)

    async def _pick_up(self, wanted: list[None]) -> list[Lease | BaseException | None]:
        started = asyncio.get_running_loop().time()
        self._picking += 1
        try:
            async with self.pool.acquire() as conn:
                taken = await hotpath.take_many(conn, len(wanted), worker_id=self.worker_id,
                                                lease_s=self.settings.lease_s, now=self.now())
            leases: list[Lease | BaseException | None] = [
                await self._leased(one, started) for one in taken]
        finally:
            self._picking -= 1
            if not self._picking:
                self._picked.set()
        return leases + [None] * (len(wanted) - len(leases))

    async def claims_settled(self) -> None:
        """Until no pick-up is under way: its claims, committed meanwhile, are then in
        ``running`` (what a stop signal names)."""
        while self._picking:
            self._picked.clear()
            await self._picked.wait()

    async def run(self, lease: Lease | None) -> None:
        """Run stages back to back while the task can continue.

        A refused write (the lease was reaped, the task moved on) or a stage stopped for want
        of a lease ends the run with a warning. An unavailable database propagates: the lease
        then expires and the reaper hands the stage on.
        """
        try:
            while lease is not None:
                try:
                    lease = await self._run_stage(lease)
                except (PutOnHold, Deferred) as exc:
                    log.info("%s: %s", self.worker_id, exc)
                    return
                except PipelineError as exc:
                    log.warning("%s: %s: %s", self.worker_id, type(exc).__name__, exc)
                    return
        finally:
            if lease is not None:
                self.dropped(lease)

    async def _run_stage(self, lease: Lease) -> Lease | None:
        """Run the lease's stage and record its outcome; the lease of the task's next stage
        when it was carried on."""
        claim = lease.claim
        stage = STAGE_BY_ACTIVE[claim.status]
        task = lease.given
        if lease.on_hold:
            await self._stopped_for_hold(claim)
        given = StageInput(claim.task_id, stage.name, task.title, task.topic,
                           task.story_direction, claim.run, task.artifacts)
        began = time.monotonic()
        try:
            async with self._heartbeat(lease):
                artefacts = await self.handlers[stage.name](given)
        except asyncio.CancelledError:
            instruments.stage_stopped(stage.name, time.monotonic() - began,
                                      lost=lease.lost is not None,
                                      handed_back=lease.on_hold or self.stopping.is_set())
            me = asyncio.current_task()
            if lease.lost is not None and me is not None and me.uncancel() == 0:
                raise lease.lost from None
            if lease.on_hold and me is not None and me.uncancel() == 0:
                await asyncio.shield(self._stopped_for_hold(claim))
            if self.stopping.is_set():           # a graceful stop: not the stage's fault
                await asyncio.shield(self._hand_back(claim, "worker stopping"))
            else:                                # the job's timeout or an abort: it counts
                await asyncio.shield(self._gone(lease, "stage cancelled (job timeout or abort)"))
            raise
        except RateLimited as exc:
            instruments.stage_ended(stage.name, instruments.RATE_LIMITED,
                                    time.monotonic() - began)
            await _to_the_end(self._rate_limited(lease, exc))
        except Exception as exc:
            instruments.stage_ended(stage.name, instruments.FAILURE, time.monotonic() - began)
            await _to_the_end(self._failed(lease, f"{type(exc).__name__}: {exc}"))
            return None
        finally:
            self.running.pop(claim.task_id, None)
        return await self._advance(lease, artefacts, began)

    async def _advance(self, lease: Lease, artefacts: dict[str, Any],
                       began: float) -> Lease | None:
        """The stage's success, the automatic moves after it and, unless the worker is
        stopping, the claim of the task's next stage: one write, shared with the boundaries of
        other stages of this process that end meanwhile (``app.execution.boundaries``). The
        next lease's local expiry counts from before the write was first sent.

        Every wait here runs to its end even if this job is cancelled meanwhile (``_kept``):
        the batch's write (its future, which the batch settles whatever becomes of this job),
        then, only if that first try failed, the retries of ``_record``, and the renewal of a
        stage with a lease length of its own. A stage carried on that way is handed back."""
        claim = lease.claim
        stage = STAGE_BY_ACTIVE[claim.status]
        sent = asyncio.get_running_loop().time()
        ending, carry = Ending(claim, artefacts), not self.stopping.is_set()
        try:
            done = await self._kept(self.boundaries.send(ending, carry=carry), _carried)
        except Exception as exc:
            done = await self._kept(self._record(
                lease, lambda: self.boundaries.send(ending, carry=carry), failed=exc), _carried)
        instruments.stage_ended(stage.name, instruments.SUCCESS, time.monotonic() - began)
        log.info("%s: task %s %s → %s %.1f s", self.worker_id, claim.task_id, stage.name,
                 stage.done.value if done.rest is stage.done else
                 f"{stage.done.value} → {done.rest.value}", time.monotonic() - began)
        if done.taken is None:
            return None
        if not self._renewed_first(done.taken.claim):
            return await self._leased(done.taken, sent)   # no wait in it
        return await self._kept(self._leased(done.taken, sent), _lease_claim)

    async def _failed(self, lease: Lease, message: str) -> TaskStatus:
        s = self.settings
        claim = lease.claim
        status = await self._record(lease, self._on_conn(lambda conn: hotpath.fail(
            conn, claim, message=message, actor=self.worker_id, now=self.now(),
            max_attempts=s.stage_max_attempts, backoff_s=s.retry_backoff_s)))
        delay = moves.retry_delay_s(claim.attempt, max_attempts=s.stage_max_attempts,
                                    backoff_s=s.retry_backoff_s)
        then = "out of attempts" if delay is None else f"retry in {delay:g} s"
        log.info("%s: task %s %s failed, attempt %d/%d, %s: %s", self.worker_id, claim.task_id,
                 STAGE_BY_ACTIVE[claim.status].name, claim.attempt, s.stage_max_attempts, then,
                 message)
        return status

    async def _hand_back(self, claim: Claim, reason: str) -> None:
        """Give the stage back unfinished: the task keeps its status with no holder, the
        attempt not spent. One try: if it cannot be written, the lease expires and the reaper
        takes the task back (then counting the attempt)."""
        try:
            async with self.pool.acquire() as conn:
                await hotpath.hand_back(conn, claim, reason=reason, actor=self.worker_id,
                                        now=self.now())
        except Exception as exc:      # the caller is being cancelled: never hide that
            log.warning("%s: task %s: not handed back (%s); its lease will expire",
                        self.worker_id, claim.task_id, db.describe(exc))
            return
        log.info("%s: task %s: %s handed back (%s)", self.worker_id, claim.task_id,
                 STAGE_BY_ACTIVE[claim.status].name, reason)

    async def _rate_limited(self, lease: Lease, exc: RateLimited) -> NoReturn:
        """The provider refused for now: the quotas of the stage pause for every task that
        shares them, and the stage is handed back to wait as long (no error, no attempt)."""
        claim = lease.claim
        stage = STAGE_BY_ACTIVE[claim.status].name
        try:
            async with self.pool.acquire() as conn:
                paused = await hotpath.pause_quotas(conn, claim.task_id, stage=stage,
                                                    seconds=exc.retry_after_s)
        except Exception as error:
            if not db.is_unavailable(error):
                raise
            paused = 0                    # the task still waits; the other tasks may try
        not_before = self.now() + timedelta(seconds=exc.retry_after_s)
        status = await self._record(lease, self._on_conn(lambda conn: hotpath.hand_back(
            conn, claim, reason=f"rate limited: {exc}", actor=self.worker_id, now=self.now(),
            not_before=not_before)))
        log.info("%s: task %s %s %s; handed back, %s", self.worker_id, claim.task_id, stage,
                 exc, f"{paused} quota bucket(s) paused" if paused else "no quota to pause")
        raise Deferred(f"task {claim.task_id}: {stage} waits {exc.retry_after_s:g} s"
                       f" ({status.value})")

    async def _stopped_for_hold(self, claim: Claim) -> None:
        """Hand the stage of a task put on hold back, then end the run (``PutOnHold``)."""
        await self._hand_back(claim, moves.ON_HOLD)
        raise PutOnHold(f"task {claim.task_id} is on hold: its"
                        f" {STAGE_BY_ACTIVE[claim.status].name} stage was handed back")

    async def _gone(self, lease: Lease, message: str) -> None:
        """A stage cancelled for no stop of the worker's (the job's timeout, an abort): a
        failure, its attempt counted, so a stage that never ends cannot loop forever. One try,
        as a hand-back."""
        try:
            await self._failed(lease, message)
        except Exception as exc:
            log.warning("%s: task %s: failure not recorded (%s); its lease will expire",
                        self.worker_id, lease.claim.task_id, db.describe(exc))

    def _on_conn(self, write: Callable[[asyncpg.Connection], Awaitable[T]]
                 ) -> Callable[[], Awaitable[T]]:
        """``write`` on a connection of the hot path's pool."""
        async def on_conn() -> T:
            async with self.pool.acquire() as conn:
                return await write(conn)
        return on_conn

    async def _record(self, lease: Lease, write: Callable[[], Awaitable[T]], *,
                      failed: Exception | None = None) -> T:
        """Write a move of the claimed task, one statement (``failed``: a first try of it
        already failed so).

        The write is fenced by the claim token, so trying it again is safe: it lands once or
        is refused. While the database is unavailable it is retried until the lease may expire
        (after that the reaper hands the stage on). A refusal because the task moved on raises
        ``StaleClaim``.
        """
        loop = asyncio.get_running_loop()
        while True:
            if failed is None:
                try:
                    return await write()
                except Exception as exc:
                    failed = exc
            if isinstance(failed, InvalidTransition) and not isinstance(failed, StaleClaim) \
                    and failed.current is not lease.claim.status and failed.current is not None:
                raise StaleClaim(failed.task_id, failed.current, failed.target, reason=(
                    f"write refused: the task is {failed.current.value} now, the claim is no"
                    " longer held")) from failed
            if not db.is_unavailable(failed) or loop.time() + RETRY_PAUSE_S >= lease.expires:
                raise failed                  # refused, or an illegal move: a bug
            log.warning("%s: task %s: database unavailable (%s); retrying",
                        self.worker_id, lease.claim.task_id, db.describe(failed))
            failed = None
            await asyncio.sleep(RETRY_PAUSE_S)

    async def _kept(self, claiming: Awaitable[T], claimed: Callable[[T], Claim | None]) -> T:
        """A claim (or a stage boundary that may claim) that runs to its end even if this job
        is cancelled meanwhile (cut off, it may still have committed); a stage claimed that way
        (``claimed`` of its result) is handed back at once (``_to_the_end``)."""
        inner = asyncio.ensure_future(claiming)
        try:
            return await _to_the_end(inner)
        except asyncio.CancelledError:
            if not inner.cancelled() and inner.exception() is None:
                claim = claimed(inner.result())
                if claim is not None:
                    await self._hand_back(claim, "claimed as the worker stopped")
            raise

    async def _renew(self, claim: Claim, lease_s: float) -> Renewal:
        async with self.pool.acquire() as conn:
            return await hotpath.renew(conn, claim, lease_s=lease_s, now=self.now())

    def _heartbeat(self, lease: Lease) -> _Heartbeat:
        """Renew the lease every third of it while the stage runs (``async with``). Cancel the
        stage when the claim is lost (renewal refused) or when the lease cannot be renewed a
        third of a lease before it may expire: its outcome could not be written, and the
        reaper must not hand the stage to another worker while this one still runs it."""
        return _Heartbeat(self, lease)

    async def _beat(self, lease: Lease, stage_task: asyncio.Task[Any]) -> None:
        """The heartbeat's renewals, from its first (a third of a lease in)."""
        loop = asyncio.get_running_loop()
        claim = lease.claim
        lease_s = self.settings.lease_for(claim.status)
        every_s = lease_s / 3
        while True:
            started = loop.time()
            # Renew while a third of the lease is left; past that (the process was paused or
            # its loop blocked) one short try, which may still find the claim held.
            safe_s = max(lease.expires - every_s - started, min(every_s, 1.0))
            try:
                async with asyncio.timeout(safe_s):
                    renewal = await self._renew(claim, lease_s)
            except Exception as exc:
                if loop.time() < lease.expires - every_s:
                    log.warning("%s: task %s: lease not renewed (%s); retrying",
                                self.worker_id, claim.task_id, db.describe(exc))
                    await asyncio.sleep(every_s)
                    continue
                lease.lost = LeaseNotRenewed(
                    f"task {claim.task_id}: lease could not be renewed before it may expire"
                    f" ({db.describe(exc)}); stage stopped, outcome discarded")
            else:
                if renewal is Renewal.kept:
                    lease.expires = started + lease_s
                    await asyncio.sleep(every_s)
                    continue
                if renewal is Renewal.on_hold:
                    lease.expires = started + lease_s
                    lease.on_hold = True
                    log.info("%s: task %s was put on hold; stopping the stage",
                             self.worker_id, claim.task_id)
                    stage_task.cancel()
                    return
                lease.lost = StaleClaim(claim.task_id, claim.status, claim.status, reason=(
                    "lease renewal refused: the claim is no longer held; write refused,"
                    " stage stopped, outcome discarded"))
            log.warning("%s: lost the lease of %s; stopping the stage", self.worker_id,
                        claim.task_id)
            stage_task.cancel()
            return


class _Heartbeat:
    """``Runner._heartbeat``'s context. The first renewal is a third of a lease away: a timer
    until then, not a task (a stage that ends sooner, as short ones do, costs no task to start
    and cancel). A class rather than ``contextlib.asynccontextmanager``, whose generator cost
    a short stage a few microseconds more."""

    __slots__ = ("_beater", "_lease", "_runner", "_timer")

    def __init__(self, runner: Runner, lease: Lease) -> None:
        self._runner = runner
        self._lease = lease
        self._timer: asyncio.TimerHandle | None = None
        self._beater: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        stage_task = asyncio.current_task()
        assert stage_task is not None
        every_s = self._runner.settings.lease_for(self._lease.claim.status) / 3
        self._timer = asyncio.get_running_loop().call_later(every_s, self._start, stage_task)

    def _start(self, stage_task: asyncio.Task[Any]) -> None:
        self._beater = asyncio.create_task(self._runner._beat(self._lease, stage_task))

    async def __aexit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._beater is not None:
            self._beater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beater
