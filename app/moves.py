"""The rules of a move, as pure functions: what each move writes on the task row.

Every path that moves a task derives from here: the worker's hot path
(``app.execution.hotpath``), the service layer (``app.services``) and the generator of the
claim function (``app.db.ddl.claim_task``). A move's changes are a plain mapping of column to
value, with two markers for the writes that depend on the row (``AppendLine``,
``MergeArtifact``); ``app.db.statements`` renders them for asyncpg and for SQLAlchemy alike, and
``tests/test_moves_agree.py`` holds the two paths' rows equal for every stage and outcome.

The row is the whole truth: which stage failed (where a retry resumes), the attempts of the
current budget and the runs of the current stage are columns written by these moves. No rule
here reads ``task_events``.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from app.lifecycle import (
    ACTIVE,
    AUTOMATIC,
    ERROR,
    GATE_BY_WAITING,
    GATES,
    STAGE_BY_ACTIVE,
    STAGE_BY_NAME,
    STAGES,
    TERMINAL,
    Gate,
    Stage,
    TaskStatus,
)

S = TaskStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Claim:
    """A task a worker now holds: it may write it while ``token`` matches.

    ``attempt`` is the attempt of the current budget (1 for a stage's first try, again 1 after
    an operator's requeue); ``run`` counts every run of the stage on this task, retries and
    requeues included (what ``StageInput.attempt`` shows a handler).
    """

    task_id: uuid.UUID
    from_status: TaskStatus
    status: TaskStatus
    token: uuid.UUID
    attempt: int = 0
    run: int = 0


@dataclass(frozen=True)
class AppendLine:
    """``error_log`` grows by this line (written in the UPDATE itself: no read-modify-write)."""

    line: str


@dataclass(frozen=True)
class MergeArtifact:
    """``artifacts[stage]`` becomes ``value``; the other stages' outputs stay."""

    stage: str
    value: Mapping[str, Any]


#: Column → new value (or a marker above).
Changes = dict[str, Any]


@dataclass(frozen=True)
class Move:
    """What one guarded write does: the row's changes and the event that records it."""

    current: TaskStatus
    target: TaskStatus
    changes: Changes
    note: str | None = None


#: A claim ends with its active state: gates, errors and waits hold no lease.
END_CLAIM: Changes = {"claimed_by": None, "claimed_at": None, "claim_token": None,
                      "lease_expires_at": None}


def retry_delay_s(attempts: int, *, max_attempts: int, backoff_s: float) -> float | None:
    """Exponential backoff between attempts of a stage; None once the budget is spent."""
    if attempts >= max_attempts:
        return None
    return float(backoff_s * 2 ** max(attempts - 1, 0))


def resume_stage(error: TaskStatus, failed_stage: str | None) -> Stage:
    """The stage a retry out of ``error`` runs: the one recorded as failed, or, when the row
    does not name a stage of this error kind (walked there by raw SQL, or inserted so), the
    earliest stage of that kind."""
    stage = STAGE_BY_NAME.get(failed_stage or "")
    if stage is not None and stage.error is error:
        return stage
    return next(st for st in STAGES if st.error is error)


def stages_done(status: TaskStatus, failed_stage: str | None) -> int:
    """How many stages, in pipeline order, lie behind a task in ``status``: 0 before the first
    stage ends; an errored task is behind the stage its retry runs."""
    if status in ERROR:
        return STAGES.index(resume_stage(status, failed_stage))
    for index, stage in enumerate(STAGES):
        if status is stage.active:
            return index
        if status is stage.done:
            return index + 1
    for gate in GATES:
        if status in (gate.waiting, gate.approved):
            return _gate_after(gate) + 1
    return 0


def _gate_after(gate: Gate) -> int:
    """The index of the stage a gate reviews (its waiting state follows that stage's end)."""
    done = {AUTOMATIC.get(st.done, st.done): i for i, st in enumerate(STAGES)}
    return done[gate.waiting]


def past_gate(status: TaskStatus, failed_stage: str | None, gate: Gate) -> bool:
    """Whether a task in ``status`` has passed ``gate`` (approved there, or beyond it)."""
    reviewed = _gate_after(gate)
    before = {gate.waiting, STAGES[reviewed].done}
    return stages_done(status, failed_stage) > reviewed and status not in before


def error_line(current: TaskStatus, target: TaskStatus, note: str | None, now: datetime) -> str:
    return f"{now:%Y-%m-%dT%H:%M:%SZ} {target.value} (from {current.value}): {note or '-'}"


def side_effects(current: TaskStatus, target: TaskStatus, *, note: str | None,
                 now: datetime) -> Changes:
    """Columns that change with any move ``current → target`` (decided from the two statuses).

    Leaving an active state ends the claim; entering an error state from a stage records the
    stage that failed and appends to ``error_log``; ``published`` is stamped."""
    values: Changes = {"status": target, "updated_at": now}
    if current in ACTIVE and target not in ACTIVE:
        values |= END_CLAIM
    if target in ERROR:
        values["error_log"] = AppendLine(error_line(current, target, note, now))
        if (stage := STAGE_BY_ACTIVE.get(current)) is not None:
            values["failed_stage"] = stage.name
    if target is S.published:
        values["published_at"] = now
    return values


def finish(held: Claim, *, artefacts: Mapping[str, Any], now: datetime) -> Move:
    """A stage's success: its done state, its output stored, the claim ended, and a fresh
    budget for the next stage."""
    stage = STAGE_BY_ACTIVE[held.status]
    changes = side_effects(held.status, stage.done, note=None, now=now) | {
        "attempts": 0, "stage_runs": 0, "failed_stage": None, "retry_at": None,
        "artifacts": MergeArtifact(stage.name, dict(artefacts)),
    }
    url = artefacts.get("youtube_url") if stage.done is S.published else None
    if isinstance(url, str):
        changes["youtube_url"] = url
    return Move(held.status, stage.done, changes)


def fail(held: Claim, *, message: str, max_attempts: int, backoff_s: float, now: datetime,
         due_now: bool = False) -> Move:
    """A stage's failure: its error state, the attempt spent. While attempts remain the retry
    is due after the backoff (``due_now``: at once, for a stage whose worker died); with none
    left the task waits there for an operator."""
    stage = STAGE_BY_ACTIVE[held.status]
    delay = retry_delay_s(held.attempt, max_attempts=max_attempts, backoff_s=backoff_s)
    if delay is not None and due_now:
        delay = 0.0
    when = "no attempts left" if delay is None else \
        "retry now" if delay == 0 else f"retry in {delay:g}s"
    note = f"{message} (attempt {held.attempt}/{max_attempts}; {when})"
    changes = side_effects(held.status, stage.error, note=note, now=now) | {
        "attempts": held.attempt,
        "retry_at": None if delay is None else now + timedelta(seconds=delay),
    }
    return Move(held.status, stage.error, changes, note)


def hand_back(held: Claim, *, reason: str, now: datetime,
              not_before: datetime | None = None) -> Move:
    """A stage stopped for a reason that is not its fault (a graceful stop, a provider's rate
    limit): the task keeps its status with no holder, claimable at once (or from
    ``not_before``, kept in ``retry_at``), and the attempt and run are not counted. No error
    state, nothing in ``error_log``. A task only claimed, not started, goes back to
    ``queued``."""
    if held.status is S.claimed:           # claimed, not started: nothing was counted
        return Move(held.status, S.queued, END_CLAIM | {"status": S.queued, "updated_at": now},
                    f"handed back: {reason}")
    changes = END_CLAIM | {"status": held.status, "updated_at": now,
                           "attempts": max(held.attempt - 1, 0),
                           "stage_runs": max(held.run - 1, 0), "retry_at": not_before}
    return Move(held.status, held.status, changes, f"handed back: {reason}")


#: What a hand-back records when the stage stopped for an operator's hold.
ON_HOLD = "on hold"


def can_hold(status: TaskStatus) -> bool:
    """Any task not finished can be held (a hold is a fact on the row, not a state)."""
    return status not in TERMINAL


def hold(*, actor: str, reason: str | None, now: datetime) -> Changes:
    """An operator's hold: no claim takes the task until it is released; a running stage is
    handed back at its next heartbeat. The status is untouched."""
    return {"hold_since": now, "hold_by": actor, "hold_reason": reason, "updated_at": now}


def release(now: datetime) -> Changes:
    """The hold lifted: the task is claimable again wherever it waits."""
    return {"hold_since": None, "hold_by": None, "hold_reason": None, "updated_at": now}


def hold_note(verb: str, reason: str | None) -> str:
    """The ``task_events`` note of a hold or a release (``from_status = to_status``)."""
    return f"{verb}: {reason}" if reason else verb


class Renewal(enum.Enum):
    """What a lease renewal found: the claim kept, lost, or kept on a task put on hold (its
    stage is to be handed back)."""

    kept = "kept"
    lost = "lost"
    on_hold = "on hold"

    @classmethod
    def found(cls, on_hold: bool | None) -> Renewal:
        """From the renewal's ``RETURNING hold_since IS NOT NULL`` (None: no row matched)."""
        return cls.lost if on_hold is None else cls.on_hold if on_hold else cls.kept


def requeue(now: datetime) -> Changes:
    """An operator's requeue of an errored task: the retry is due now, with a fresh budget."""
    return {"retry_at": now, "attempts": 0, "updated_at": now}


#: Runnable state (other than ``queued``) → the active state a claim moves it into.
STARTS: dict[TaskStatus, TaskStatus] = {st.start: st.active for st in STAGES
                                        if st.start is not S.claimed}
#: The active state a claimed task starts in.
FIRST_STAGE: TaskStatus = next(st.active for st in STAGES if st.start is S.claimed)


def claim_target(status: TaskStatus, failed_stage: str | None, *, start: bool) -> TaskStatus:
    """Where a claim of a task in ``status`` moves it (``start``: a claimed task starts its
    first stage in the same write). An active task is one handed back: it is taken over in
    place. The claim function renders the same rule (``app.db.ddl.claim_task``)."""
    if status is S.queued:
        return FIRST_STAGE if start else S.claimed
    if status in ERROR:
        return resume_stage(status, failed_stage).active
    if status in ACTIVE:
        return FIRST_STAGE if start and status is S.claimed else status
    return STARTS[status]


def claim_targets() -> dict[tuple[TaskStatus, str | None, bool], TaskStatus]:
    """``claim_target`` for every claimable status, every failed stage an error state may
    record (None: none recorded) and both ``start`` values: the table the claim function is
    rendered from."""
    statuses = [S.queued, *STARTS, *sorted(ERROR, key=list(S).index),
                *sorted(ACTIVE, key=list(S).index)]
    table = {}
    for status in statuses:
        failed = [None, *(st.name for st in STAGES if st.error is status)]
        for name in failed:
            for start in (True, False):
                table[(status, name, start)] = claim_target(status, name, start=start)
    return table


#: Who a gate passed by ``AUTO_APPROVE_GATES`` is recorded as having approved it.
AUTO_APPROVER = "auto-approve"


@dataclass(frozen=True)
class Step:
    """A move a worker makes on its own, without a claim: an automatic step or a gate listed in
    ``AUTO_APPROVE_GATES``."""

    target: TaskStatus
    note: str | None
    #: Recorded with the actor ``AUTO_APPROVER`` rather than the worker.
    approval: bool


def automatic_step(status: TaskStatus, auto_approved: frozenset[str]) -> Step | None:
    """The move a worker takes from ``status`` by itself, if any."""
    if status in AUTOMATIC:
        return Step(AUTOMATIC[status], None, False)
    gate = GATE_BY_WAITING.get(status)
    if gate is not None and gate.name in auto_approved:
        return Step(gate.approved, f"{gate.name} auto-approved", True)
    return None
