"""Opaque cursors for ``GET /api/tasks``: the last task's ``(created_at, id)`` and the order.

A keyset, not an offset: tasks added between two pages neither shift nor repeat the ones
already seen. The cursor is base64 so clients pass it back as it is and never build one.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from app.web.errors import BadInput

Key = tuple[datetime, uuid.UUID]


def encode(created_at: datetime, task_id: uuid.UUID, *, newest_first: bool) -> str:
    raw = f"{'n' if newest_first else 'o'}|{created_at.isoformat()}|{task_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(cursor: str, *, newest_first: bool) -> Key:
    """The task the page starts after; ``BadInput`` for a cursor this API did not give (or
    gave for the other order)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        order, when, task_id = raw.split("|")
        key = (datetime.fromisoformat(when), uuid.UUID(task_id))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadInput("cursor: not a cursor this API gave (pass `next` back as it is)") \
            from None
    if order != ("n" if newest_first else "o"):
        raise BadInput("cursor: given for the other sort order") from None
    return key
