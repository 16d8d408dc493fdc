"""One round of the Notion sync: pull pages into tasks, apply status edits, push status back.

**Pull.** The data source is queried for pages with ``last_edited_time`` on or after the
watermark minus an overlap (``NOTION_SYNC_OVERLAP_SECONDS``), newest first, following
``next_cursor``. Each page is applied in its own short transaction: upsert through
``tasks.enqueue`` (idempotent on ``notion_page_id``), then the status edit the page asks for
(``status_edits``). The watermark is Notion's own ``last_edited_time`` of the newest page seen
(Notion's clock, not ours) and is stored only when the whole pull succeeded, so an outage makes
the next round start from the same place. The overlap catches pages whose edit was not yet
visible to the query, or that share the newest timestamp (Notion rounds it to the minute);
newest-first order means a page edited during the pull moves to pages already read, so cursor
positions shift onto pages read before (seen twice, harmless) and none is skipped.

**Push.** ``notion_pages`` records, per linked task, what its page shows: the status, and the
length of the append-only ``error_log`` (with the YouTube URL) at the moment the page's error
and URL last matched the task. A task needs a push exactly when its row differs from that
record (``status``, ``length(error_log)`` or ``youtube_url``), which one join finds:
nothing is missed whatever moved the task (a worker, the CLI, raw SQL), and a task whose page
already shows its state is never re-pushed. A pushed page is recorded with the values that
were sent; if the task moved meanwhile, it differs again and goes in the next round. The pull
updates the same record from what each page shows, so a page still showing what the sync last
saw is not mistaken for a user's edit, and a refused edit (the page now shows something else)
is pushed back. Pushes go out in batches of ``NOTION_PUSH_BATCH`` (one transaction records a
batch), at most ``NOTION_PUSH_LIMIT`` per round, under the client's rate limit.

No transaction is open across a Notion request or a Redis call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import session_scope
from app.db.models import NotionPage, NotionSyncState, Task
from app.errors import (
    BadPage,
    ChannelInactive,
    ChannelNotFound,
    InvalidTransition,
    NotionConfigError,
    NotionUnavailable,
    PushRefused,
)
from app.lifecycle import LABELS, TaskStatus
from app.notion import mapping
from app.notion.client import Notion
from app.notion.mapping import PageView, PropertyNames
from app.notion.status_edits import Kind, StatusEdit, read_edit
from app.observability import instruments
from app.services import tasks, transitions

ACTOR = "notion-sync"
PAGE_SIZE = 100
NEWEST_FIRST = [{"timestamp": "last_edited_time", "direction": "descending"}]

log = logging.getLogger("app.notion")

Wake = Callable[[int], Awaitable[None]]
Progress = Callable[[str], None]


@dataclass
class SyncSummary:
    """What one round did; ``problems`` holds one line per bad page, refusal or failed push."""

    seen: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    queued: int = 0
    approved: int = 0
    refused: int = 0
    bad: int = 0
    pushed: int = 0
    push_failed: int = 0
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "problems"}

    @property
    def clean(self) -> bool:
        return not (self.bad or self.push_failed)


@dataclass(frozen=True)
class _Linked:
    """A page's task and what the sync knows its page shows (``link`` None: never linked)."""

    task_id: uuid.UUID
    status: TaskStatus
    error_log: str | None
    youtube_url: str | None
    link: NotionPage | None


