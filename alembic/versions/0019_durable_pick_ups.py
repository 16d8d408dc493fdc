"""A pick-up whose claims commit apart is durable when it returns.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07

Where quotas exist or a picked channel has a cap, ``pick_up`` commits the claims of one call
one by one, asynchronously, and its last commit waits for the disk, making every earlier one
durable with it. To be sure that last commit was flushed even when the last claim wrote
nothing, it took a transaction id. That is not enough: PostgreSQL flushes a commit only when
its transaction wrote WAL of its own, so such a call could return claims that a crash of the
server at once would lose (the claims' workers would then run stages the database has as
queued; every later write of theirs is fenced by the claim token and refused). The last
commit now writes a logical message (``pg_logical_emit_message``, transactional, empty), a
WAL record of its own, so it is flushed. Nothing else changes.

Revision 0015's ``pick_up`` is frozen as ``pick_up_0015``; a downgrade re-installs it.
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import boundary, pick_up_0015

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _pick_up(pick_up: str) -> None:
    """Re-create ``pick_up`` (its signature is unchanged)."""
    assert pick_up.startswith("CREATE PROCEDURE")
    op.execute(pick_up.replace("CREATE PROCEDURE", "CREATE OR REPLACE PROCEDURE", 1))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pick_up(boundary.render_pick_up())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pick_up(pick_up_0015.render_pick_up())
