"""Notion page JSON ↔ the pipeline's vocabulary. Pure: no I/O.

A page becomes a ``PageView`` (its task fields as a ``TaskCreate``, its status label, the error
and YouTube URL it shows), or raises ``BadPage`` naming the page and the Notion property.
``push_properties`` builds the ``pages.update`` body that shows a task's state on its page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from app.config import Settings
from app.errors import BadPage
from app.lifecycle import LABELS, TaskStatus
from app.schemas import TaskCreate, field_errors, normalize_page_id

#: Notion's limit for one rich-text item: a longer error line is cut to it.
MAX_TEXT = 2000

STATUS_BY_LABEL: dict[str, TaskStatus] = {label.casefold(): s for s, label in LABELS.items()}


@dataclass(frozen=True)
class PropertyNames:
    """The Notion property behind each field (``NOTION_PROP_*``); an empty name is not used."""

    title: str
    topic: str
    story_direction: str
    channel: str
    priority: str
    status: str
    error: str
    youtube_url: str
    #: Shows an operator's hold (``pipeline hold``); empty by default (not pushed).
    hold: str = ""
    #: ``status`` or ``select``: how the status property is written.
    status_type: str = "status"

    @classmethod
    def from_settings(cls, settings: Settings) -> PropertyNames:
        return cls(settings.notion_prop_title, settings.notion_prop_topic,
                   settings.notion_prop_story_direction, settings.notion_prop_channel,
                   settings.notion_prop_priority, settings.notion_prop_status,
                   settings.notion_prop_error, settings.notion_prop_youtube_url,
                   settings.notion_prop_hold)


@dataclass(frozen=True)
class PageView:
    """One Notion page as the sync reads it."""

    page_id: str
    last_edited: datetime
    #: The task's fields; ``status`` is decided by the sync (draft unless the page queues it).
    task: TaskCreate
    status_label: str | None
    error: str
    youtube_url: str | None

    @property
    def asked(self) -> TaskStatus | None:
        """The status the page shows, or None for an empty or unknown label."""
        return status_for_label(self.status_label)


def status_for_label(label: str | None) -> TaskStatus | None:
    """``"Assets Approved"`` → ``assets_approved`` (any case); None when not one of ours."""
    return STATUS_BY_LABEL.get(label.strip().casefold()) if label else None


def last_error_line(error_log: str | None) -> str:
    """The newest line of an append-only error log, cut to what a Notion text item holds."""
    if not error_log:
        return ""
    return error_log.rstrip("\n").rsplit("\n", 1)[-1][:MAX_TEXT]


def last_edited(page: dict[str, Any]) -> datetime | None:
    """The page's ``last_edited_time`` (None when absent or malformed)."""
    try:
        return datetime.fromisoformat(str(page["last_edited_time"]))
    except (KeyError, ValueError):
        return None


def read_page(page: dict[str, Any], names: PropertyNames) -> PageView:
    """Map a page object to a ``PageView``; raises ``BadPage`` for the first bad field."""
    raw_id = str(page.get("id", ""))
    try:
        page_id = normalize_page_id(raw_id)
    except ValueError as exc:
        raise BadPage(raw_id or "?", "id", str(exc)) from None
    edited = last_edited(page)
    if edited is None:
        raise BadPage(page_id, "last_edited_time", "missing or not a timestamp")
    values = {field: _value(page, page_id, name) for field, name in _fields(names).items()}
    for field in ("title", "channel"):
        if not values[field]:
            raise BadPage(page_id, getattr(names, field), "missing")
    return PageView(page_id, edited, _task(page_id, values, names), values["status"],
                    values["error"] or "", values["youtube_url"] or None)


def _fields(names: PropertyNames) -> dict[str, str]:
    return {"title": names.title, "topic": names.topic,
            "story_direction": names.story_direction, "channel": names.channel,
            "priority": names.priority, "status": names.status, "error": names.error,
            "youtube_url": names.youtube_url, "hold": names.hold}


