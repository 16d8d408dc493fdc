"""Stage boundaries and reserved claims written a set at a time.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05

``stage_boundaries`` called ``stage_boundary`` once per task: a locking read, an ``UPDATE``
and two ``INSERT``s of events each, every one set up and run on its own, about 200 µs of the
server's time per task. It now carries on every task whose next stage needs no lock (its
channel active and under its cap, the task not on hold, no quota on that stage) in one
``UPDATE``, records in another the success of every task that rests with no automatic move,
and writes their events in one ``INSERT``; any other task gets its own ``stage_boundary`` call
as before, which decides what it always did. Each row is still guarded by its status and
fenced by its claim token, and the database guard sees the same moves. The function plans
without sequential scans, hash or merge joins, so that a first plan made on an empty table
still joins ``tasks`` by its primary key once it fills.

``task_stage`` compared the enum's text, which is only stable, though it was declared
immutable: the planner never inlined it, and every statement calling it ran it as a query of
its own, parsed and planned at each execution (a fifth of a boundary's fixed cost). It now
compares the enum itself.

``pick_up`` claims the reserved tasks that need no lock but their own (still queued, not on
hold, in an active channel without a cap, no quota anywhere) together, with ``claim_reserved``:
one ``UPDATE`` and one ``INSERT`` of their events where each took a call of ``claim_task``;
the others go to ``claim_task`` one by one as before.

Revision 0011's boundary is frozen as ``boundary_0011``; a downgrade re-installs its
``stage_boundaries`` and ``pick_up``, drops ``claim_reserved`` and puts ``task_stage`` back.
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import (
    batch_0012,
    boundary,
    boundary_0011,
    claim_task,
    claim_task_0010,
    pick_up_0012,
)

revision: str = "0012"
down_revision: str | None = "0011"
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


#: The stage of each state a claim moves into.
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



def _replace(statement: str) -> None:
    """Drop ``stage_boundaries`` (its signature is unchanged) and create it anew."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for drop in [s for s in boundary.drop() if f" {boundary.BOUNDARIES}(" in s]:
        op.execute(drop)
    op.execute(statement)


def _task_stage(statement: str) -> None:
    """Re-create ``task_stage`` in place (its signature is unchanged)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(statement.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))


def _pick_up(statements: list[str]) -> None:
    """Drop ``pick_up`` (its signature is unchanged) and ``claim_reserved``; run
    ``statements``."""
    if op.get_bind().dialect.name != "postgresql":
        return
    names = (boundary.PICK_UP, claim_task.RESERVED)
    for drop in [s for s in boundary.drop() + claim_task.drop()
                 if any(f" {name}(" in s for name in names)]:
        op.execute(drop)
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    _task_stage(claim_task.render_task_stage(TARGETS, STAGE_OF))
    _replace(batch_0012.render_batch(FINISH, STEPS, CLAIM_WRITES, starts=STARTS, active=ACTIVE,
                                     next_stage=NEXT_STAGE))
    _pick_up([pick_up_0012.render_reserved(TARGETS), pick_up_0012.render_pick_up()])


def downgrade() -> None:
    _pick_up([boundary_0011.render_pick_up()])
    _task_stage(claim_task_0010.render_quotas(TARGETS, STAGE_OF)[0])
    _replace(boundary_0011.render_batch(NEXT_STAGE))
