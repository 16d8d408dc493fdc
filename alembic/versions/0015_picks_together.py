"""Several pick-ups decided in one call: ``pick_channels``.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

A worker's pick-up asks for as many pick-ups as its claim loops want at once, and ``pick_up``
decided them with one ``pick_channel`` call each: a ranking (a probe of every channel) and a
write of the channel's row per pick-up, all under the turnstile. ``pick_channels`` makes the
same decisions in one call: in the common form (no cap, no quota spent or paused, only queued
work) it reads each channel's first tasks once, decides the pick-ups on them in memory as the
ranking would one after the other, and writes each channel picked once; otherwise, or where
another transaction holds a picked channel's row, it calls ``pick_channel`` once per pick-up.
``pick_up`` calls it where more than one pick-up is wanted. What is written is unchanged: the
same picks, counts, turns and reservations.

Revision 0013's ``pick_up`` is frozen as ``pick_up_0013``; a downgrade re-installs it and drops
``pick_channels``. This revision's is frozen as ``pick_up_0015``.
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import claim_task, pick_up_0013, pick_up_0015

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The states a claim starts a stage from (other than ``queued``), with the stage's active state.
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

PICK_MANY_DROP = f"DROP FUNCTION IF EXISTS {claim_task.PICK_MANY}(timestamptz, integer, uuid[])"


def _pick_up(pick_up: str) -> None:
    """Re-create ``pick_up`` (its signature is unchanged)."""
    assert pick_up.startswith("CREATE PROCEDURE")
    op.execute(pick_up.replace("CREATE PROCEDURE", "CREATE OR REPLACE PROCEDURE", 1))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(claim_task.render_pick_many(starts=STARTS, active=ACTIVE, errors=ERRORS))
    _pick_up(pick_up_0015.render_pick_up())


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _pick_up(pick_up_0013.render_pick_up())
    op.execute(PICK_MANY_DROP)
