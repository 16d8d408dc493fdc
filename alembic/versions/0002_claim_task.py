"""The claim function: fair, capacity-safe claims in one round trip (PostgreSQL only).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

The lifecycle data below is frozen: ``tests/test_migrations.py`` compares it with
``app.lifecycle`` so an edited table gets a new revision. SQLite has no claim function (workers
need PostgreSQL's row locks).
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import claim_task_0002 as claim_sql

revision: str = "0002"
down_revision: str | None = "0001"
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


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(claim_sql.render(STARTS, ACTIVE, ERRORS))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(claim_sql.drop())
