"""``pipeline list``, ``show`` and ``stats``: read-only views of the queue."""

from __future__ import annotations

import argparse
from datetime import datetime

import sqlalchemy as sa

from app import lifecycle
from app.commands import tables, watch
from app.commands.context import Context
from app.db import session_scope
from app.db.models import Channel, Task, TaskEvent
from app.lifecycle import TaskStatus
from app.schemas import TaskEventResponse, TaskInDB
from app.services import claims, quotas, stats, tasks, transitions

LIST_HEADERS = ("id", "channel", "status", "blocked", "priority", "attempts", "retry at",
                "updated", "title")


def _when(value: datetime | None) -> str | None:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _blocked(task: Task, quota: datetime | None) -> str | None:
    """Why a waiting task is not taken: an operator's hold, or a quota until its next slot."""
    if task.hold_since is not None:
        return "held"
    return None if quota is None else f"quota until {quota.astimezone():%H:%M:%S}"


async def list_(ctx: Context, args: argparse.Namespace) -> int:
    statuses = [TaskStatus(s) for s in args.status or []]
    async with session_scope(ctx.sessions) as session:
        found = await tasks.list_tasks(session, statuses=statuses, channel_id=args.channel,
                                       search=args.search, page_id=args.page_id,
                                       newest_first=args.sort == "newest",
                                       limit=args.limit + 1, offset=args.offset,
                                       on_hold=True if args.held else None)
        pairs = await session.execute(sa.select(Channel.id, Channel.channel_id))
        names = dict(pairs.tuples().all())
        spent = await quotas.spent(session)
    more = len(found) > args.limit
    found = found[:args.limit]
    slots = {t.id: claims.quota_wait(spent, t) for t in found}
    data = [{**TaskInDB.model_validate(t).model_dump(mode="json"), "channel": names[t.channel_id],
             "quota_slot_at": _iso(slots[t.id])} for t in found]
    rows = [(t.id, names[t.channel_id], t.status.value, _blocked(t, slots[t.id]),
             t.priority.value, t.attempts, _when(t.retry_at), _when(t.updated_at), t.title)
            for t in found]
    human = tables.render(LIST_HEADERS, rows) if rows else "no tasks match"
    if more:
        shown = f"{args.offset + 1} to {args.offset + args.limit}"
        human += (f"\n(tasks {shown} shown; --offset {args.offset + args.limit} for the next"
                  " page, --limit N for more at once)")
    ctx.emit(data, human)
    return 0


async def show(ctx: Context, args: argparse.Namespace) -> int:
    async with session_scope(ctx.sessions) as session:
        task = await tasks.get_task(session, await tasks.find_task(session, args.task_id))
        events = await tasks.history(session, task.id)
        channel = await session.get(Channel, task.channel_id)
        quota = await claims.quota_slot(session, task)
    assert channel is not None    # tasks.channel_id is a NOT NULL foreign key
    detail = TaskInDB.model_validate(task).model_dump(mode="json")
    history = [TaskEventResponse.model_validate(e).model_dump(mode="json") for e in events]
    ctx.emit({**detail, "channel": channel.channel_id, "events": history,
              "quota_slot_at": quota.isoformat() if quota else None},
             _show_text(task, channel.channel_id, events, quota))
    return 0


def _holder(task: Task) -> str | None:
    """Who holds the task; an active task with no holder was handed back and waits for a
    claim to take it over."""
    if task.claimed_by is None and task.status in lifecycle.ACTIVE:
        return "nobody (handed back: the next claim takes it over)"
    return task.claimed_by


def _hold(task: Task) -> str | None:
    """Since when, by whom and why the task is on hold (``pipeline release`` lifts it)."""
    if task.hold_since is None:
        return None
    why = f": {task.hold_reason}" if task.hold_reason else ""
    return f"since {_when(task.hold_since)} by {task.hold_by}{why} (pipeline release)"


def _show_text(task: Task, channel: str, events: list[TaskEvent],
               quota: datetime | None = None) -> str:
    fields = [("id", task.id), ("title", task.title), ("channel", channel),
              ("notion page", task.notion_page_id),
              ("status", f"{task.status.value} ({lifecycle.LABELS[task.status]})"),
              ("priority", task.priority.value), ("attempts", task.attempts),
              ("stage runs", task.stage_runs), ("failed stage", task.failed_stage),
              ("retry at", _when(task.retry_at)), ("on hold", _hold(task)),
              ("quota", None if quota is None else f"spent: next slot {_when(quota)}"),
              ("claimed by", _holder(task)),
              ("lease until", _when(task.lease_expires_at)), ("youtube", task.youtube_url),
              ("created", _when(task.created_at)), ("updated", _when(task.updated_at))]
    width = max(len(name) for name, _ in fields)
    lines = [f"{name.ljust(width)}  {'-' if value is None else value}" for name, value in fields]
    if task.error_log:
        lines += ["", "error log:", *(f"  {line}" for line in task.error_log.splitlines())]
    rows = [(e.id, _when(e.created_at), e.from_status.value if e.from_status else None,
             e.to_status.value, e.actor, e.note) for e in events]
    lines += ["", tables.render(("event", "at", "from", "to", "actor", "note"), rows)]
    return "\n".join(lines)


def _errors_line(found: stats.Stats, now: datetime) -> str:
    """Errors the workers will retry (and when the next is due) apart from those that need a
    person."""
    retry = ""
    if found.next_retry_at is not None:
        wait = (found.next_retry_at - now).total_seconds()
        retry = " (next due now)" if wait <= 0 else f" (next in {wait:,.0f}s)"
    person = (f"{found.out_of_attempts} out of attempts, waiting for a person"
              " (pipeline requeue)" if found.out_of_attempts else "0 out of attempts")
    return f"errors: {found.retrying} retrying{retry}, {person}"


async def stats_(ctx: Context, args: argparse.Namespace) -> int:
    if args.watch:
        await watch.run(ctx.sessions, interval_s=args.interval)
        return 0
    now = transitions.utcnow()
    async with session_scope(ctx.sessions) as session:
        found = await stats.collect(session, now=now)
    oldest_s = (now - found.oldest_queued_at).total_seconds() if found.oldest_queued_at else None
    channels = found.channels()
    by_status = found.by_status()
    data = {"by_status": {s.value: n for s, n in by_status.items()},
            "by_channel": {c: {s.value: n for (ch, s), n in found.counts.items() if ch == c}
                           for c in channels},
            "runnable": found.runnable, "blocked": dict(found.blocked),
            "next_slot_at": found.next_slot_at.isoformat() if found.next_slot_at else None,
            "queued": found.queued, "oldest_queued_age_seconds": oldest_s,
            "errors": {"retrying": found.retrying,
                       "next_retry_at": found.next_retry_at.isoformat()
                       if found.next_retry_at else None,
                       "out_of_attempts": found.out_of_attempts}}
    present = [s for s in TaskStatus if s in by_status]
    rows = [(s.value, *(found.counts.get((c, s), 0) for c in channels), by_status[s])
            for s in present]
    age = f"{oldest_s:,.0f}s" if oldest_s is not None else "-"
    blocked = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in found.blocked.items())
    if found.next_slot_at is not None:
        blocked += f" (next slot {found.next_slot_at.astimezone():%H:%M:%S})"
    human = "\n".join([
        tables.render(("status", *channels, "total"), rows) if rows else "no tasks",
        "", f"runnable now: {found.runnable}   blocked: {blocked or 0}   queued: {found.queued}"
            f"   oldest queued: {age}",
        _errors_line(found, now)])
    ctx.emit(data, human)
    return 0
