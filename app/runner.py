"""Running claimed tasks: stage after stage, with a heartbeat, each outcome in its own short
transaction (claim → commit → run with no transaction open → record → commit).

A runner continues a task into its next stage only through a fresh claim of that task (same
capacity rule as any claim), and stops at a gate, an error, ``published``, or when the claim
cannot be had now (the task then waits, runnable, for the next claim in queue order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import lifecycle
from app.config import Settings
from app.db import session_scope
from app.errors import InvalidTransition, StaleClaim
from app.handlers import Registry, StageInput
from app.lifecycle import GATE_BY_WAITING, STAGE_BY_ACTIVE, TaskStatus
from app.models import Task
from app.services import claims, tasks, transitions
from app.services.claims import Claim

log = logging.getLogger(__name__)


@dataclass
class _Lease:
    lost: bool = False


@dataclass
class Runner:
    """One worker process's view: its identity, settings, sessions and handlers."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    handlers: Registry
    worker_id: str = field(default_factory=lambda: f"worker-{uuid.uuid4().hex[:12]}")

    def now(self) -> datetime:
        return transitions.utcnow()

    async def claim(self, task_id: uuid.UUID | None = None) -> Claim | None:
        async with session_scope(self.sessions) as session:
            return await claims.claim_next(session, worker_id=self.worker_id,
                                           lease_s=self.settings.lease_s, now=self.now(),
                                           task_id=task_id)

    async def run_next(self) -> uuid.UUID | None:
        """Claim the next task in queue order and run it as far as it goes; its id or None."""
        claim = await self.claim()
        if claim is None:
            return None
        await self.run(claim)
        return claim.task_id

    async def run(self, claim: Claim | None) -> None:
        """Run stages back to back while the task can continue."""
        while claim is not None:
            try:
                claim = await self._start_stage(claim)
                next_status = await self._run_stage(claim)
            except InvalidTransition as exc:      # fenced out (lease lost) or moved meanwhile
                log.warning("%s: %s", self.worker_id, exc)
                return
            claim = await self._continue(claim.task_id, next_status)

    async def _start_stage(self, claim: Claim) -> Claim:
        """``claimed`` is not a stage yet: the same claim moves on into ``generating_assets``."""
        if claim.status is not TaskStatus.claimed:
            return claim
        target = TaskStatus.generating_assets
        async with session_scope(self.sessions) as session:
            await transitions.transition(
                session, claim.task_id, target, actor=self.worker_id, expected=claim.status,
                claim_token=claim.token, now=self.now(), values={"attempts": Task.attempts + 1})
        return Claim(claim.task_id, claim.status, target, claim.token)

    async def _run_stage(self, claim: Claim) -> TaskStatus:
        stage = STAGE_BY_ACTIVE[claim.status]
        async with session_scope(self.sessions) as session:
            task = await tasks.get_task(session, claim.task_id)
            runs = await tasks.times_entered(session, task.id, stage.active)
            given = StageInput(task.id, stage.name, task.title, task.topic,
                               task.story_direction, runs, dict(task.artifacts))
        lease = _Lease()
        try:
            async with self._heartbeat(claim, lease):
                artefacts = await self.handlers[stage.name](given)
        except asyncio.CancelledError:
            if lease.lost and (me := asyncio.current_task()) is not None and me.uncancel() == 0:
                raise StaleClaim(claim.task_id, claim.status, stage.done,
                                 reason="lease lost during the stage; outcome discarded") from None
            await asyncio.shield(self._interrupted(claim, given.attempt))
            raise
        except Exception as exc:
            return await self._failed(claim, given.attempt, f"{type(exc).__name__}: {exc}")
        return await self._succeeded(claim, artefacts, dict(task.artifacts))

    async def _succeeded(self, claim: Claim, artefacts: dict[str, object],
                         previous: dict[str, object]) -> TaskStatus:
        stage = STAGE_BY_ACTIVE[claim.status]
        values: dict[str, object] = {"artifacts": previous | {stage.name: artefacts},
                                     "attempts": 0}
        url = artefacts.get("youtube_url")
        if stage.done is TaskStatus.published and isinstance(url, str):
            values["youtube_url"] = url
        async with session_scope(self.sessions) as session:
            await transitions.transition(session, claim.task_id, stage.done, actor=self.worker_id,
                                         expected=claim.status, claim_token=claim.token,
                                         values=values, now=self.now())
        return stage.done

    async def _failed(self, claim: Claim, attempt: int, message: str) -> TaskStatus:
        s = self.settings
        async with session_scope(self.sessions) as session:
            task = await claims.fail_stage(
                session, claim, actor=self.worker_id, note=message, now=self.now(),
                attempts=attempt, max_attempts=s.stage_max_attempts,
                backoff_s=s.retry_backoff_s)
        log.info("%s: task %s %s", self.worker_id, claim.task_id, message)
        return task.status

    async def _interrupted(self, claim: Claim, attempt: int) -> None:
        """Shut down mid-stage: hand the task back (retry due now, the attempt not counted)."""
        s = self.settings
        with contextlib.suppress(InvalidTransition):
            async with session_scope(self.sessions) as session:
                await claims.fail_stage(
                    session, claim, actor=self.worker_id, note="worker stopped mid-stage",
                    now=self.now(), attempts=attempt, max_attempts=s.stage_max_attempts,
                    backoff_s=0, count_attempt=False)

    async def _continue(self, task_id: uuid.UUID, status: TaskStatus) -> Claim | None:
        """After a stage: pass auto-approved gates and automatic moves, then claim the task's
        next stage if it can be had now."""
        async with session_scope(self.sessions) as session:
            status = await self._advance(session, task_id, status)
        if status not in lifecycle.RUNNABLE:
            return None
        return await self.claim(task_id)

    async def _advance(self, session: AsyncSession, task_id: uuid.UUID,
                       status: TaskStatus) -> TaskStatus:
        while True:
            if status in lifecycle.AUTOMATIC:
                target = lifecycle.AUTOMATIC[status]
                await transitions.transition(session, task_id, target, actor=self.worker_id,
                                             expected=status, now=self.now())
                status = target
            elif (gate := GATE_BY_WAITING.get(status)) and gate.name in \
                    self.settings.auto_approved:
                await transitions.transition(session, task_id, gate.approved,
                                             actor="auto-approve", expected=status,
                                             note=f"{gate.name} auto-approved", now=self.now())
                status = gate.approved
            else:
                return status

    @contextlib.asynccontextmanager
    async def _heartbeat(self, claim: Claim, lease: _Lease) -> AsyncIterator[None]:
        """Renew the lease every third of it while the stage runs; if the claim is lost,
        cancel the stage (its outcome could not be written anyway)."""
        stage_task = asyncio.current_task()
        assert stage_task is not None

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.settings.lease_s / 3)
                async with session_scope(self.sessions) as session:
                    kept = await claims.renew_lease(session, claim, lease_s=self.settings.lease_s,
                                                    now=self.now())
                if not kept:
                    log.warning("%s: lost the lease of %s", self.worker_id, claim.task_id)
                    lease.lost = True
                    stage_task.cancel()
                    return

        beater = asyncio.create_task(beat())
        try:
            yield
        finally:
            beater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beater
