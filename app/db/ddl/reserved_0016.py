"""Revision 0016's claim of reserved tasks together, frozen (what ``0016_compact_quota_record``
installs and a downgrade to it re-installs): revision 0014's, recording starts through
``quota_merge``, every bucket locked in a statement of its own before they are recorded. The
live one is ``claim_task.render_reserved``.
"""

from __future__ import annotations

from app.db.ddl import reserved_0014
from app.db.ddl.claim_task import Targets, _record


def render_reserved(targets: Targets) -> str:
    """``claim_reserved`` as revision 0016 installs it (see ``reserved_0014.render_reserved``)."""
    return reserved_0014.render_reserved(targets, _record)
