"""ORM models for channels, tasks and their event history (the schema contract, DESIGN.md §3).

One naming convention on the metadata names every constraint and index the same way on
PostgreSQL and SQLite. Status writes never happen through these models directly: every statement
that moves a task is in ``app.db.statements`` (guarded ``UPDATE … WHERE status = :from``), plus
the claim function (``app.db.ddl.claim_task``), and what each move writes is ``app.moves``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from app.db.ddl import claim_task
from app.lifecycle import ACTIVE, STAGES, PriorityLevel, TaskStatus

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


_RUNNABLE = claim_task.runnable_predicate(
    [st.start.value for st in STAGES if st.start is not TaskStatus.claimed],
    dict.fromkeys(st.error.value for st in STAGES),
    [s.value for s in TaskStatus if s in ACTIVE])
_STAGE_NAMES = ", ".join(f"'{st.name}'" for st in STAGES)

SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f', 'now'))"


class random_uuid(FunctionElement[uuid.UUID]):
    """Server-side random UUID: ``gen_random_uuid()`` on PostgreSQL, 32 hex chars on SQLite."""

    type = sa.Uuid()
    inherit_cache = True


@compiles(random_uuid)
def _random_uuid_default(element: random_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    return "gen_random_uuid()"


@compiles(random_uuid, "sqlite")
def _random_uuid_sqlite(element: random_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    return "(lower(hex(randomblob(16))))"


class utc_now(FunctionElement[datetime]):
    """Server clock: ``now()`` on PostgreSQL; milliseconds on SQLite (CURRENT_TIMESTAMP has
    whole seconds only, which would turn FIFO order into ties)."""

    type = sa.DateTime(timezone=True)
    inherit_cache = True


@compiles(utc_now)
def _utc_now_default(element: utc_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


@compiles(utc_now, "sqlite")
def _utc_now_sqlite(element: utc_now, compiler: SQLCompiler, **kw: Any) -> str:
    return SQLITE_NOW


def status_type() -> sa.Enum:
    """The ``taskstatus`` enum: native on PostgreSQL, VARCHAR + CHECK on SQLite."""
    return sa.Enum(TaskStatus, name="taskstatus", create_constraint=True,
                   values_callable=lambda e: [m.value for m in e])


def priority_type() -> sa.Enum:
    """The ``prioritylevel`` enum, declared high → low so ORDER BY puts high first."""
    return sa.Enum(PriorityLevel, name="prioritylevel", create_constraint=True,
                   values_callable=lambda e: [m.value for m in e])


Timestamp = sa.DateTime(timezone=True)
#: Arrays on PostgreSQL; SQLite (no claims there) keeps them as JSON text.
UuidArray = ARRAY(sa.Uuid).with_variant(sa.JSON(), "sqlite")
TimestampArray = ARRAY(Timestamp).with_variant(sa.JSON(), "sqlite")
IntegerArray = ARRAY(sa.Integer).with_variant(sa.JSON(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")
#: Identity BIGINT on PostgreSQL; SQLite needs INTEGER for its rowid alias (AUTOINCREMENT below).
EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(
        Timestamp, nullable=False, server_default=utc_now())
    #: Also kept true by a database trigger, so raw SQL updates move it too.
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, nullable=False, server_default=utc_now(), onupdate=utc_now())


class Channel(TimestampMixin, Base):
    """A YouTube channel; ``max_concurrent`` caps its tasks in active states (null = no cap)."""

    __tablename__ = "channels"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, primary_key=True, default=uuid.uuid4, server_default=random_uuid())
    channel_id: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    channel_name: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    is_active: Mapped[bool] = mapped_column(
        sa.Boolean(create_constraint=True, name="is_active"), nullable=False,
        server_default=sa.true(), default=True)
    max_concurrent: Mapped[int | None] = mapped_column(sa.Integer)
    #: The number of the channel's last pick-up (the id of its claim event, issued by the
    #: database as pick-ups decide; null: never picked). Channels with work take turns, lowest
    #: first (``app.db.ddl.claim_task``).
    turn: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: Pick-ups so far (a late-comer is raised to one below the most at its first pick):
    #: channels with work at one priority are picked fewest first, so none gets ahead.
    picks: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, server_default="0",
                                       default=0)
    #: The tasks reserved by pick-ups of the channel whose claims may not have run yet, and
    #: when each was reserved (PostgreSQL; see ``app.db.ddl.claim_task``).
    reserved: Mapped[list[uuid.UUID]] = mapped_column(
        UuidArray, nullable=False, server_default="{}", default=list)
    reserved_at: Mapped[list[datetime]] = mapped_column(
        TimestampArray, nullable=False, server_default="{}", default=list)
    #: When the last of them expires: until then rankings pass the reserved tasks over.
    reserved_until: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        sa.CheckConstraint("max_concurrent IS NULL OR max_concurrent >= 1",
                           name="max_concurrent_positive"),
    )


class Task(TimestampMixin, Base):
    """One video moving through the pipeline, plus the queue bookkeeping of its current claim."""

    __tablename__ = "tasks"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, primary_key=True, default=uuid.uuid4, server_default=random_uuid())
    channel_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("channels.id", ondelete="RESTRICT"), nullable=False)
    notion_page_id: Mapped[str] = mapped_column(sa.String(32), nullable=False, unique=True)
    title: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    topic: Mapped[str | None] = mapped_column(sa.String(500))
    story_direction: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[TaskStatus] = mapped_column(
        status_type(), nullable=False, server_default=TaskStatus.draft.value,
        default=TaskStatus.draft)
    priority: Mapped[PriorityLevel] = mapped_column(
        priority_type(), nullable=False, server_default=PriorityLevel.normal.value,
        default=PriorityLevel.normal)
    error_log: Mapped[str | None] = mapped_column(sa.Text)
    youtube_url: Mapped[str | None] = mapped_column(sa.String(255))

    #: Worker incarnation holding the current claim, and when it claimed.
    claimed_by: Mapped[str | None] = mapped_column(sa.String(100))
    claimed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    #: Fresh per claim; every later write by that worker must present it (fencing).
    claim_token: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    #: Attempts of the current stage's budget, counted by the claim that starts a run; reset
    #: when the stage succeeds and by an operator's requeue (a fresh budget).
    attempts: Mapped[int] = mapped_column(
        sa.Integer, nullable=False, server_default="0", default=0)
    #: Runs of the current stage, retries and requeues included (what a handler sees as its
    #: attempt); reset when the stage succeeds.
    stage_runs: Mapped[int] = mapped_column(
        sa.Integer, nullable=False, server_default="0", default=0)
    #: In an error state: the stage that failed, where the retry resumes (``app.moves``).
    failed_stage: Mapped[str | None] = mapped_column(sa.String(16))
    #: When an errored task's automatic retry is due (null: waits for an operator).
    retry_at: Mapped[datetime | None] = mapped_column(Timestamp)
    published_at: Mapped[datetime | None] = mapped_column(Timestamp)
    #: An operator's hold: since when, by whom and why. A task on hold is never claimed, and
    #: its running stage is handed back at the next heartbeat; its status is unchanged.
    hold_since: Mapped[datetime | None] = mapped_column(Timestamp)
    hold_by: Mapped[str | None] = mapped_column(sa.String(100))
    hold_reason: Mapped[str | None] = mapped_column(sa.Text)
    #: Stage outputs keyed by stage name.
    artifacts: Mapped[dict[str, Any]] = mapped_column(
        Json, nullable=False, server_default=sa.text("'{}'"), default=dict)

    __table_args__ = (
        sa.Index("ix_tasks_status", "status"),
        sa.Index("ix_tasks_created_at", "created_at"),
        sa.Index("ix_tasks_channel_id_status", "channel_id", "status"),
        # The claim index: only queued rows not on hold, keyed for "per channel, by priority,
        # then FIFO".
        sa.Index("ix_tasks_queued", "channel_id", "priority", "created_at", "id",
                 postgresql_where=sa.text(claim_task.QUEUED_PREDICATE),
                 sqlite_where=sa.text(claim_task.QUEUED_PREDICATE)),
        # The claim's probe of the other runnable rows (few; see app.db.ddl.claim_task).
        sa.Index(claim_task.RUNNABLE_INDEX, *claim_task.RUNNABLE_COLUMNS,
                 postgresql_where=sa.text(_RUNNABLE), sqlite_where=sa.text(_RUNNABLE)),
        sa.CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        sa.CheckConstraint("stage_runs >= 0", name="stage_runs_non_negative"),
        sa.CheckConstraint(f"failed_stage IN ({_STAGE_NAMES})", name="failed_stage_known"),
    )


class TaskEvent(Base):
    """Append-only history: one row per transition and per operator action on a task."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(EventId, sa.Identity(), primary_key=True)
    task_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False, index=True)
    from_status: Mapped[TaskStatus | None] = mapped_column(status_type())
    to_status: Mapped[TaskStatus] = mapped_column(
        status_type(), nullable=False)
    actor: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    note: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(
        Timestamp, nullable=False, server_default=utc_now())

    __table_args__ = (
        {"sqlite_autoincrement": True},
    )


