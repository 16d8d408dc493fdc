"""Cheaper claims that can start the first stage: ``ix_tasks_runnable`` and ``claim_task`` with
``p_start`` (PostgreSQL; SQLite gets the index only).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

The channel ranking probed the other runnable states through ``ix_tasks_status`` and sorted them
for every channel on every claim; ``ix_tasks_runnable`` (those states only, a few rows) makes it
one ordered probe. ``p_start`` lets a worker claim a queued task and start its first stage in one
transaction. The lifecycle data below is frozen (``tests/test_migrations.py`` compares it with
``app.lifecycle``); downgrading restores revision 0002's function.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from app.db.ddl import claim_task_0002 as claim_sql_0002
from app.db.ddl import claim_task_0005 as claim_sql

revision: str = "0004"
down_revision: str | None = "0003"
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
FIRST_STAGE = "generating_assets"


def upgrade() -> None:
    predicate = sa.text(claim_sql.runnable_predicate(STARTS, ERRORS))
    op.create_index(claim_sql.RUNNABLE_INDEX, "tasks", list(claim_sql.RUNNABLE_COLUMNS),
                    postgresql_where=predicate, sqlite_where=predicate)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(claim_sql_0002.drop())
        op.execute(claim_sql.render(STARTS, ACTIVE, ERRORS, FIRST_STAGE, single_write=False))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(claim_sql.drop())
        op.execute(claim_sql_0002.render(STARTS, ACTIVE, ERRORS))
    op.drop_index(claim_sql.RUNNABLE_INDEX, table_name="tasks")
