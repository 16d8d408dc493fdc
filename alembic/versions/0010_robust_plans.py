"""Claim and boundary plans that hold on any statistics.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05

A connection plans each statement inside ``pick_channel``, ``claim_task`` and the stage
boundary once and keeps the plan. Planned while ``tasks`` was empty (a new database, before
its first ``ANALYZE``), three of them read far more than they need, for as long as the
connection lived:

- the ranking's probe of runnable tasks other than queued ones went through
  ``ix_tasks_channel_id_status`` and read every task of each channel, its published history
  included (14,000 buffers per pick-up with 20,000 finished tasks, against 50);
- the count of a capped channel's active tasks probed the channel alone and filtered the
  states, again over its whole history;
- the batch boundary's look-up of its tasks' channels scanned ``tasks`` whole.

Here each probe of ``ix_tasks_runnable`` states the index's predicate beside its own conditions
(``claim_task.runnable_predicate``), a channel's active tasks are counted one state at a time on
both columns of ``ix_tasks_channel_id_status`` (``claim_task.active_count``), and the batch looks
up each task by its key.

The functions also turn the JIT off for themselves (``claim_task.SETTINGS``). A kept plan whose
estimated cost passes ``jit_above_cost`` is compiled again at every execution: with 40,000 queued
tasks the ranking's did, 20 ms per pick-up against 1 ms. Workers' own connections start with
``jit = off``; connections through PgBouncer cannot pass it, so they paid that on every claim.

A carry no longer locks its channel's row: it keeps the capacity slot its task holds, so it
cannot take the channel past its cap, and it counts the channel's active tasks only so that a
lowered cap stops carries. Carries of one capped channel used to wait for each other (60 ms
waits seen with three slots), and a batch no longer locks channel rows first. Revision 0008's
claim and 0009's boundary are frozen as ``claim_task_0008`` and ``boundary_0009``.
"""

from collections.abc import Sequence
from types import ModuleType

from alembic import op
from app.db.ddl import boundary_0009, boundary_0011, claim_task, claim_task_0008, claim_task_0010

revision: str = "0010"
down_revision: str | None = "0009"
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
FIRST = "assets"
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
#: The states a claim starts a stage from (other than ``queued``), with the stage's active state.
STARTS = {
    "assets_approved": "generating_composites",
    "composites_ready": "generating_video",
    "video_approved": "generating_audio",
    "audio_approved": "generating_sfx",
    "sfx_ready": "assembling",
    "approved": "uploading",
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


def _functions(claim: ModuleType, stage: ModuleType) -> list[str]:
    """``pick_channel`` and ``claim_task`` as ``claim`` renders them, ``stage_boundary`` and
    ``stage_boundaries`` as ``stage`` does."""
    return [claim.render_pick(starts=STARTS, active=ACTIVE, errors=ERRORS, first=FIRST),
            claim.render(TARGETS, starts=STARTS, active=ACTIVE, errors=ERRORS, first=FIRST),
            stage.render(FINISH, STEPS, CLAIM_WRITES, starts=STARTS, active=ACTIVE),
            stage.render_batch(NEXT_STAGE)]


def _replace(statements: list[str]) -> None:
    """Drop the four functions (their signatures are unchanged) and create them anew."""
    if op.get_bind().dialect.name != "postgresql":
        return
    names = (boundary_0011.BOUNDARY, boundary_0011.BOUNDARIES, claim_task.PICK, claim_task.FUNCTION)
    for statement in [s for s in boundary_0011.drop() + claim_task.drop()
                      if any(f" {name}(" in s for name in names)]:
        op.execute(statement)
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    _replace(_functions(claim_task_0010, boundary_0011))


def downgrade() -> None:
    _replace(_functions(claim_task_0008, boundary_0009))
