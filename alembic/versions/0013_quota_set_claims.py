"""Reserved claims together where quotas count their stage.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05

``claim_reserved`` claimed the reserved tasks of a pick-up together only when no quota existed
anywhere; with one, every claim of a pick-up went to ``claim_task`` one by one (a function call
and its statements each, ``quota_take``'s four among them, and a commit each). It now claims
them together when quotas count the stage they start too: it locks the tasks (skipping any
another transaction holds), then every bucket of their channels in ``quota_take``'s order (made
first where missing), and reads the clock. Each pick in turn then records its start in all its
buckets or in none, ``quota_take``'s check and record in one ``UPDATE``, so the picks claimed
are exactly those ``claim_task`` would claim one by one in the same order; one statement claims
them and writes their events, every start stamped with the clock read after the locks. Where
quotas exist, ``pick_up`` commits the claims made together before any claim that may wait for
a lock.

``quota_blocks`` (read at every pick-up and claim once any quota exists) compared with the
clock, a volatile value: the planner could neither inline it nor use the index on
``blocked_until``, so every call planned the function anew and scanned the whole table, which
every start rewrites (a bloated table between vacuums). It now compares with the time the
calling statement began: inlined, read through the index, and never less strict (a bucket
that freed since then still reads as blocked for that statement).

Every start rewrites its bucket's row in ``quota_usage``, which holds up to the quota's limit
of starts. The table is stored with ``fillfactor = 10``, so that the next versions of a row
find room on its page and the updates stay HOT; and the array of starts, once too long for the
row (about 250 starts), is stored apart without compression (``STORAGE EXTERNAL``): compressed
again at each start, a bucket of 1,000 starts cost over half a millisecond per start. Rows and
values written before keep their place until they are rewritten.

Revision 0012's pick-up is frozen as ``pick_up_0012``; a downgrade re-installs it, the clock in
``quota_blocks`` and the default storage.
"""

from collections.abc import Sequence

from alembic import op
from app.db.ddl import (
    boundary,
    claim_task,
    claim_task_0010,
    pick_up_0012,
    pick_up_0013,
    quota_0013,
    reserved_0013,
)

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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


def _pick_up(statements: list[str]) -> None:
    """Drop ``pick_up`` and ``claim_reserved`` (their signatures are unchanged); run
    ``statements``."""
    if op.get_bind().dialect.name != "postgresql":
        return
    names = (boundary.PICK_UP, claim_task.RESERVED)
    for drop in [s for s in boundary.drop() + claim_task.drop()
                 if any(f" {name}(" in s for name in names)]:
        op.execute(drop)
    for statement in statements:
        op.execute(statement)


def _blocks(statement: str) -> None:
    """Re-create ``quota_blocks`` in place (its signature is unchanged)."""
    assert f"FUNCTION {claim_task.QUOTA_BLOCKS}()" in statement
    if op.get_bind().dialect.name == "postgresql":
        op.execute(statement.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))


#: Every start rewrites its bucket's row, which holds up to the quota's limit of starts. Room on
#: each page for the row's next versions keeps those updates HOT (no index entries, pruned in
#: place): half the cost of one at a few hundred starts. Past about 250 starts the array no
#: longer fits in the row: stored apart uncompressed, a start costs a tenth of what
#: compressing it again each time cost (80 µs against 580 µs at 1,000 to 1,500 starts).
USAGE_STORAGE = ("SET (fillfactor = 10)", "ALTER COLUMN starts SET STORAGE EXTERNAL")
USAGE_DEFAULT = ("RESET (fillfactor)", "ALTER COLUMN starts SET STORAGE EXTENDED")


def _storage(options: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE quota_usage {', '.join(options)}")


def upgrade() -> None:
    _storage(USAGE_STORAGE)
    _blocks(quota_0013.render_quotas(TARGETS, STAGE_OF)[1])
    _pick_up([reserved_0013.render_reserved(TARGETS), pick_up_0013.render_pick_up()])


def downgrade() -> None:
    _pick_up([pick_up_0012.render_reserved(TARGETS), pick_up_0012.render_pick_up()])
    _blocks(claim_task_0010.render_quotas(TARGETS, STAGE_OF)[1])
    _storage(USAGE_DEFAULT)
