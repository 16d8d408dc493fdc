"""A pick-up that sets up only what the moment needs.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

Setting up a statement's plan costs for every node it holds, whether it runs or not. The
ranking of ``pick_channel`` held the parts for capped channels, spent quotas and tasks waiting
in runnable states other than queued; with none of those (the common case: queued work only),
they cost more than the ranking itself. ``pick_channel`` now reads once per call whether any
active channel has a cap, any quota is spent and any such task waits (one statement, with the
quota blocks it already read), and runs the ranking's form that handles exactly that: one
ranking, rendered in eight forms, each flag off where its part is its constant.

The pick's channel write also takes one statement instead of three: the row is locked (or
skipped) in the ``UPDATE``'s own condition, and the pick is numbered and its task reserved in
its ``SET``. Revision 0010's claim is frozen as ``claim_task_0010``.
"""

from collections.abc import Sequence
from types import ModuleType

from alembic import op
from app.db.ddl import claim_task, claim_task_0010

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


def _pick(claim: ModuleType) -> str:
    return str(claim.render_pick(starts=STARTS, active=ACTIVE, errors=ERRORS, first=FIRST))


def _replace(statement: str) -> None:
    """Drop ``pick_channel`` (its signature is unchanged) and create it anew."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for drop in [s for s in claim_task.drop() if f" {claim_task.PICK}(" in s]:
        op.execute(drop)
    op.execute(statement)


def upgrade() -> None:
    _replace(_pick(claim_task))


def downgrade() -> None:
    _replace(_pick(claim_task_0010))
