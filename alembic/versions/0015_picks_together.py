"""Several pick-ups decided in one call (``pick_channels``), and reserved claims sharing a
quota bucket recorded in one statement.

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
``pick_up`` calls it where four or more pick-ups are wanted. What is written is unchanged: the
same picks, counts, turns and reservations.

``claim_reserved``, where picks share a quota bucket (picks of one channel, or a shared quota),
recorded their starts with one ``UPDATE`` per pick, in order. It now counts in one statement
which picks fit, from each bucket's room read once, and records and claims them together: the
same picks and the same buckets.

Revision 0013's ``pick_up`` is frozen as ``pick_up_0013`` and revision 0014's
``claim_reserved`` as ``reserved_0014``; a downgrade re-installs them and drops
``pick_channels``.
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import boundary, claim_task, pick_up_0013, reserved_0014

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
#: Where a claim of each runnable state goes (``app.moves.claim_target``).
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

PICK_MANY_DROP = f"DROP FUNCTION IF EXISTS {claim_task.PICK_MANY}(timestamptz, integer, uuid[])"


def _pick_up(pick_up: str) -> None:
    """Re-create ``pick_up`` (its signature is unchanged)."""
    assert pick_up.startswith("CREATE PROCEDURE")
    op.execute(pick_up.replace("CREATE PROCEDURE", "CREATE OR REPLACE PROCEDURE", 1))


def _reserved(reserved: str) -> None:
    """Re-create ``claim_reserved`` (its signature is unchanged)."""
    assert reserved.startswith("CREATE FUNCTION")
    op.execute(reserved.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(claim_task.render_pick_many(starts=STARTS, active=ACTIVE, errors=ERRORS))
    _pick_up(boundary.render_pick_up())
    _reserved(claim_task.render_reserved(TARGETS))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _reserved(reserved_0014.render_reserved(TARGETS))
    _pick_up(pick_up_0013.render_pick_up())
    op.execute(PICK_MANY_DROP)