class NotionSyncState(Base):
    """Per Notion data source: the pull watermark, advanced only by a complete pull."""

    __tablename__ = "notion_sync_state"

    #: The data source id as 32 lowercase hex (no dashes).
    data_source_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    #: Notion's ``last_edited_time`` of the newest page the last complete pull saw.
    watermark: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, nullable=False, server_default=utc_now(), onupdate=utc_now())


class NotionPage(Base):
    """What a task's Notion page shows, as far as the sync knows: it tells a user's edit from a
    page not yet updated, and which tasks need a push (see ``app.notion.sync``)."""

    __tablename__ = "notion_pages"

    task_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    #: The data source the page was pulled from (32 lowercase hex): pushes go to its pages.
    data_source_id: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    #: The status the page shows (null: empty or not one of ours).
    status: Mapped[TaskStatus | None] = mapped_column(status_type())
    #: Length of ``tasks.error_log`` when the page's error and YouTube URL last matched the task
    #: (null: they do not, push them).
    error_len: Mapped[int | None] = mapped_column(sa.Integer)
    youtube_url: Mapped[str | None] = mapped_column(sa.String(255))
    #: The hold the page shows (``tasks.hold_since`` when pushed; null: none).
    hold_since: Mapped[datetime | None] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, nullable=False, server_default=utc_now(), onupdate=utc_now())


