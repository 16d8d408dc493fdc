"""Quotas: rate limits on stage starts, enforced in the claim.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

- ``quotas``: a stage (or ``*``, every stage), per channel or shared, at most ``max_starts``
  starts in any rolling ``window_s`` seconds.
- ``quota_usage``: each quota's buckets (per channel, or the shared one): its newest starts
  (at most the limit), a pause a provider asked for, and when it frees if it is spent.
- The claim passes over work whose quota is spent and counts each start under the buckets'
  locks (``app.db.ddl.claim_task``); a stage handed back with a time (``retry_at``) waits for
  it. Revision 0007's claim is frozen as ``claim_task_0007``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from app.db.ddl import claim_task_0007
from app.db.ddl import claim_task_0008 as claim_task

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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
FIRST = "assets"
#: The stage of each state a claim moves a task into.
STAGE_OF = {
    "claimed": "assets",
    "generating_assets": "assets",
    "generating_composites": "composites",
    "generating_video": "video",
    "generating_audio": "audio",
    "generating_sfx": "sfx",
    "assembling": "assembly",
    "uploading": "upload",
}
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
TIMES = postgresql.ARRAY(sa.DateTime(timezone=True)).with_variant(sa.JSON(), "sqlite")


def upgrade() -> None:
    is_pg = op.get_bind().dialect.name == "postgresql"
    if is_pg:
        for statement in claim_task_0007.drop():
            op.execute(statement)
    op.create_table(
        "quotas",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("per_channel", sa.Boolean(create_constraint=True, name="per_channel"),
                  nullable=False),
        sa.Column("max_starts", sa.Integer(), nullable=False),
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_quotas"),
        sa.UniqueConstraint("stage", "per_channel", name="uq_quotas_stage_per_channel"),
        sa.CheckConstraint("max_starts >= 1", name="ck_quotas_max_starts_positive"),
        sa.CheckConstraint("window_s >= 1", name="ck_quotas_window_positive"),
    )
    op.create_table(
        "quota_usage",
        sa.Column("channel_id", sa.Uuid(), nullable=False),
        sa.Column("quota_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("starts", TIMES, nullable=False, server_default="{}"),
        sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("channel_id", "quota_id", name="pk_quota_usage"),
        sa.ForeignKeyConstraint(["quota_id"], ["quotas.id"], ondelete="CASCADE",
                                name="fk_quota_usage_quota_id_quotas"),
    )
    op.create_index("ix_quota_usage_blocked_until", "quota_usage", ["blocked_until"])
    if is_pg:
        for statement in claim_task.render_quotas(TARGETS, STAGE_OF):
            op.execute(statement)
        op.execute(claim_task.render_pick(starts=STARTS, active=ACTIVE, errors=ERRORS,
                                          first=FIRST))
        op.execute(claim_task.render(TARGETS, starts=STARTS, active=ACTIVE, errors=ERRORS,
                                     first=FIRST))
        op.execute(claim_task.render_next())


def downgrade() -> None:
    is_pg = op.get_bind().dialect.name == "postgresql"
    if is_pg:
        for statement in claim_task.drop():
            op.execute(statement)
    op.drop_table("quota_usage")
    op.drop_table("quotas")
    if is_pg:
        op.execute(claim_task_0007.render_pick(starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task_0007.render(TARGETS, starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task_0007.render_next())
