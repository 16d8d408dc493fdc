"""The task row is the whole truth: the failed stage and the runs of a stage are columns,
stages can be handed back, and channels take strict turns from a sequence.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

- ``tasks.failed_stage`` (where a retry resumes) and ``tasks.stage_runs`` (runs of the current
  stage): written by the moves that make them true, so no decision reads ``task_events``.
  Existing errored tasks get their failed stage from their history, once, here.
- A stage handed back by a stopping worker keeps its active status with no holder and is taken
  over in place by the next claim: ``ix_tasks_runnable`` covers those rows too.
- ``channels.turn`` replaces ``last_claimed_at`` (a client clock) and ``channels.picks``
  counts pick-ups: ``pick_channel`` decides them one at a time and numbers them from
  ``task_events``' identity; the workers commit that decision before claiming
  (``claim_next``), so no ranking is stale. Existing channels keep their order with turns at
  or below zero.
- ``claim_task`` claims a picked channel's task and returns the attempt and run it counted;
  where each runnable state goes is the frozen table below, rendered from
  ``app.moves.claim_targets`` (``tests/test_migrations.py`` compares them).
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from app.db.ddl import claim_task_0005
from app.db.ddl import claim_task_0006 as claim_task

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STAGES = {
    "generating_assets": "assets", "generating_composites": "composites",
    "generating_video": "video", "generating_audio": "audio", "generating_sfx": "sfx",
    "assembling": "assembly", "uploading": "upload",
}
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

_STAGE_NAMES = ", ".join(f"'{name}'" for name in STAGES.values())
_FAILED_FROM_HISTORY = (
    "UPDATE tasks SET failed_stage = (SELECT CASE e.from_status "
    + " ".join(f"WHEN '{a}' THEN '{n}'" for a, n in STAGES.items())
    + " END FROM task_events e WHERE e.task_id = tasks.id AND e.to_status = tasks.status"
    " AND e.from_status <> e.to_status ORDER BY e.id DESC LIMIT 1)"
    f" WHERE status IN ({', '.join(repr(s) for s in ERRORS)})")


def _runnable_index(predicate: str) -> None:
    where = sa.text(predicate)
    op.create_index(claim_task.RUNNABLE_INDEX, "tasks", list(claim_task.RUNNABLE_COLUMNS),
                    postgresql_where=where, sqlite_where=where)


def upgrade() -> None:
    is_pg = op.get_bind().dialect.name == "postgresql"
    if is_pg:
        op.execute(claim_task_0005.drop())
        op.add_column("tasks", sa.Column("failed_stage", sa.String(16), nullable=True))
        op.add_column("tasks", sa.Column("stage_runs", sa.Integer(), server_default="0",
                                         nullable=False))
        op.create_check_constraint(op.f("ck_tasks_failed_stage_known"), "tasks",
                                   f"failed_stage IN ({_STAGE_NAMES})")
        op.create_check_constraint(op.f("ck_tasks_stage_runs_non_negative"), "tasks",
                                   "stage_runs >= 0")
    else:   # SQLite adds a column with its CHECK, or none (ALTER TABLE … ADD CONSTRAINT)
        op.execute("ALTER TABLE tasks ADD COLUMN failed_stage VARCHAR(16)"
                   " CONSTRAINT ck_tasks_failed_stage_known"
                   f" CHECK (failed_stage IN ({_STAGE_NAMES}))")
        op.execute("ALTER TABLE tasks ADD COLUMN stage_runs INTEGER DEFAULT '0' NOT NULL"
                   " CONSTRAINT ck_tasks_stage_runs_non_negative CHECK (stage_runs >= 0)")
    op.execute(_FAILED_FROM_HISTORY)
    op.execute("UPDATE tasks SET stage_runs = attempts WHERE attempts <> 0")
    op.drop_index(claim_task.RUNNABLE_INDEX, table_name="tasks")
    _runnable_index(claim_task.runnable_predicate(STARTS, ERRORS, ACTIVE))
    op.add_column("channels", sa.Column("turn", sa.BigInteger(), nullable=True))
    op.add_column("channels", sa.Column("picks", sa.BigInteger(), server_default="0",
                                        nullable=False))
    # The order channels last took turns in, kept, below every number a pick-up will take.
    op.execute("UPDATE channels SET turn = (SELECT count(*) FROM channels o"
               " WHERE o.last_claimed_at > channels.last_claimed_at)"
               " * -1 WHERE last_claimed_at IS NOT NULL")
    op.drop_column("channels", "last_claimed_at")
    if is_pg:
        op.execute(claim_task.render_pick(starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task.render(TARGETS, starts=STARTS, active=ACTIVE, errors=ERRORS))
        op.execute(claim_task.render_next())


def downgrade() -> None:
    is_pg = op.get_bind().dialect.name == "postgresql"
    if is_pg:
        for statement in claim_task.drop():
            op.execute(statement)
    # A stage handed back has no holder and no lease: the old claim does not take it over, so
    # its lease ends now and the old reaper takes it back.
    op.execute("UPDATE tasks SET lease_expires_at = CURRENT_TIMESTAMP"
               f" WHERE status IN ({', '.join(repr(s) for s in ACTIVE)})"
               " AND claim_token IS NULL")
    op.add_column("channels", sa.Column("last_claimed_at", sa.DateTime(timezone=True),
                                        nullable=True))
    if is_pg:   # the order channels last took turns in, kept (a millisecond apart)
        op.execute("UPDATE channels SET last_claimed_at = CURRENT_TIMESTAMP - (SELECT count(*)"
                   " FROM channels o WHERE o.turn > channels.turn) * INTERVAL '1 millisecond'"
                   " WHERE turn IS NOT NULL")
    op.drop_column("channels", "picks")
    op.drop_column("channels", "turn")
    op.drop_index(claim_task.RUNNABLE_INDEX, table_name="tasks")
    _runnable_index(claim_task.runnable_predicate(STARTS, ERRORS))
    if is_pg:
        op.drop_constraint(op.f("ck_tasks_stage_runs_non_negative"), "tasks", type_="check")
        op.drop_constraint(op.f("ck_tasks_failed_stage_known"), "tasks", type_="check")
    op.drop_column("tasks", "stage_runs")
    op.drop_column("tasks", "failed_stage")
    if is_pg:
        op.execute(claim_task_0005.render(STARTS, ACTIVE, ERRORS, FIRST_STAGE))
