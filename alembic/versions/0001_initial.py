"""Initial schema: channels, tasks, task_events, enum types, guard and timestamp triggers.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

The transition pairs are frozen here: the guard this revision installs must not change when
``app.lifecycle`` is edited later (that takes a new revision; a test compares the two).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from app.db.ddl import guard

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = (
    "draft", "queued", "claimed", "generating_assets", "assets_ready", "assets_approved",
    "generating_composites", "composites_ready", "generating_video", "video_ready",
    "video_approved", "generating_audio", "audio_ready", "audio_approved", "generating_sfx",
    "sfx_ready", "assembling", "assembly_ready", "final_review", "approved", "uploading",
    "published", "asset_error", "video_error", "audio_error", "upload_error",
)
PRIORITIES = ("high", "normal", "low")

PAIRS = (
    ("draft", "queued"),
    ("queued", "draft"),
    ("queued", "claimed"),
    ("claimed", "queued"),
    ("claimed", "generating_assets"),
    ("generating_assets", "assets_ready"),
    ("generating_assets", "asset_error"),
    ("assets_ready", "assets_approved"),
    ("assets_approved", "generating_composites"),
    ("generating_composites", "composites_ready"),
    ("generating_composites", "asset_error"),
    ("composites_ready", "generating_video"),
    ("generating_video", "video_ready"),
    ("generating_video", "video_error"),
    ("video_ready", "video_approved"),
    ("video_approved", "generating_audio"),
    ("generating_audio", "audio_ready"),
    ("generating_audio", "audio_error"),
    ("audio_ready", "audio_approved"),
    ("audio_approved", "generating_sfx"),
    ("generating_sfx", "sfx_ready"),
    ("generating_sfx", "audio_error"),
    ("sfx_ready", "assembling"),
    ("assembling", "assembly_ready"),
    ("assembling", "video_error"),
    ("assembly_ready", "final_review"),
    ("final_review", "approved"),
    ("approved", "uploading"),
    ("uploading", "published"),
    ("uploading", "upload_error"),
    ("asset_error", "generating_assets"),
    ("asset_error", "generating_composites"),
    ("video_error", "generating_video"),
    ("video_error", "assembling"),
    ("audio_error", "generating_audio"),
    ("audio_error", "generating_sfx"),
    ("upload_error", "uploading"),
)

#: Queue-friendly storage for the churned tasks table (every transition rewrites its row and
#: every index entry: status is in the claim index predicate, so no update is HOT).
TASKS_STORAGE = (
    "fillfactor = 85, autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 2000, "
    "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 1, "
    "autovacuum_vacuum_cost_limit = 2000"
)


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    """Native enum on PostgreSQL (created once in upgrade()), VARCHAR + CHECK on SQLite."""
    if op.get_bind().dialect.name == "postgresql":
        return postgresql.ENUM(*values, name=name, create_type=False)
    return sa.Enum(*values, name=name, create_constraint=True)


def _uuid_default() -> sa.TextClause:
    if op.get_bind().dialect.name == "postgresql":
        return sa.text("gen_random_uuid()")
    return sa.text("(lower(hex(randomblob(16))))")


def _now() -> sa.TextClause:
    """Server clock; milliseconds on SQLite, whose CURRENT_TIMESTAMP has whole seconds."""
    if op.get_bind().dialect.name == "postgresql":
        return sa.text("now()")
    return sa.text("(strftime('%Y-%m-%d %H:%M:%f', 'now'))")


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
    ]


def upgrade() -> None:
    is_pg = op.get_bind().dialect.name == "postgresql"
    if is_pg:
        # Created explicitly (and only here) so the tables below reuse them.
        postgresql.ENUM(*STATUSES, name="taskstatus").create(op.get_bind())
        postgresql.ENUM(*PRIORITIES, name="prioritylevel").create(op.get_bind())
    status, priority = _enum(STATUSES, "taskstatus"), _enum(PRIORITIES, "prioritylevel")

    op.create_table(
        "channels",
        sa.Column("id", sa.Uuid(), server_default=_uuid_default(), nullable=False),
        sa.Column("channel_id", sa.String(64), nullable=False),
        sa.Column("channel_name", sa.String(255), nullable=False),
        sa.Column("is_active", sa.Boolean(create_constraint=True, name="is_active"),
                  server_default=sa.true(), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("last_claimed_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        sa.CheckConstraint("max_concurrent IS NULL OR max_concurrent >= 1",
                           name=op.f("ck_channels_max_concurrent_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint("channel_id", name=op.f("uq_channels_channel_id")),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), server_default=_uuid_default(), nullable=False),
        sa.Column("channel_id", sa.Uuid(), nullable=False),
        sa.Column("notion_page_id", sa.String(32), nullable=False),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("topic", sa.String(500), nullable=True),
        sa.Column("story_direction", sa.Text(), nullable=True),
        sa.Column("status", status, server_default="draft", nullable=False),
        sa.Column("priority", priority, server_default="normal", nullable=False),
        sa.Column("error_log", sa.Text(), nullable=True),
        sa.Column("youtube_url", sa.String(255), nullable=True),
        sa.Column("claimed_by", sa.String(100), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_token", sa.Uuid(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("artifacts", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                  server_default=sa.text("'{}'"), nullable=False),
        *_timestamps(),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_tasks_attempts_non_negative")),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"], ondelete="RESTRICT",
                                name=op.f("fk_tasks_channel_id_channels")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("notion_page_id", name=op.f("uq_tasks_notion_page_id")),
    )
    op.create_index("ix_tasks_status", "tasks", ["status"])
    op.create_index("ix_tasks_channel_id", "tasks", ["channel_id"])
    op.create_index("ix_tasks_created_at", "tasks", ["created_at"])
    op.create_index("ix_tasks_channel_id_status", "tasks", ["channel_id", "status"])
    op.create_index("ix_tasks_queued", "tasks", ["channel_id", "priority", "created_at", "id"],
                    postgresql_where=sa.text("status = 'queued'"),
                    sqlite_where=sa.text("status = 'queued'"))

    op.create_table(
        "task_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(),
                  nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("from_status", _enum(STATUSES, "taskstatus"), nullable=True),
        sa.Column("to_status", _enum(STATUSES, "taskstatus"), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], ondelete="CASCADE",
                                name=op.f("fk_task_events_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_events")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_task_events_task_id", "task_events", ["task_id"])

    if is_pg:
        op.execute(f"ALTER TABLE tasks SET ({TASKS_STORAGE})")
        for statement in guard.postgres_install(PAIRS):
            op.execute(statement)
    else:
        for statement in guard.sqlite_install(PAIRS):
            op.execute(statement)


def downgrade() -> None:
    is_pg = op.get_bind().dialect.name == "postgresql"
    for statement in guard.postgres_uninstall() if is_pg else guard.sqlite_uninstall():
        op.execute(statement)
    op.drop_table("task_events")
    op.drop_table("tasks")
    op.drop_table("channels")
    if is_pg:
        postgresql.ENUM(name="prioritylevel").drop(op.get_bind())
        postgresql.ENUM(name="taskstatus").drop(op.get_bind())
