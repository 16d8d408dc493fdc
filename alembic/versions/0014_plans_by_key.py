"""Stage boundaries and reserved claims read each task by its primary key, whatever the
statistics.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05

A worker's connection plans the statements inside ``stage_boundaries`` and ``claim_reserved``
once and keeps the plans for its life; a worker started before the queue fills plans them
believing ``tasks`` tiny, and a new database has no statistics until autovacuum's first
``ANALYZE``. Those plans could find each task through another index than the primary key:

- ``claim_reserved`` read the whole of ``ix_tasks_queued`` (every queued task of every channel)
  for each pick-up, and matched the reserved tasks against it: 2.1 ms a pick-up with 3,000
  tasks queued, half the server's time in a run of the throughput benchmark;
- ``stage_boundaries`` found each task through ``ix_tasks_status``, reading every task (and
  every dead version) in the same status.

Both now look each task up by its id alone, comparing its status (and hold, and claim token)
with ``IS NOT DISTINCT FROM``: the same test for these values, but one no index can serve. The
reserved tasks are locked in a lateral subquery (``FOR UPDATE SKIP LOCKED``; ``OFFSET 0`` keeps
the channel's conditions out of it, checked on the row locked). No other index can serve the
look-up, so every plan, on any statistics, probes the primary key. What the functions decide
and write is unchanged.

Revision 0012's ``stage_boundaries`` is frozen as ``batch_0012`` and revision 0013's
``claim_reserved`` as ``reserved_0013``; a downgrade re-installs them.
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import batch_0012, boundary, reserved_0013, reserved_0014

revision: str = "0014"
down_revision: str | None = "0013"
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
#: What a stage's success writes (``boundary.finish_rule``): active state → column → SQL.
FINISH = {
    "generating_assets": {
        "status": "'assets_ready'",
        "updated_at": "p_now",
        "claimed_by": "NULL",
        "claimed_at": "NULL",
        "claim_token": "NULL",
        "lease_expires_at": "NULL",
        "attempts": "0",
        "stage_runs": "0",
        "failed_stage": "NULL",
        "retry_at": "NULL",
        "artifacts": "t.artifacts || jsonb_build_object('assets', p_output)",
    },
    "generating_composites": {
        "status": "'composites_ready'",
        "updated_at": "p_now",
        "claimed_by": "NULL",
        "claimed_at": "NULL",
        "claim_token": "NULL",
        "lease_expires_at": "NULL",
        "attempts": "0",
        "stage_runs": "0",
        "failed_stage": "NULL",
        "retry_at": "NULL",
        "artifacts": "t.artifacts || jsonb_build_object('composites', p_output)",
    },
    "generating_video": {
        "status": "'video_ready'",
        "updated_at": "p_now",
        "claimed_by": "NULL",
        "claimed_at": "NULL",
        "claim_token": "NULL",
        "lease_expires_at": "NULL",
        "attempts": "0",
        "stage_runs": "0",
        "failed_stage": "NULL",
        "retry_at": "NULL",
        "artifacts": "t.artifacts || jsonb_build_object('video', p_output)",
    },
    "generating_audio": {
        "status": "'audio_ready'",
        "updated_at": "p_now",
        "claimed_by": "NULL",
        "claimed_at": "NULL",
        "claim_token": "NULL",
        "lease_expires_at": "NULL",
        "attempts": "0",
        "stage_runs": "0",
        "failed_stage": "NULL",
        "retry_at": "NULL",
        "artifacts": "t.artifacts || jsonb_build_object('audio', p_output)",
    },
    "generating_sfx": {
        "status": "'sfx_ready'",
        "updated_at": "p_now",
        "claimed_by": "NULL",
        "claimed_at": "NULL",
        "claim_token": "NULL",
        "lease_expires_at": "NULL",
        "attempts": "0",
        "stage_runs": "0",
        "failed_stage": "NULL",
        "retry_at": "NULL",
        "artifacts": "t.artifacts || jsonb_build_object('sfx', p_output)",
    },
    "assembling": {
        "status": "'assembly_ready'",
        "updated_at": "p_now",
        "claimed_by": "NULL",
        "claimed_at": "NULL",
        "claim_token": "NULL",
        "lease_expires_at": "NULL",
        "attempts": "0",
        "stage_runs": "0",
        "failed_stage": "NULL",
        "retry_at": "NULL",
        "artifacts": "t.artifacts || jsonb_build_object('assembly', p_output)",
    },
    "uploading": {
        "status": "'published'",
        "updated_at": "p_now",
        "claimed_by": "NULL",
        "claimed_at": "NULL",
        "claim_token": "NULL",
        "lease_expires_at": "NULL",
        "published_at": "p_now",
        "attempts": "0",
        "stage_runs": "0",
        "failed_stage": "NULL",
        "retry_at": "NULL",
        "artifacts": "t.artifacts || jsonb_build_object('upload', p_output)",
        "youtube_url": "coalesce(p_url, t.youtube_url)",
    },
}
#: The automatic moves (``boundary.steps_rule``): status → (target, gate or None, note).
STEPS = {
    "assets_ready": ("assets_approved", "assets", "assets auto-approved"),
    "video_ready": ("video_approved", "video", "video auto-approved"),
    "audio_ready": ("audio_approved", "audio", "audio auto-approved"),
    "assembly_ready": ("final_review", None, None),
    "final_review": ("approved", "final", "final auto-approved"),
}
#: Active state → the stage after it (``boundary.next_stages``).
NEXT_STAGE = {
    "generating_assets": "composites",
    "generating_composites": "video",
    "generating_video": "audio",
    "generating_audio": "sfx",
    "generating_sfx": "assembly",
    "assembling": "upload",
}
#: What a claim writes on its task, over the success's write when a boundary carries it on
#: (``boundary.CLAIM_WRITES``).
CLAIM_WRITES = {
    "status": "target",
    "claimed_by": "p_worker",
    "claimed_at": "stamp",
    "claim_token": "gen_random_uuid()",
    "lease_expires_at": "p_now + make_interval(secs => p_lease_s)",
    "retry_at": "NULL",
    "failed_stage": "NULL",
    "attempts": "1",
    "stage_runs": "1",
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


def _replace(statements: list[str]) -> None:
    """Re-create the functions of ``statements`` in place (their signatures are unchanged)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in statements:
        assert statement.startswith("CREATE FUNCTION")
        op.execute(statement.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))


def upgrade() -> None:
    _replace([boundary.render_batch(FINISH, STEPS, CLAIM_WRITES, starts=STARTS, active=ACTIVE,
                                    next_stage=NEXT_STAGE),
              reserved_0014.render_reserved(TARGETS)])


def downgrade() -> None:
    _replace([batch_0012.render_batch(FINISH, STEPS, CLAIM_WRITES, starts=STARTS, active=ACTIVE,
                                      next_stage=NEXT_STAGE),
              reserved_0013.render_reserved(TARGETS)])