class Quota(Base):
    """A rate limit: at most ``max_starts`` starts of ``stage`` (or of every stage: ``*``) in
    any rolling ``window_s`` seconds, per channel or shared by all (``app.db.ddl.claim_task``
    enforces it in the claim)."""

    __tablename__ = "quotas"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    stage: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    per_channel: Mapped[bool] = mapped_column(
        sa.Boolean(create_constraint=True, name="per_channel"), nullable=False)
    max_starts: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    window_s: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        Timestamp, nullable=False, server_default=utc_now())

    __table_args__ = (
        sa.UniqueConstraint("stage", "per_channel"),
        sa.CheckConstraint("max_starts >= 1", name="max_starts_positive"),
        sa.CheckConstraint("window_s >= 1", name="window_positive"),
    )


class QuotaUsage(Base):
    """One bucket of a quota (a channel's, or the shared one: ``claim_task.SHARED``): the starts
    of its window that can still matter (``starts``, oldest first; past the first
    ``claim_task.EXACT_STARTS``, each the newest of ``counts`` starts of one slice of the window:
    ``claim_task.render_merge``), a pause a provider asked for (``RateLimited``), and when the
    bucket frees if it is spent or paused now (``blocked_until``, written with every start: what
    claims and ``stats`` read)."""

    __tablename__ = "quota_usage"

    channel_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    quota_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("quotas.id", ondelete="CASCADE"), primary_key=True)
    #: The quota's stage (a quota's stage never changes), so blocks are read without a join.
    stage: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    starts: Mapped[list[datetime]] = mapped_column(
        TimestampArray, nullable=False, server_default="{}", default=list)
    #: How many starts each entry of ``starts`` stands for; empty: one each.
    counts: Mapped[list[int]] = mapped_column(
        IntegerArray, nullable=False, server_default="{}", default=list)
    paused_until: Mapped[datetime | None] = mapped_column(Timestamp)
    blocked_until: Mapped[datetime | None] = mapped_column(Timestamp, index=True)
