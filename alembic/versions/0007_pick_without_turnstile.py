"""Pick-ups decide in parallel: each locks the channel it picks, not one lock for all.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

``pick_channel`` no longer takes the advisory lock every pick-up queued on. A pick reads the
channels with work in turn order, then locks the first whose pick-ups do not exceed the
fewest of the others at its priority, checked against the committed row in the locking
statement itself. Past a channel another pick holds it takes only a channel level with that
one, else it waits for that pick, so turns stay strict. A channel alone with work at
its priority takes no turn from anyone: its pick-ups are neither counted nor locked. A pick
that found nothing gives its count back only while it is still the channel's last
(``claim_task``). A composite type carries the candidates; tables are unchanged.
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import claim_task, claim_task_0006

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




def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in claim_task_0006.drop():
            op.execute(statement)
        op.execute(claim_task.CANDIDATE_TYPE)
        op.execute(claim_task.render_pick(starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task.render(TARGETS, starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task.render_next())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in claim_task.drop():
            op.execute(statement)
        op.execute(claim_task_0006.render_pick(starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task_0006.render(TARGETS, starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task_0006.render_next())