class Round:
    """One sync round over one data source; ``run`` pulls, then pushes."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], notion: Notion,
                 settings: Settings, *, wake: Wake | None = None,
                 progress: Progress | None = None, stop: asyncio.Event | None = None) -> None:
        self.sessions, self.notion, self.settings = sessions, notion, settings
        self.names = PropertyNames.from_settings(settings)
        self.wake, self.progress, self.stop = wake, progress, stop
        self.summary = SyncSummary()
        self._runnable = 0

    async def run(self) -> SyncSummary:
        try:
            self.names = mapping.check_schema(await self.notion.schema(), self.names)
        except ValueError as exc:
            raise NotionConfigError(str(exc)) from None
        try:
            await self.pull()
        finally:
            await self._wake()
        if not self._stopping():
            await self.push()
        return self.summary

    # ---- pull ------------------------------------------------------------------------------

    async def pull(self) -> None:
        """Apply every page edited since the watermark; store the new one if all went well."""
        since = await self._watermark()
        newest = since
        query: dict[str, Any] = {"sorts": NEWEST_FIRST, "page_size": PAGE_SIZE}
        if since is not None:
            start = since - timedelta(seconds=self.settings.notion_sync_overlap_s)
            query["filter"] = {"timestamp": "last_edited_time",
                               "last_edited_time": {"on_or_after": _iso(start)}}
        cursor: str | None = None
        while not self._stopping():
            body = query | {"start_cursor": cursor} if cursor else query
            response = await self.notion.query(**body)
            for page in response.get("results", []):
                if self._stopping():
                    return
                edited = mapping.last_edited(page)
                if edited is not None and (newest is None or edited > newest):
                    newest = edited
                await self.apply(page)
            self._report(f"pulled {self.summary.seen} pages", self.summary.seen > PAGE_SIZE)
            cursor = response.get("next_cursor") if response.get("has_more") else None
            if cursor is None:
                if newest is not None and newest != since:
                    await self._save_watermark(newest)
                return

    async def apply(self, page: dict[str, Any]) -> None:
        """One page in one transaction; a bad page is counted and rolled back alone."""
        self.summary.seen += 1
        try:
            view = mapping.read_page(page, self.names)
        except BadPage as exc:
            self._problem("bad", str(exc))
            return
        try:
            await self._apply(view)
        except (ChannelNotFound, ChannelInactive) as exc:
            self._problem("bad", str(BadPage(view.page_id, self.names.channel, str(exc))))

    async def _apply(self, view: PageView) -> None:
        async with session_scope(self.sessions) as session:
            linked = await _linked(session, view.page_id)
            edit = read_edit(label=view.status_label, asked=view.asked,
                             current=linked.status if linked else None,
                             shown=linked.link.status if linked and linked.link else None,
                             linked=bool(linked and linked.link))
            entry = TaskStatus.queued if edit.kind is Kind.queue else TaskStatus.draft
            result = await tasks.enqueue(session, view.task.model_copy(update={"status": entry}),
                                         actor=ACTOR)
            moved, refusal = await self._status_edit(session, result.task_id, edit)
            if refusal:
                status = await transitions.current_status(session, result.task_id)
            await _record_page(session, result.task_id, view, self.names, linked,
                               data_source_id=self.notion.data_source_id)
        approved = moved and edit.kind is Kind.approve
        self._count(result.outcome, moved)
        self.summary.queued += result.queued_now
        self.summary.approved += approved
        self._runnable += int(result.queued_now or approved)
        if refusal:
            self._problem("refused", f"page {view.page_id}: status {view.status_label!r} "
                          f"refused: {refusal}; set back to {LABELS[status]!r}")

    async def _status_edit(self, session: AsyncSession, task_id: uuid.UUID,
                           edit: StatusEdit) -> tuple[bool, str]:
        """Apply an approval or un-queue; returns (moved, refusal reason)."""
        try:
            if edit.kind is Kind.approve:
                await transitions.approve(session, task_id, actor=ACTOR, gate=edit.gate,
                                          note=f"{edit.gate} approved in Notion")
                return True, ""
            if edit.kind is Kind.unqueue:
                await transitions.transition(session, task_id, TaskStatus.draft, actor=ACTOR,
                                             note="set back to draft in Notion",
                                             expected=TaskStatus.queued)
                return True, ""
        except InvalidTransition as exc:  # the task moved on since it was read
            return False, str(exc)
        return False, edit.reason if edit.kind is Kind.refuse else ""

    def _count(self, outcome: tasks.Outcome, moved: bool) -> None:
        if outcome is tasks.Outcome.created:
            self.summary.created += 1
        elif outcome is tasks.Outcome.updated or moved:
            self.summary.updated += 1
        else:
            self.summary.unchanged += 1

    # ---- push ------------------------------------------------------------------------------

    async def push(self) -> None:
        """Write status, error line, YouTube URL (and hold, with ``NOTION_PROP_HOLD``) to every
        page that does not show them."""
        after: uuid.UUID | None = None
        batches = 0
        limit = self.settings.notion_push_limit
        while self.summary.pushed + self.summary.push_failed < limit and not self._stopping():
            size = min(self.settings.notion_push_batch,
                       limit - self.summary.pushed - self.summary.push_failed)
            async with session_scope(self.sessions) as session:
                batch = await _push_candidates(session, self.notion.data_source_id,
                                               after=after, limit=size,
                                               hold=bool(self.names.hold))
            if not batch:
                return
            after, batches = batch[-1].id, batches + 1
            await self._push_batch(batch)
            self._report(f"pushed {self.summary.pushed} pages", batches > 1)

    async def _push_batch(self, batch: list[sa.Row[Any]]) -> None:
        results = await asyncio.gather(*(self._push_one(row) for row in batch),
                                       return_exceptions=True)
        done = [row for row, result in zip(batch, results, strict=True)
                if result is None or isinstance(result, PushRefused)]
        if done:
            async with session_scope(self.sessions) as session:
                for row in done:
                    await _record_push(session, row)
        for result in results:
            if isinstance(result, PushRefused):
                self._problem("push_failed", str(result))
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, PushRefused):
                raise result
        self.summary.pushed += sum(result is None for result in results)

    async def _push_one(self, row: sa.Row[Any]) -> None:
        properties = mapping.push_properties(
            self.names, row.status, row.error_log, row.youtube_url,
            mapping.hold_text(row.hold_since, row.hold_by, row.hold_reason))
        await self.notion.update_page(row.notion_page_id, properties)

    # ---- bookkeeping -----------------------------------------------------------------------

    async def _watermark(self) -> datetime | None:
        async with session_scope(self.sessions) as session:
            watermark = await session.scalar(sa.select(NotionSyncState.watermark).where(
                NotionSyncState.data_source_id == self.notion.data_source_id))
        return _utc(watermark) if watermark is not None else None

    async def _save_watermark(self, newest: datetime) -> None:
        async with session_scope(self.sessions) as session:
            state = await session.get(NotionSyncState, self.notion.data_source_id)
            if state is None:
                session.add(NotionSyncState(data_source_id=self.notion.data_source_id,
                                            watermark=newest))
            else:
                state.watermark = newest

    async def _wake(self) -> None:
        if self.wake is not None and self._runnable:
            await self.wake(self._runnable)
        self._runnable = 0

    def _problem(self, counter: str, message: str) -> None:
        setattr(self.summary, counter, getattr(self.summary, counter) + 1)
        self.summary.problems.append(message)
        instruments.notion_error(counter)
        log.warning("notion sync: %s", message)

    def _report(self, message: str, long_run: bool) -> None:
        if self.progress is not None and long_run:
            self.progress(message)

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()


def _utc(when: datetime) -> datetime:
    """SQLite hands timestamps back naive; they were stored in UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _iso(when: datetime) -> str:
    """Notion's timestamp format (UTC, milliseconds, ``Z``)."""
    return _utc(when).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


