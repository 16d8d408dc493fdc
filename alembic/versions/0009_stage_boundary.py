"""One statement per stage boundary, and a pick-up that returns the stage's input.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

- ``stage_boundary``: a stage's success, the automatic moves after it and the claim of the
  task's next stage, in one call (``app.db.ddl.boundary``), rendered from the rules frozen
  below (``app.moves.finish`` and ``app.moves.automatic_step``); ``stage_boundaries``: several
  of them in one statement and one commit, their locks taken in one order.
- The guard accepts a boundary that carries its task straight into its next stage
  (``active → done → … → next active`` in one write of the row) only as a carry writes it: a
  fresh claim token, a worker, a lease and a fresh attempt budget.
- ``pick_up`` replaces ``claim_next``: the same pick-up, returning the task's fields and stage
  outputs with the claim.
- ``ix_tasks_channel_id`` is dropped: ``ix_tasks_channel_id_status`` leads with the same column
  and serves every look-up by channel (the foreign key's checks included), one index fewer to
  write on every move.
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import boundary_0009 as boundary
from app.db.ddl import claim_task_0008 as claim_task
from app.db.ddl import guard

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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
ACTIVE = ("claimed", "generating_assets", "generating_composites", "generating_video",
          "generating_audio", "generating_sfx", "assembling", "uploading")
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
#: The guard's composite moves: a claim that starts its stage (revision 0005) and a boundary
#: that carries its task straight on (``lifecycle.CARRIES``).
CLAIM_STARTS = (("queued", "generating_assets"),)
CARRIES = (
    ("generating_assets", "generating_composites"),
    ("generating_composites", "generating_video"),
    ("generating_video", "generating_audio"),
    ("generating_audio", "generating_sfx"),
    ("generating_sfx", "assembling"),
    ("assembling", "uploading"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP PROCEDURE IF EXISTS claim_next(text, double precision, timestamptz,"
            " boolean, uuid, taskstatus, taskstatus, uuid, integer, integer)"
        )
        op.execute(guard.guard_function(CLAIM_STARTS, CARRIES))
        op.execute(boundary.render(FINISH, STEPS, CLAIM_WRITES, starts=STARTS, active=ACTIVE))
        op.execute(boundary.render_batch(NEXT_STAGE))
        op.execute(boundary.render_pick_up())
    op.drop_index("ix_tasks_channel_id", table_name="tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_channel_id", "tasks", ["channel_id"])
    if op.get_bind().dialect.name == "postgresql":
        for statement in boundary.drop():
            op.execute(statement)
        op.execute(claim_task.render_next())
        op.execute(guard.guard_function(CLAIM_STARTS))
