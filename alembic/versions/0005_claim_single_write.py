"""A claim that starts its stage is one write on the task (PostgreSQL only).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

``claim_task(…, p_start => true)`` moved a queued task twice in one transaction (``queued →
claimed``, then ``claimed → generating_assets``): a second tuple version with an entry in every
index of ``tasks``, both row triggers again and a foreign-key re-check, for a state no other
transaction can see. The guard now accepts ``queued → generating_assets`` as that path when the
same write issues a fresh claim token (a bare status update along it is still refused), and the
function writes the task once; both transitions are still recorded in ``task_events``. The
lifecycle data below is frozen (``tests/test_migrations.py`` compares it with ``app.lifecycle``).
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import claim_task_0005 as claim_sql
from app.db.ddl import guard

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: ``a → claimed → c`` taken in one write by a claim that starts its stage.
CLAIM_STARTS = (("queued", "generating_assets"),)
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


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(guard.guard_function(CLAIM_STARTS))
        op.execute(claim_sql.render(STARTS, ACTIVE, ERRORS, FIRST_STAGE))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(claim_sql.render(STARTS, ACTIVE, ERRORS, FIRST_STAGE, single_write=False))
        op.execute(guard.guard_function())