async def _linked(session: AsyncSession, page_id: str) -> _Linked | None:
    row = (await session.execute(
        sa.select(Task.id, Task.status, Task.error_log, Task.youtube_url, NotionPage)
        .outerjoin(NotionPage, NotionPage.task_id == Task.id)
        .where(Task.notion_page_id == page_id))).one_or_none()
    return None if row is None else _Linked(*row)


async def _record_page(session: AsyncSession, task_id: uuid.UUID, view: PageView,
                       names: PropertyNames, linked: _Linked | None, *,
                       data_source_id: str) -> None:
    """Record what the page shows; unchanged values write nothing."""
    error_log = linked.error_log if linked else None
    youtube_url = linked.youtube_url if linked else None
    error_ok = not names.error or view.error == mapping.last_error_line(error_log)
    url_ok = not names.youtube_url or view.youtube_url == youtube_url
    link = linked.link if linked and linked.link else await session.get(NotionPage, task_id)
    if link is None:
        link = NotionPage(task_id=task_id)
        session.add(link)
    link.data_source_id = data_source_id
    link.status = view.asked
    link.error_len = len(error_log or "") if error_ok and url_ok else None
    link.youtube_url = youtube_url


def _needs_push(*, hold: bool) -> sa.ColumnElement[bool]:
    differs = [Task.status.is_distinct_from(NotionPage.status),
               NotionPage.error_len.is_(None),
               NotionPage.error_len != sa.func.coalesce(sa.func.length(Task.error_log), 0),
               Task.youtube_url.is_distinct_from(NotionPage.youtube_url)]
    if hold:
        differs.append(Task.hold_since.is_distinct_from(NotionPage.hold_since))
    return sa.or_(*differs)


