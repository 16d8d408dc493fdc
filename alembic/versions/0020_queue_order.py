"""The claim functions read each channel's first tasks from the claim indexes, whatever the
statistics.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07

``pick_channel`` and ``pick_channels`` find a channel's first tasks by priority, then age.
Their plans are made once per connection. Made on statistics taken while nothing was queued
(every task published: a quiet hour, and autovacuum analyzes again only after a tenth of the
table changed), every way of finding those tasks looked equally cheap, and the plan kept could
read every queued task of every channel from ``ix_tasks_status`` (or
``ix_tasks_channel_id_status``) and sort them, at every pick-up: with 60,000 tasks queued,
6,000 buffers a pick-up instead of 120, and a group pick-up of eight 6,400 instead of 530. The
two functions now plan without a sort wherever a plan without one exists
(``claim_task.QUEUE_ORDER``), so the order comes from ``ix_tasks_queued`` and
``ix_tasks_runnable``; the sorts nothing can avoid are still made. ``claim_task`` keeps its
settings: it takes the task a pick reserved by key, and a function's setting holds in those
it calls (``quota_take`` locks a few buckets in key order by sorting them). Bodies and
signatures are unchanged: workers of either side run on it.
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
