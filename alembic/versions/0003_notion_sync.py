"""Notion sync bookkeeping: the pull watermark and what each linked page shows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

The status values are frozen here (a later edit of ``app.lifecycle`` takes a new revision); on
PostgreSQL the column reuses the ``taskstatus`` type created by 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = (
    "draft", "queued", "claimed", "generating_assets", "assets_ready", "assets_approved",
    "generating_composites", "composites_ready", "generating_video", "video_ready",
    "video_approved", "generating_audio", "audio_ready", "audio_approved", "generating_sfx",
    "sfx_ready", "assembling", "assembly_ready", "final_review", "approved", "uploading",
    "published", "asset_error", "video_error", "audio_error", "upload_error",
)


def _status() -> sa.Enum:
    if op.get_bind().dialect.name == "postgresql":
        return postgresql.ENUM(*STATUSES, name="taskstatus", create_type=False)
    return sa.Enum(*STATUSES, name="taskstatus", create_constraint=True)


def _now() -> sa.TextClause:
    if op.get_bind().dialect.name == "postgresql":
        return sa.text("now()")
    return sa.text("(strftime('%Y-%m-%d %H:%M:%f', 'now'))")


def upgrade() -> None:
    op.create_table(
        "notion_sync_state",
        sa.Column("data_source_id", sa.String(32), nullable=False),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
        sa.PrimaryKeyConstraint("data_source_id", name=op.f("pk_notion_sync_state")),
    )
    op.create_table(
        "notion_pages",
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("data_source_id", sa.String(32), nullable=False),
        sa.Column("status", _status(), nullable=True),
        sa.Column("error_len", sa.Integer(), nullable=True),
        sa.Column("youtube_url", sa.String(255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], ondelete="CASCADE",
                                name=op.f("fk_notion_pages_task_id_tasks")),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_notion_pages")),
    )


def downgrade() -> None:
    op.drop_table("notion_pages")
    op.drop_table("notion_sync_state")