async def _push_candidates(session: AsyncSession, data_source_id: str, *,
                           after: uuid.UUID | None, limit: int,
                           hold: bool) -> list[sa.Row[Any]]:
    stmt = (sa.select(Task.id, Task.notion_page_id, Task.status, Task.error_log,
                      Task.youtube_url, Task.hold_since, Task.hold_by, Task.hold_reason)
            .join(NotionPage, NotionPage.task_id == Task.id)
            .where(NotionPage.data_source_id == data_source_id, _needs_push(hold=hold))
            .order_by(Task.id).limit(limit))
    if after is not None:
        stmt = stmt.where(Task.id > after)
    return cast(list[sa.Row[Any]], list((await session.execute(stmt)).all()))


async def _record_push(session: AsyncSession, row: sa.Row[Any]) -> None:
    await session.execute(sa.update(NotionPage).where(NotionPage.task_id == row.id).values(
        status=row.status, error_len=len(row.error_log or ""), youtube_url=row.youtube_url,
        hold_since=row.hold_since))


async def sync_once(sessions: async_sessionmaker[AsyncSession], notion: Notion,
                    settings: Settings, *, wake: Wake | None = None,
                    progress: Progress | None = None,
                    stop: asyncio.Event | None = None) -> SyncSummary:
    """One round: pull, apply, push. Raises ``NotionUnavailable`` on an outage (pages applied
    so far stay applied, the watermark stays) and ``NotionConfigError`` when misconfigured."""
    with instruments.sync_round():
        return await Round(sessions, notion, settings, wake=wake, progress=progress,
                           stop=stop).run()


async def sync_loop(sessions: async_sessionmaker[AsyncSession], notion: Notion,
                    settings: Settings, *, stop: asyncio.Event, wake: Wake | None = None,
                    progress: Progress | None = None,
                    on_round: Callable[[SyncSummary], None] | None = None) -> None:
    """Rounds every ``NOTION_SYNC_INTERVAL_SECONDS`` until ``stop`` is set. An outage is logged
    and the next round tries again; ``NotionConfigError`` ends the loop (it will not heal)."""
    while not stop.is_set():
        try:
            summary = await sync_once(sessions, notion, settings, wake=wake,
                                      progress=progress, stop=stop)
        except NotionUnavailable as exc:
            log.warning("notion sync: %s; next round in %gs", exc,
                        settings.notion_sync_interval_s)
        else:
            if on_round is not None:
                on_round(summary)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.notion_sync_interval_s)
