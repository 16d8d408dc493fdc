"""The task lifecycle as data: statuses, priorities, the transition table, stages and gates.

Everything that needs to know which status may follow which (the service layer, the database
guard, the claim queries, the CLI and the README tables) derives it from this module. It imports
nothing else from ``app`` so it can be rendered and graph-checked without a database.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TaskStatus(enum.StrEnum):
    """The 26 statuses, declared in the order of the PostgreSQL enum ``taskstatus``."""

    draft = "draft"
    queued = "queued"
    claimed = "claimed"
    generating_assets = "generating_assets"
    assets_ready = "assets_ready"
    assets_approved = "assets_approved"
    generating_composites = "generating_composites"
    composites_ready = "composites_ready"
    generating_video = "generating_video"
    video_ready = "video_ready"
    video_approved = "video_approved"
    generating_audio = "generating_audio"
    audio_ready = "audio_ready"
    audio_approved = "audio_approved"
    generating_sfx = "generating_sfx"
    sfx_ready = "sfx_ready"
    assembling = "assembling"
    assembly_ready = "assembly_ready"
    final_review = "final_review"
    approved = "approved"
    uploading = "uploading"
    published = "published"
    asset_error = "asset_error"
    video_error = "video_error"
    audio_error = "audio_error"
    upload_error = "upload_error"


class PriorityLevel(enum.StrEnum):
    """Declared high first, so ``ORDER BY priority`` claims high before normal before low."""

    high = "high"
    normal = "normal"
    low = "low"


S = TaskStatus

#: Every legal move. Any pair not listed is refused by the service layer and by the database
#: (which also passes ``CLAIM_STARTS``, two moves in one write, only when a claim writes them).
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.draft: frozenset({S.queued}),
    S.queued: frozenset({S.claimed, S.draft}),
    S.claimed: frozenset({S.generating_assets, S.queued}),
    S.generating_assets: frozenset({S.assets_ready, S.asset_error}),
    S.assets_ready: frozenset({S.assets_approved}),
    S.assets_approved: frozenset({S.generating_composites}),
    S.generating_composites: frozenset({S.composites_ready, S.asset_error}),
    S.composites_ready: frozenset({S.generating_video}),
    S.generating_video: frozenset({S.video_ready, S.video_error}),
    S.video_ready: frozenset({S.video_approved}),
    S.video_approved: frozenset({S.generating_audio}),
    S.generating_audio: frozenset({S.audio_ready, S.audio_error}),
    S.audio_ready: frozenset({S.audio_approved}),
    S.audio_approved: frozenset({S.generating_sfx}),
    S.generating_sfx: frozenset({S.sfx_ready, S.audio_error}),
    S.sfx_ready: frozenset({S.assembling}),
    S.assembling: frozenset({S.assembly_ready, S.video_error}),
    S.assembly_ready: frozenset({S.final_review}),
    S.final_review: frozenset({S.approved}),
    S.approved: frozenset({S.uploading}),
    S.uploading: frozenset({S.published, S.upload_error}),
    S.published: frozenset(),
    S.asset_error: frozenset({S.generating_assets, S.generating_composites}),
    S.video_error: frozenset({S.generating_video, S.assembling}),
    S.audio_error: frozenset({S.generating_audio, S.generating_sfx}),
    S.upload_error: frozenset({S.uploading}),
}


@dataclass(frozen=True)
class Stage:
    """One unit of work: claimed from ``start`` into ``active``; ends in ``done`` or ``error``."""

    name: str
    start: TaskStatus
    active: TaskStatus
    done: TaskStatus
    error: TaskStatus


#: The pipeline's stages in execution order. ``assets`` starts from ``claimed``: a queued task is
#: first claimed (``queued → claimed``), then the same worker starts its first stage.
STAGES: tuple[Stage, ...] = (
    Stage("assets", S.claimed, S.generating_assets, S.assets_ready, S.asset_error),
    Stage("composites", S.assets_approved, S.generating_composites, S.composites_ready,
          S.asset_error),
    Stage("video", S.composites_ready, S.generating_video, S.video_ready, S.video_error),
    Stage("audio", S.video_approved, S.generating_audio, S.audio_ready, S.audio_error),
    Stage("sfx", S.audio_approved, S.generating_sfx, S.sfx_ready, S.audio_error),
    Stage("assembly", S.sfx_ready, S.assembling, S.assembly_ready, S.video_error),
    Stage("upload", S.approved, S.uploading, S.published, S.upload_error),
)


@dataclass(frozen=True)
class Gate:
    """A human review point: a task waits in ``waiting`` until approved into ``approved``."""

    name: str
    waiting: TaskStatus
    approved: TaskStatus


GATES: tuple[Gate, ...] = (
    Gate("assets", S.assets_ready, S.assets_approved),
    Gate("video", S.video_ready, S.video_approved),
    Gate("audio", S.audio_ready, S.audio_approved),
    Gate("final", S.final_review, S.approved),
)

#: Non-active moves a worker makes on its own: ``assembly_ready`` goes straight to review.
AUTOMATIC: dict[TaskStatus, TaskStatus] = {S.assembly_ready: S.final_review}

STAGE_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
STAGE_BY_ACTIVE: dict[TaskStatus, Stage] = {stage.active: stage for stage in STAGES}
GATE_BY_NAME: dict[str, Gate] = {gate.name: gate for gate in GATES}
GATE_BY_WAITING: dict[TaskStatus, Gate] = {gate.waiting: gate for gate in GATES}

INITIAL = S.draft
TERMINAL: frozenset[TaskStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
#: States a worker holds under a lease: ``claimed`` and every stage's working state.
ACTIVE: frozenset[TaskStatus] = frozenset({S.claimed} | {st.active for st in STAGES})
ERROR: frozenset[TaskStatus] = frozenset(st.error for st in STAGES)
GATE_STATES: frozenset[TaskStatus] = frozenset(g.waiting for g in GATES)
#: States where a task waits for a worker's claim (error states only once their retry is due).
RUNNABLE: frozenset[TaskStatus] = frozenset(
    {S.queued} | {st.start for st in STAGES if st.start is not S.claimed} | set(AUTOMATIC)
)
#: Where a retry of a failed stage resumes: the error state's exits, keyed by the failed stage.
RETRY_EDGES: dict[TaskStatus, dict[str, TaskStatus]] = {
    error: {st.name: st.active for st in STAGES if st.error is error} for error in ERROR
}

#: A claim that starts its stage at once, ``a → claimed → c``: one write on the task, recorded as
#: both transitions. The database guard accepts such a pair only with a fresh claim token.
CLAIM_STARTS: tuple[tuple[TaskStatus, TaskStatus], ...] = tuple(
    (src, dst) for src in TaskStatus if S.claimed in TRANSITIONS[src]
    for dst in TaskStatus if dst in TRANSITIONS[S.claimed] and dst in ACTIVE)



def _carried_to(done: TaskStatus) -> TaskStatus | None:
    """The stage a task that rests in ``done`` starts next, through the automatic moves and
    the gates (approved) on its way; None after the last stage."""
    starts = {st.start: st.active for st in STAGES}
    status = done
    while status not in starts:
        step = AUTOMATIC.get(status) or (GATE_BY_WAITING[status].approved
                                         if status in GATE_BY_WAITING else None)
        if step is None:
            return None
        status = step
    return starts[status]


#: A stage boundary that carries a task straight on, ``active → done → … → next active``: one
#: write on the task, recorded as every transition on the way. The database guard accepts such a
#: pair only as a carry writes it (a fresh claim token, a fresh attempt budget).
CARRIES: tuple[tuple[TaskStatus, TaskStatus], ...] = tuple(
    (st.active, nxt) for st in STAGES if (nxt := _carried_to(st.done)) is not None)

#: Human-readable label per status (the Notion status options and CLI output use these).
LABELS: dict[TaskStatus, str] = {s: s.value.replace("_", " ").title() for s in TaskStatus}
LABELS[S.sfx_ready] = "SFX Ready"
LABELS[S.generating_sfx] = "Generating SFX"


def is_allowed(current: TaskStatus, target: TaskStatus) -> bool:
    """True when ``current → target`` is an edge of the table."""
    return target in TRANSITIONS[current]


def allowed_pairs() -> list[tuple[TaskStatus, TaskStatus]]:
    """Every legal ``(from, to)`` pair, in declaration order (used to render the DB guard)."""
    return [(src, dst) for src in TaskStatus for dst in TaskStatus if dst in TRANSITIONS[src]]
