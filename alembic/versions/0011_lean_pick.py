"""A pick-up that sets up only what the moment needs.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

Setting up a statement's plan costs for every node it holds, whether it runs or not. The
ranking of ``pick_channel`` held the parts for capped channels, spent quotas and tasks waiting
in runnable states other than queued; with none of those (the common case: queued work only),
setting them up at every call cost about a tenth of a pick-up's server time. ``pick_channel``
now reads once per call whether any active channel has a cap, any quota is spent and any such
task waits (one statement, with the quota blocks it already read), and runs the ranking's form
that handles exactly that: one ranking, rendered in eight forms, each flag off where its part
is its constant.

The pick's channel write also takes one statement instead of three: the row is locked (or
skipped) in the ``UPDATE``'s own condition, and the pick is numbered and its task reserved in
its ``SET``. ``claim_task`` reads whether any quota exists with the quota blocks, looks up the
stages spent for its channel only when some are, locks the task it was given as it reads it
(one statement where it took two; a worker's claim now takes its task's lock before its
channel's), writes its events with a plain ``VALUES`` and returns the task's fields with the
claim (its ``UPDATE``'s ``RETURNING``: the stage's input, which ``pick_up`` read apart).
``pick_up`` with a single claim does not look up whether claims must commit one by one, and
where they must (caps, quotas), every commit but the last is asynchronous: the call returns
nothing before the last, which is flushed and makes the others durable with it. A pick-up runs
10 statements inside instead of 18, and its server time falls by about a tenth. ``quota_take``
(which every claim and carry calls once any quota exists) returns at once for a stage no quota
names, one look-up where it ran four statements, and checks and records a start in one
``UPDATE``. Revision 0010's claim is frozen as ``claim_task_0010``; ``pick_up`` goes back to
revision 0009's on a downgrade.
"""

from collections.abc import Sequence
from types import ModuleType

from alembic import op
from app.db.ddl import boundary_0009, boundary_0011, claim_task, claim_task_0010, quota_0013

revision: str = "0011"
down_revision: str | None = "0010"
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


def _take(quotas: ModuleType) -> str:
    """``quota_take`` as ``quotas`` renders it (the third of its quota functions)."""
    take = str(quotas.render_quotas(TARGETS, STAGE_OF)[2])
    assert f"FUNCTION {claim_task.QUOTA_TAKE}(" in take
    return take


def _functions(claim: ModuleType, stage: ModuleType, quotas: ModuleType) -> list[str]:
    """``pick_channel`` and ``claim_task`` as ``claim`` renders them, ``quota_take`` as
    ``quotas`` does, ``pick_up`` as ``stage`` does."""
    return [claim.render_pick(starts=STARTS, active=ACTIVE, errors=ERRORS, first=FIRST),
            claim.render(TARGETS, starts=STARTS, active=ACTIVE, errors=ERRORS, first=FIRST),
            _take(quotas), stage.render_pick_up()]


def _replace(statements: list[str]) -> None:
    """Drop the four (their arguments are unchanged; ``claim_task`` returns four more columns)
    and create them anew."""
    if op.get_bind().dialect.name != "postgresql":
        return
    names = (claim_task.PICK, claim_task.FUNCTION, claim_task.QUOTA_TAKE, boundary_0011.PICK_UP)
    for statement in [s for s in claim_task.drop() + boundary_0011.drop()
                      if any(f" {name}(" in s for name in names)]:
        op.execute(statement)
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    _replace(_functions(claim_task, boundary_0011, quota_0013))


def downgrade() -> None:
    _replace(_functions(claim_task_0010, boundary_0009, claim_task_0010))
