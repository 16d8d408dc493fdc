"""What a status edit made in Notion asks of a task, and whether the sync does it. Pure.

A user may queue a draft (``Queued``), take a queued task back (``Draft``) and pass the review
gate a task waits at (``Assets Approved``, ``Video Approved``, ``Audio Approved``,
``Approved``). Everything else is refused with the reason, and the page is set back to the
task's real status. A page that still shows what the sync last saw or wrote there asks for
nothing: workers have moved the task on and the push has not caught up yet.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from app import lifecycle
from app.lifecycle import GATE_BY_WAITING, GATES, LABELS, TaskStatus

APPROVALS: frozenset[TaskStatus] = frozenset(gate.approved for gate in GATES)


class Kind(enum.StrEnum):
    none = "none"
    queue = "queue"
    unqueue = "unqueue"
    approve = "approve"
    refuse = "refuse"


@dataclass(frozen=True)
class StatusEdit:
    kind: Kind
    gate: str | None = None
    reason: str = ""


NOTHING = StatusEdit(Kind.none)


def _refuse(reason: str) -> StatusEdit:
    return StatusEdit(Kind.refuse, reason=reason)


def read_edit(*, label: str | None, asked: TaskStatus | None, current: TaskStatus | None,
              shown: TaskStatus | None, linked: bool) -> StatusEdit:
    """Decide one page's status edit.

    ``asked`` is ``label`` as a status (None if unknown), ``current`` the task's status (None:
    no task yet), ``shown`` what the sync last knew the page to show (``linked``: it knows).
    """
    if not label or (linked and asked == shown):
        return NOTHING
    if asked is None:
        return _refuse(f"{label!r} is not a status label")
    if current is None:
        if asked is TaskStatus.queued:
            return StatusEdit(Kind.queue)
        if asked is TaskStatus.draft:
            return NOTHING
        return _refuse("a new task starts as Draft or Queued")
    edit = _existing(asked, current)
    # A task met for the first time (e.g. imported with ``pipeline enqueue``): its page may
    # simply be older than the task, so only forward moves count as asked for.
    return NOTHING if edit.kind is Kind.unqueue and not linked else edit


def _existing(asked: TaskStatus, current: TaskStatus) -> StatusEdit:
    if asked is current:
        return NOTHING
    if (current, asked) == (TaskStatus.draft, TaskStatus.queued):
        return StatusEdit(Kind.queue)
    if (current, asked) == (TaskStatus.queued, TaskStatus.draft):
        return StatusEdit(Kind.unqueue)
    gate = GATE_BY_WAITING.get(current)
    if gate is not None and asked is gate.approved:
        return StatusEdit(Kind.approve, gate=gate.name)
    if asked in APPROVALS:
        return _refuse(f"the task is {LABELS[current]}, not waiting for this approval")
    if lifecycle.is_allowed(current, asked):
        return _refuse(f"only a worker moves a task from {LABELS[current]} to {LABELS[asked]}")
    return _refuse(f"{LABELS[current]} → {LABELS[asked]} is not allowed")