def _task(page_id: str, values: dict[str, str | None], names: PropertyNames) -> TaskCreate:
    data = {"notion_page_id": page_id, "title": values["title"], "channel": values["channel"],
            "topic": values["topic"] or None, "story_direction": values["story_direction"] or None,
            "status": TaskStatus.draft}
    if values["priority"]:
        data["priority"] = values["priority"]
    try:
        return TaskCreate.model_validate(data)
    except ValidationError as exc:
        field, message = field_errors(exc)[0]
        raise BadPage(page_id, _fields(names).get(field, field), message) from None


def _value(page: dict[str, Any], page_id: str, name: str) -> str | None:
    """A property's plain value: text, option name or URL (None when empty or not there)."""
    prop = page.get("properties", {}).get(name) if name else None
    if not isinstance(prop, dict):
        return None
    kind = prop.get("type")
    payload = prop.get(kind) if isinstance(kind, str) else None
    if kind in ("title", "rich_text"):
        return "".join(str(item.get("plain_text", "")) for item in payload or [])
    if kind in ("select", "status"):
        return str(payload["name"]) if isinstance(payload, dict) else None
    if kind in ("url", "email", "phone_number"):
        return None if payload is None else str(payload)
    raise BadPage(page_id, name, f"unsupported property type {kind!r}")


def hold_text(since: datetime | None, by: str | None, reason: str | None) -> str:
    """What the hold property shows: empty when the task is not on hold."""
    if since is None:
        return ""
    return f"On hold since {since:%Y-%m-%d %H:%M} UTC by {by}" + (f": {reason}" if reason else "")


def push_properties(names: PropertyNames, status: TaskStatus, error_log: str | None,
                    youtube_url: str | None, hold: str = "") -> dict[str, Any]:
    """The ``properties`` of a ``pages.update`` showing the task's status, error, URL and
    hold."""
    props: dict[str, Any] = {names.status: {names.status_type: {"name": LABELS[status]}}}
    if names.error:
        line = last_error_line(error_log)
        props[names.error] = {"rich_text": [{"type": "text", "text": {"content": line}}]
                              if line else []}
    if names.youtube_url:
        props[names.youtube_url] = {"url": youtube_url}
    if names.hold:
        props[names.hold] = {"rich_text": [{"type": "text", "text": {"content": hold[:MAX_TEXT]}}]
                             if hold else []}
    return props


#: Property types the sync accepts for each field.
ACCEPTED_TYPES: dict[str, frozenset[str]] = {
    "title": frozenset({"title"}),
    "topic": frozenset({"rich_text", "select"}),
    "story_direction": frozenset({"rich_text"}),
    "channel": frozenset({"rich_text", "select"}),
    "priority": frozenset({"select", "status"}),
    "status": frozenset({"status", "select"}),
    "error": frozenset({"rich_text"}),
    "youtube_url": frozenset({"url"}),
    "hold": frozenset({"rich_text"}),
}
REQUIRED = ("title", "channel", "status")


def check_schema(schema: dict[str, Any], names: PropertyNames) -> PropertyNames:
    """Check the data source has every configured property with a usable type.

    Returns ``names`` with the status property's type; raises ``ValueError`` naming the
    property and its ``NOTION_PROP_*`` variable.
    """
    props = schema.get("properties", {})
    for field, name in _fields(names).items():
        variable = f"NOTION_PROP_{field.upper()}"
        if not name:
            if field in REQUIRED:
                raise ValueError(f"{variable} is empty")
            continue
        kind = props.get(name, {}).get("type")
        if kind is None:
            raise ValueError(f"the data source has no property {name!r} ({variable})")
        if kind not in ACCEPTED_TYPES[field]:
            wanted = " or ".join(sorted(ACCEPTED_TYPES[field]))
            raise ValueError(f"property {name!r} ({variable}) is {kind}, expected {wanted}")
    return PropertyNames(**{**_fields(names), "status_type": props[names.status]["type"]})
