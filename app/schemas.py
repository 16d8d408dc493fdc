"""pydantic v2 schemas: what the CLI, the Notion sync and scripts send in and get back.

Input only, no database access. Lengths mirror the schema contract, and text the database
cannot hold (NUL, unpaired surrogates) or that has no place in a one-line field (control
characters) is refused with the field's name before it reaches the database.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from app.lifecycle import PriorityLevel, TaskStatus

_PAGE_ID = re.compile(r"[0-9a-f]{32}")


def normalize_page_id(value: str) -> str:
    """Notion page ids arrive with or without dashes, in either case; store 32 lowercase hex."""
    compact = value.strip().replace("-", "").lower()
    if not _PAGE_ID.fullmatch(compact):
        raise ValueError("must be 32 hex digits (a Notion page id, dashes allowed)")
    return compact


#: The longest ``story_direction`` accepted, in characters. The column is ``text`` (PostgreSQL
#: holds up to 1 GB); the cap leaves room for a multi-megabyte brief while keeping one row's
#: write, and an import's memory, bounded.
STORY_DIRECTION_MAX_CHARS = 10_000_000

# A line break or tab in a one-line field (a title pasted from a document) becomes one space.
_LINE_BREAKS = re.compile(r"[\t\r\n]+")
# C0 controls and DEL: PostgreSQL cannot store NUL at all, and the others have no place in a
# one-line field. A multi-line field keeps tab, LF and CR.
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f]")
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")     # from a JSON "\ud800" escape: not text


def _refuse_surrogates(value: Any) -> Any:
    """Before pydantic's own string check, which refuses these with a vaguer message."""
    if isinstance(value, str) and (found := _SURROGATE.search(value)):
        raise ValueError(f"unpaired surrogate U+{ord(found.group()):04X} at character "
                         f"{found.start() + 1} is not valid Unicode text")
    return value


def _fold_line_breaks(value: Any) -> Any:
    return _LINE_BREAKS.sub(" ", _refuse_surrogates(value)) if isinstance(value, str) else value


def _refuse(pattern: re.Pattern[str]) -> AfterValidator:
    def check(value: str) -> str:
        if found := pattern.search(value):
            raise ValueError(f"control character U+{ord(found.group()):04X} at character "
                             f"{found.start() + 1} is not allowed")
        return value
    return AfterValidator(check)


# One-line text: line breaks folded to a space, then stripped and length-checked (pydantic),
# then no control character left.
_FOLDED = BeforeValidator(_fold_line_breaks)
_ONE_LINE = _refuse(_NOT_ONE_LINE)

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
                  _FOLDED, _ONE_LINE]
Topic = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500),
                  _FOLDED, _ONE_LINE]
ChannelRef = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                              max_length=64), _FOLDED, _ONE_LINE]
ChannelName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                               max_length=255), _FOLDED, _ONE_LINE]
#: Free text over several lines: tab, LF and CR kept, every other control character refused.
StoryDirection = Annotated[str, StringConstraints(max_length=STORY_DIRECTION_MAX_CHARS),
                           BeforeValidator(_refuse_surrogates), _refuse(_NOT_TEXT)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TaskCreate(_Input):
    """A task as sent by the Notion sync or ``pipeline enqueue``; ``channel`` is the YouTube id."""

    notion_page_id: str
    channel: ChannelRef
    title: Title
    topic: Topic | None = None
    story_direction: StoryDirection | None = None
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
    story_direction: StoryDirection | None = None
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
    stage_runs: int
    failed_stage: str | None
    retry_at: datetime | None
    published_at: datetime | None
    #: An operator's hold (``pipeline hold``): since when, by whom and why; None when free.
    hold_since: datetime | None = None
    hold_by: str | None = None
    hold_reason: str | None = None
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
    channel_name: ChannelName
    max_concurrent: int | None = Field(None, ge=1)
    is_active: bool = True


class ChannelUpdate(_Input):
    """Fields to change; those not given stay (``max_concurrent`` None: no limit)."""

    channel_name: ChannelName | None = None
    max_concurrent: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _something(self) -> ChannelUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to change")
        if "channel_name" in self.model_fields_set and self.channel_name is None:
            raise ValueError("channel_name: a channel keeps a name")
        return self


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
