"""A lone pick that one quota counts: its start recorded in the statement that claims it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06

Where a pick-up makes one pick (a lone claimer's every pick-up) and one quota counts its stage,
``claim_reserved`` no longer locks the bucket in a statement of its own before recording. The
task is locked, then the bucket by the ``UPDATE`` that records the start: its room is read on
the version that ``UPDATE`` locks (a bucket written meanwhile is read again, newest version),
so no window lets in more starts than before, and the record and the claim are one statement.
A bucket not yet made is made first, as before. Several picks, or several buckets, go as in
revision 0016 (their buckets locked in one order first, so that no two calls wait for each
other), whose ``claim_reserved`` is frozen as ``reserved_0016``.
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import reserved_0016, reserved_0017

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Where a claim moves a task (frozen): ``(status, failed stage or None, start) → target``.
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


def _reserved(statement: str) -> None:
    """Re-create ``claim_reserved`` (its signature is unchanged)."""
    assert statement.startswith("CREATE FUNCTION")
    op.execute(statement.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _reserved(reserved_0017.render_reserved(TARGETS))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _reserved(reserved_0016.render_reserved(TARGETS))
