"""The claim functions read each channel's first tasks from the claim indexes, whatever the
statistics.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07

``pick_channel``, ``pick_channels`` and ``claim_task`` find a channel's first tasks by
priority, then age. Their plans are made once per connection. Made on statistics taken while
nothing was queued (every task published: a quiet hour, and autovacuum analyzes again only
after a tenth of the table changed), every way of finding those tasks looked equally cheap,
and the plan kept could read every queued task of every channel from ``ix_tasks_status`` and
sort them, at every pick-up: with 40,000 tasks queued, 4,000 buffers a pick-up instead of 120,
and a group pick-up of eight 4,400 instead of 500. The three functions now plan without a
sort where an index gives the order (``claim_task.QUEUE_ORDER``), so the order comes from
``ix_tasks_queued`` and ``ix_tasks_runnable``; the sorts nothing can avoid are still made.
Their bodies and signatures are unchanged: workers of either side run on it.
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import claim_task

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in claim_task.render_queue_order():
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in claim_task.render_queue_order(on=False):
            op.execute(statement)
