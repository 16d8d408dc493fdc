"""The API's request and response bodies (what ``/api/docs`` shows).

Task, event and channel bodies are ``app.schemas``' (the CLI's ``--json`` prints the same);
the models here add what only HTTP needs: selections, dry runs, pages and the error body.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.lifecycle import ERROR, GATE_BY_NAME, TERMINAL, TaskStatus
from app.schemas import (
    ChannelCreate,
    ChannelName,
    ChannelResponse,
    TaskEventResponse,
    TaskInDB,
)

#: The most tasks one ``GET /api/tasks`` page returns.
MAX_PAGE = 500
#: The most tasks one ``POST /api/tasks`` batch holds (a larger import is ``pipeline enqueue``).
MAX_BATCH = 1000
#: The most tasks one request may name.
MAX_IDS = 1000



def _among(allowed: Iterable[TaskStatus], what: str) -> AfterValidator:
    """Refuses a status outside ``allowed`` (the choices the CLI offers the same verb)."""
    names = [s.value for s in TaskStatus if s in set(allowed)]

    def check(value: TaskStatus) -> TaskStatus:
        if value.value not in names:
            raise ValueError(f"{value.value} is not {what} (one of {', '.join(names)})")
        return value
    return AfterValidator(check)


def _gate(value: str) -> str:
    if value not in GATE_BY_NAME:
        raise ValueError(f"unknown gate {value!r} (one of {', '.join(GATE_BY_NAME)})")
    return value


GateName = Annotated[str, AfterValidator(_gate)]
ErrorStatus = Annotated[TaskStatus, _among(ERROR, "an error state")]
HoldableStatus = Annotated[TaskStatus, _among(set(TaskStatus) - TERMINAL, "an unfinished state")]


class ErrorBody(BaseModel):
    """Every refusal: the one line the CLI prints, and what it is about when there is more."""

    error: str
    #: Per-task or per-field reasons, when the refusal has several.
    refused: list[str] | None = None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TaskItem(TaskInDB):
    """A task with its channel's YouTube id."""

    channel: str


class TaskPage(BaseModel):
    tasks: list[TaskItem]
    #: Pass as ``cursor`` for the next page; null on the last one.
    next: str | None


class TaskDetail(TaskItem):
    """A task with its artefacts (``artifacts``, by stage) and its history, oldest first."""

    events: list[TaskEventResponse]
    #: When its next stage can start, if a quota holds it back now.
    quota_slot_at: datetime | None = None


class ChannelStatusCounts(BaseModel):
    channel: str
    counts: dict[str, int]


class ErrorsSummary(BaseModel):
    retrying: int
    next_retry_at: datetime | None
    out_of_attempts: int


class StatsBody(BaseModel):
    """``pipeline stats --json``."""

    by_status: dict[str, int]
    by_channel: dict[str, dict[str, int]]
    runnable: int
    blocked: dict[str, int]
    #: When a quota blocking work now frees its next slot (null: no quota blocks anything).
    next_slot_at: datetime | None = None
    queued: int
    oldest_queued_age_seconds: float | None
    errors: ErrorsSummary


class ChannelBody(ChannelResponse):
    #: Tasks of the channel waiting for a claim.
    runnable: int | None = None


class ChannelNew(ChannelCreate):
    """``POST /api/channels``: ``pipeline channel add``'s fields (``max_concurrent`` null: no
    cap)."""

    dry_run: bool = False


class ChannelChange(_Body):
    """``PATCH /api/channels/{id}``: the fields given change (``max_concurrent`` null: no
    cap)."""

    channel_name: ChannelName | None = None
    max_concurrent: int | None = Field(None, ge=1)
    dry_run: bool = False


class DryRun(_Body):
    dry_run: bool = False


class ChannelResult(BaseModel):
    dry_run: bool
    channel: ChannelBody
    message: str


class WorkerBody(BaseModel):
    """A live worker (``pipeline workers --json``) and how many tasks it holds now."""

    id: str
    host: str
    pid: int
    started: str
    last_heartbeat: str
    concurrency: int
    holds: int


class Selection(_Body):
    """The tasks a bulk verb acts on: ``ids`` (ids, prefixes or Notion page ids), or every
    task in ``statuses`` (of ``channel``)."""

    ids: list[str] = Field(default_factory=list, max_length=MAX_IDS)
    channel: str | None = None
    reason: str | None = Field(None, max_length=2000)
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_way(self) -> Selection:
        statuses = getattr(self, "statuses", None)
        if bool(self.ids) == bool(statuses):
            raise ValueError("give ids or statuses, not both and not neither")
        if self.channel and not statuses:
            raise ValueError("channel goes with statuses")
        return self


class RequeueBody(Selection):
    statuses: list[ErrorStatus] = Field(default_factory=list)


class HoldBody(Selection):
    statuses: list[HoldableStatus] = Field(default_factory=list)


class ReleaseBody(Selection):
    statuses: list[TaskStatus] = Field(default_factory=list)


class ApproveBody(_Body):
    """``ids``, or every task waiting at ``gate`` (of ``channel``)."""

    ids: list[str] = Field(default_factory=list, max_length=MAX_IDS)
    gate: GateName | None = None
    channel: str | None = None
    note: str | None = Field(None, max_length=2000)
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_way(self) -> ApproveBody:
        if not self.ids and not self.gate:
            raise ValueError("give ids, or gate for every task waiting there")
        if self.channel and (self.ids or not self.gate):
            raise ValueError("channel goes with gate and no ids")
        return self


class PlannedTask(BaseModel):
    task_id: uuid.UUID
    title: str
    status: TaskStatus


class ApprovalItem(PlannedTask):
    gate: str


class ApproveResult(BaseModel):
    dry_run: bool
    #: Passed their gate (or would, in a dry run).
    approved: list[ApprovalItem]
    already_approved: list[ApprovalItem]
    #: Tasks refused, or skipped because they moved meanwhile, one line each.
    refused: list[str]


class RequeueItem(PlannedTask):
    stage: str
    resumes_at: TaskStatus


class RequeueResult(BaseModel):
    dry_run: bool
    count: int
    tasks: list[RequeueItem]
    #: Tasks a worker or an operator moved meanwhile, one line each (not requeued).
    skipped: list[str]


class HoldResult(BaseModel):
    dry_run: bool
    #: Held (or released) by this call, or that would be in a dry run.
    changed: list[PlannedTask]
    #: Already on hold (or, for a release, not on hold), or changed by someone else meanwhile.
    unchanged: list[PlannedTask]
    reason: str | None


class EnqueueBody(_Body):
    """A batch of tasks, each as in a ``pipeline enqueue`` JSON file."""

    tasks: list[Any] = Field(max_length=MAX_BATCH)
    dry_run: bool = False


class ItemError(BaseModel):
    #: The item's position in ``tasks``, from 0.
    index: int
    field: str
    message: str


class EnqueuedTask(BaseModel):
    index: int
    task_id: uuid.UUID
    notion_page_id: str
    status: TaskStatus
    outcome: Literal["created", "updated", "unchanged"]
    queued_now: bool


class EnqueueResult(BaseModel):
    dry_run: bool
    created: int
    updated: int
    unchanged: int
    queued: int
    #: The items that went in (or would, in a dry run).
    tasks: list[EnqueuedTask]
    #: The items refused, each with its index; the others went in.
    errors: list[ItemError]
