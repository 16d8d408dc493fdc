"""Which indexes the claim really uses: the plans of the statements *inside* ``claim_task``.

``EXPLAIN SELECT claim_task(…)`` shows only a function scan, so the claim runs once with
``auto_explain`` logging nested statements to the client (``client_min_messages = log``), in a
transaction that is rolled back. The baseline's single statement is EXPLAINed directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bench import claimers, data

_INDEX = re.compile(r"(?:Index Scan|Index Only Scan|Bitmap Index Scan)(?: Backward)?"
                    r" (?:using|on) (\w+)")
_SEQ_ON_TASKS = re.compile(r"Seq Scan on tasks\b")
_AUTO_EXPLAIN = ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                 "SET auto_explain.log_nested_statements = on",
                 "SET auto_explain.log_analyze = on", "SET auto_explain.log_buffers = on",
                 "SET client_min_messages = log")


@dataclass(frozen=True)
class Plan:
    """Index names used by the claim's statements, whether any scanned ``tasks`` whole, and
    the plan text of the statement that reads the queued rows."""

    indexes: tuple[str, ...]
    seq_scan_on_tasks: bool
    text: str

    @property
    def uses_claim_index(self) -> bool:
        return "ix_tasks_queued" in self.indexes and not self.seq_scan_on_tasks


def _summarise(plans: list[str], marker: str) -> Plan:
    indexes = sorted({name for plan in plans for name in _INDEX.findall(plan)})
    queued = [p for p in plans if marker in p]
    return Plan(tuple(indexes), any(_SEQ_ON_TASKS.search(p) for p in plans),
                queued[-1] if queued else "")


async def ours(url: str) -> Plan:
    """The plans of one real claim (rolled back)."""
    conn = await data.connect(url)
    plans: list[str] = []
    conn.add_log_listener(lambda _c, message: plans.append(str(message.message)))
    try:
        for statement in _AUTO_EXPLAIN:
            await conn.execute(statement)
        async with conn.transaction():
            await conn.fetch("SELECT * FROM claim_task('explain', 30, now(), NULL, true)")
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()
    nested = [p for p in plans if "claim_task(" not in p.split("\n", 2)[1]]
    return _summarise(nested, "t.status = 'queued'")


async def baseline(url: str) -> Plan:
    conn = await data.connect(url)
    try:
        async with conn.transaction():
            rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + claimers.BASELINE_CLAIM,
                                    "explain")
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()
    return _summarise(["\n".join(r[0] for r in rows)], "Update on tasks")


class _Rollback(Exception):
    """Leave the explained claim's transaction without committing it."""

