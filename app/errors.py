"""Typed errors of the service layer. Each leaves the database unchanged when raised.

The base class's docstring is its default message; subclasses carry the data they are about.
"""

from __future__ import annotations

import uuid

from app.lifecycle import TaskStatus


class PipelineError(Exception):
    """The pipeline refused an operation."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InvalidTransition(PipelineError):
    """The task is not in a status from which the requested move is allowed."""

    def __init__(
        self, task_id: uuid.UUID, current: TaskStatus | None, target: TaskStatus,
        *, reason: str | None = None,
    ) -> None:
        self.task_id, self.current, self.target = task_id, current, target
        shown = current.value if current is not None else "?"
        detail = reason or f"{shown} → {target.value} is not allowed"
        super().__init__(f"task {task_id}: {detail}")


class StaleClaim(InvalidTransition):
    """The worker's claim token no longer matches: its lease was reaped and the task moved on."""


class NeedsPostgreSQL(PipelineError):
    """This needs PostgreSQL (workers claim with row locks and a PL/pgSQL function)."""


class TaskNotFound(PipelineError):
    """No task has this id."""

    def __init__(self, task_id: uuid.UUID | str) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id} not found")


class AmbiguousTask(PipelineError):
    """A task id prefix that more than one task starts with."""

    def __init__(self, ref: str, matches: list[uuid.UUID]) -> None:
        self.ref = ref
        self.matches = matches
        shown = ", ".join(str(m) for m in matches[:3])
        super().__init__(f"task {ref!r} is ambiguous: {shown}"
                         f"{', …' if len(matches) > 3 else ''} (give more characters)")


class BadTaskRef(PipelineError):
    """Not a task id, a task id prefix or a Notion page id."""

    def __init__(self, ref: str, why: str) -> None:
        self.ref = ref
        super().__init__(f"task {ref!r}: {why}")


class CannotHold(PipelineError):
    """A finished task cannot be held."""

    def __init__(self, task_id: uuid.UUID, status: TaskStatus) -> None:
        self.task_id, self.status = task_id, status
        super().__init__(f"task {task_id} is {status.value}: a finished task cannot be held")


class ChannelNotFound(PipelineError):
    """No channel has this YouTube channel id."""

    def __init__(self, channel_id: str) -> None:
        self.channel_id = channel_id
        super().__init__(f"channel {channel_id!r} not found")


class ChannelInactive(PipelineError):
    """The channel is deactivated and takes no new tasks."""

    def __init__(self, channel_id: str) -> None:
        self.channel_id = channel_id
        super().__init__(f"channel {channel_id!r} is inactive")


class ChannelExists(PipelineError):
    """A channel with this YouTube channel id already exists."""

    def __init__(self, channel_id: str) -> None:
        self.channel_id = channel_id
        super().__init__(f"channel {channel_id!r} already exists")


class ChannelHasTasks(PipelineError):
    """The channel still has tasks: removing it would orphan or cascade them away."""

    def __init__(self, channel_id: str, tasks: int) -> None:
        self.channel_id = channel_id
        self.tasks = tasks
        super().__init__(f"channel {channel_id!r} has {tasks} task(s): tasks are never removed"
                         " with their channel (deactivate it instead)")


class NotionError(PipelineError):
    """The Notion sync could not run."""


class NotionConfigError(NotionError):
    """The Notion sync is not configured correctly (a variable, the token or the data source)."""


class NotionUnavailable(NotionError):
    """Notion did not answer usably (timeout, 5xx, rate limit beyond the client's retries)."""


class BadPage(PipelineError):
    """A Notion page cannot become a task: one of its fields is missing or invalid."""

    def __init__(self, page_id: str, field: str, reason: str) -> None:
        self.page_id, self.field, self.reason = page_id, field, reason
        super().__init__(f"page {page_id}: {field}: {reason}")


class PushRefused(NotionError):
    """Notion refused to update one page (deleted, not shared, or a value it does not accept)."""

    def __init__(self, page_id: str, detail: str) -> None:
        self.page_id, self.detail = page_id, detail
        super().__init__(f"page {page_id}: Notion refused the update: {detail}")


def miss_error(
    task_id: uuid.UUID, expected: TaskStatus, target: TaskStatus,
    claim_token: uuid.UUID | None, found: tuple[TaskStatus, uuid.UUID | None] | None,
) -> InvalidTransition:
    """The error for a guarded write that matched no row, given the task's (status, token) as
    read afterwards; raises ``TaskNotFound`` when there is no such task."""
    if found is None:
        raise TaskNotFound(task_id)
    status, token = found
    if claim_token is not None and (status is not expected or token != claim_token):
        held = "lease lost" if status is expected else f"the task is {status.value} now"
        return StaleClaim(task_id, status, target,
                          reason=f"claim no longer held ({held}); write refused")
    return InvalidTransition(task_id, status, target,
                             reason=f"expected {expected.value}, found {status.value}")


class BadQuota(PipelineError):
    """A quota's stage, limit or window is invalid."""


class QuotaNotFound(PipelineError):
    """No quota is set on this stage and scope."""

    def __init__(self, stage: str, scope: str) -> None:
        self.stage, self.scope = stage, scope
        super().__init__(f"no {scope} quota on {stage}")
