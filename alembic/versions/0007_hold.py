"""An operator's hold is a fact on the task row: a task on hold is never claimed; and a pick-up
reserves the task it will claim.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

- ``tasks.hold_since``, ``hold_by``, ``hold_reason``: set by ``pipeline hold``, cleared by
  ``pipeline release``; the status is untouched (the 26 states stay as they are).
- Both claim indexes leave held rows out (``ix_tasks_queued``, ``ix_tasks_runnable``), and
  every probe of ``pick_channel`` and ``claim_task`` carries the same condition; otherwise
  the claim is revision 0006's (``app.db.ddl.claim_task``, frozen below as data).
- ``notion_pages.hold_since``: the hold a page shows (pushed with ``NOTION_PROP_HOLD``).
- ``channels.reserved``, ``reserved_at``: the task each pick-up in flight will claim. A claim
  that ran late used to find its task taken by a later pick-up of its channel and give its
  turn back, so the channel's pick-up landed after another channel's next one; now each
  pick-up claims the task it reserved (``app.db.ddl.claim_task``).
- A downgrade releases every hold (the old claim cannot see one).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from app.db.ddl import claim_task_0006
from app.db.ddl import claim_task_0007 as claim_task

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Runnable state (other than queued) → the active state a claim moves it into.
STARTS = {
    "assets_approved": "generating_composites",
    "composites_ready": "generating_video",
    "video_approved": "generating_audio",
    "audio_approved": "generating_sfx",
    "sfx_ready": "assembling",
    "approved": "uploading",
}
ACTIVE = ("claimed", "generating_assets", "generating_composites", "generating_video",
          "generating_audio", "generating_sfx", "assembling", "uploading")
ERRORS = ("asset_error", "video_error", "audio_error", "upload_error")
#: ``(status, failed stage or None, start) → target`` of a claim.
TARGETS = {
    ('queued', None, True): 'generating_assets',
    ('queued', None, False): 'claimed',
    ('assets_approved', None, True): 'generating_composites',
    ('assets_approved', None, False): 'generating_composites',
    ('composites_ready', None, True): 'generating_video',
    ('composites_ready', None, False): 'generating_video',
    ('video_approved', None, True): 'generating_audio',
    ('video_approved', None, False): 'generating_audio',
    ('audio_approved', None, True): 'generating_sfx',
    ('audio_approved', None, False): 'generating_sfx',
    ('sfx_ready', None, True): 'assembling',
    ('sfx_ready', None, False): 'assembling',
    ('approved', None, True): 'uploading',
    ('approved', None, False): 'uploading',
    ('asset_error', None, True): 'generating_assets',
    ('asset_error', None, False): 'generating_assets',
    ('asset_error', 'assets', True): 'generating_assets',
    ('asset_error', 'assets', False): 'generating_assets',
    ('asset_error', 'composites', True): 'generating_composites',
    ('asset_error', 'composites', False): 'generating_composites',
    ('video_error', None, True): 'generating_video',
    ('video_error', None, False): 'generating_video',
    ('video_error', 'video', True): 'generating_video',
    ('video_error', 'video', False): 'generating_video',
    ('video_error', 'assembly', True): 'assembling',
    ('video_error', 'assembly', False): 'assembling',
    ('audio_error', None, True): 'generating_audio',
    ('audio_error', None, False): 'generating_audio',
    ('audio_error', 'audio', True): 'generating_audio',
    ('audio_error', 'audio', False): 'generating_audio',
    ('audio_error', 'sfx', True): 'generating_sfx',
    ('audio_error', 'sfx', False): 'generating_sfx',
    ('upload_error', None, True): 'uploading',
    ('upload_error', None, False): 'uploading',
    ('upload_error', 'upload', True): 'uploading',
    ('upload_error', 'upload', False): 'uploading',
    ('claimed', None, True): 'generating_assets',
    ('claimed', None, False): 'claimed',
    ('generating_assets', None, True): 'generating_assets',
    ('generating_assets', None, False): 'generating_assets',
    ('generating_composites', None, True): 'generating_composites',
    ('generating_composites', None, False): 'generating_composites',
    ('generating_video', None, True): 'generating_video',
    ('generating_video', None, False): 'generating_video',
    ('generating_audio', None, True): 'generating_audio',
    ('generating_audio', None, False): 'generating_audio',
    ('generating_sfx', None, True): 'generating_sfx',
    ('generating_sfx', None, False): 'generating_sfx',
    ('assembling', None, True): 'assembling',
    ('assembling', None, False): 'assembling',
    ('uploading', None, True): 'uploading',
    ('uploading', None, False): 'uploading',
}
QUEUED_COLUMNS = ["channel_id", "priority", "created_at", "id"]
UUIDS = postgresql.ARRAY(sa.Uuid()).with_variant(sa.JSON(), "sqlite")
TIMES = postgresql.ARRAY(sa.DateTime(timezone=True)).with_variant(sa.JSON(), "sqlite")


def _indexes(queued: str, runnable: str) -> None:
    op.drop_index("ix_tasks_queued", table_name="tasks")
    op.drop_index(claim_task.RUNNABLE_INDEX, table_name="tasks")
    op.create_index("ix_tasks_queued", "tasks", QUEUED_COLUMNS,
                    postgresql_where=sa.text(queued), sqlite_where=sa.text(queued))
    op.create_index(claim_task.RUNNABLE_INDEX, "tasks", list(claim_task.RUNNABLE_COLUMNS),
                    postgresql_where=sa.text(runnable), sqlite_where=sa.text(runnable))


def upgrade() -> None:
    is_pg = op.get_bind().dialect.name == "postgresql"
    if is_pg:
        for statement in claim_task_0006.drop():
            op.execute(statement)
    op.add_column("tasks", sa.Column("hold_since", sa.DateTime(timezone=True), nullable=True))
    op.add_column("tasks", sa.Column("hold_by", sa.String(100), nullable=True))
    op.add_column("tasks", sa.Column("hold_reason", sa.Text(), nullable=True))
    op.add_column("notion_pages", sa.Column("hold_since", sa.DateTime(timezone=True),
                                            nullable=True))
    op.add_column("channels", sa.Column("reserved", UUIDS, server_default="{}",
                                        nullable=False))
    op.add_column("channels", sa.Column("reserved_at", TIMES, server_default="{}",
                                        nullable=False))
    op.add_column("channels", sa.Column("reserved_until", sa.DateTime(timezone=True),
                                        nullable=True))
    _indexes(claim_task.QUEUED_PREDICATE, claim_task.runnable_predicate(STARTS, ERRORS, ACTIVE))
    if is_pg:
        op.execute(claim_task.render_pick(starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task.render(TARGETS, starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task.render_next())


def downgrade() -> None:
    is_pg = op.get_bind().dialect.name == "postgresql"
    if is_pg:
        for statement in claim_task.drop():
            op.execute(statement)
    _indexes("status = 'queued'", claim_task_0006.runnable_predicate(STARTS, ERRORS, ACTIVE))
    op.drop_column("channels", "reserved_until")
    op.drop_column("channels", "reserved_at")
    op.drop_column("channels", "reserved")
    op.drop_column("notion_pages", "hold_since")
    op.drop_column("tasks", "hold_reason")
    op.drop_column("tasks", "hold_by")
    op.drop_column("tasks", "hold_since")
    if is_pg:
        op.execute(claim_task_0006.render_pick(starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task_0006.render(TARGETS, starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task_0006.render_next())
