"""pydantic v2 schemas: what the CLI, the Notion sync and scripts send in and get back.

Input only, no database access. Lengths mirror the schema contract so bad input is refused with
the field's name before it reaches the database.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from app.lifecycle import PriorityLevel, TaskStatus

_PAGE_ID = re.compile(r"[0-9a-f]{32}")


def normalize_page_id(value: str) -> str:
    """Notion page ids arrive with or without dashes, in either case; store 32 lowercase hex."""
    compact = value.strip().replace("-", "").lower()
    if not _PAGE_ID.fullmatch(compact):
        raise ValueError("must be 32 hex digits (a Notion page id, dashes allowed)")
    return compact


Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Topic = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
ChannelRef = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TaskCreate(_Input):
    """A task as sent by the Notion sync or ``pipeline enqueue``; ``channel`` is the YouTube id."""

    notion_page_id: str
    channel: ChannelRef
    title: Title
    topic: Topic | None = None
    story_direction: str | None = None
    priority: PriorityLevel = PriorityLevel.normal
    status: TaskStatus = TaskStatus.queued

    @field_validator("notion_page_id")
    @classmethod
    def _page_id(cls, value: str) -> str:
        return normalize_page_id(value)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("status")
    @classmethod
    def _entry_status(cls, value: TaskStatus) -> TaskStatus:
        if value not in (TaskStatus.draft, TaskStatus.queued):
            raise ValueError("a new task is either 'draft' or 'queued'")
        return value


class TaskUpdate(_Input):
    """Editable fields of an existing task; status moves only through the service layer."""

    title: Title | None = None
    topic: Topic | None = None
    story_direction: str | None = None
    priority: PriorityLevel | None = None
    youtube_url: Annotated[str, StringConstraints(max_length=255)] | None = None


class TaskResponse(BaseModel):
    """A task as shown to users and scripts."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    channel_id: uuid.UUID
    notion_page_id: str
    title: str
    topic: str | None
    story_direction: str | None
    status: TaskStatus
    priority: PriorityLevel
    error_log: str | None
    youtube_url: str | None
    attempts: int
    retry_at: datetime | None
    published_at: datetime | None
    created_at: datetime
    updated_at: datetime


class TaskInDB(TaskResponse):
    """Every column, including the claim bookkeeping (for admin tooling and tests)."""

    claimed_by: str | None
    claimed_at: datetime | None
    claim_token: uuid.UUID | None
    lease_expires_at: datetime | None
    artifacts: dict[str, Any]


class TaskEventResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    from_status: TaskStatus | None
    to_status: TaskStatus
    actor: str
    note: str | None
    created_at: datetime


class ChannelCreate(_Input):
    channel_id: ChannelRef
    channel_name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                                   max_length=255)]
    max_concurrent: int | None = Field(None, ge=1)
    is_active: bool = True


class ChannelResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    channel_id: str
    channel_name: str
    is_active: bool
    max_concurrent: int | None
    created_at: datetime
    updated_at: datetime


def field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field, message)`` pairs for people: the field's dotted name, pydantic's message
    without its ``Value error,`` prefix."""
    found = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "row"
        found.append((field, error["msg"].removeprefix("Value error, ")))
    return found
