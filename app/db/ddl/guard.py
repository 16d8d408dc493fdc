"""DDL for the database-side guarantees: the transition guard and ``updated_at`` triggers.

Rendered from a list of legal ``(from, to)`` pairs, so the database refuses what the service
layer refuses; since revision 0005 the PostgreSQL guard also passes ``lifecycle.CLAIM_STARTS``
when written by a claim, and since 0009 ``lifecycle.CARRIES`` when written by a stage boundary
(see ``guard_function``). Migrations pass the pairs frozen in the
revision that installs them (an edited table needs a new revision; ``tests/test_migrations.py``
checks they agree).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Pair = tuple[str, str]

#: Objects created by ``postgres_install`` (names used by the downgrade and by tests).
PG_FUNCTIONS = ("task_transition_allowed", "tasks_guard_transition", "set_updated_at")
TABLES_WITH_UPDATED_AT = ("channels", "tasks")


def _quoted(values: Iterable[str], cast: str) -> str:
    return ", ".join(f"'{value}'{cast}" for value in values)


def _case_expression(pairs: Iterable[Pair], old: str, new: str, *, cast: str = "") -> str:
    """``CASE old WHEN 'a' THEN new IN ('b', …) … ELSE false END`` over the legal pairs."""
    targets: dict[str, list[str]] = {}
    for src, dst in pairs:
        targets.setdefault(src, []).append(dst)
    whens = "\n".join(
        f"    WHEN '{src}'{cast} THEN {new} IN ({_quoted(dsts, cast)})"
        for src, dsts in targets.items()
    )
    return f"CASE {old}\n{whens}\n    ELSE false\n  END"


def guard_functions(pairs: Sequence[Pair], claim_starts: Sequence[Pair] = (),
                    carries: Sequence[Pair] = ()) -> list[str]:
    """``task_transition_allowed`` and ``tasks_guard_transition()`` (``CREATE OR REPLACE``): what
    a revision that edits the transition table re-installs."""
    allowed = _case_expression(pairs, "from_status", "to_status", cast="::taskstatus")
    return [
        f"""CREATE OR REPLACE FUNCTION task_transition_allowed(from_status taskstatus,
                                                   to_status taskstatus)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
  SELECT {allowed}
$$""",
        guard_function(claim_starts, carries),
    ]


def postgres_install(pairs: Sequence[Pair]) -> list[str]:
    """Functions and triggers: refuse illegal status moves; keep timestamps true."""
    statements = [
        *guard_functions(pairs),
        # Only status changes are checked; heartbeats and bookkeeping updates pass untouched.
        """CREATE TRIGGER tasks_guard_transition BEFORE UPDATE OF status ON tasks
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION tasks_guard_transition()""",
        # created_at is pinned so a raw UPDATE can neither move it nor reorder the FIFO.
        """CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  NEW.created_at := OLD.created_at;
  RETURN NEW;
END
$$""",
    ]
    statements += [
        f"""CREATE TRIGGER {table}_set_updated_at BEFORE UPDATE ON {table}
FOR EACH ROW EXECUTE FUNCTION set_updated_at()"""
        for table in TABLES_WITH_UPDATED_AT
    ]
    return statements


def guard_function(claim_starts: Sequence[Pair] = (), carries: Sequence[Pair] = ()) -> str:
    """``tasks_guard_transition()``: refuse every status move that is not an edge of the table.

    Each pair ``(a, c)`` of ``claim_starts`` is the path ``a → claimed → c`` taken in one write: a
    worker's claim that starts its stage at once (``app.db.ddl.claim_task``). It passes only as
    a claim writes it: a fresh claim token, a worker, a lease and one more attempt. Each pair of
    ``carries`` is a stage boundary that carries its task straight into the next stage
    (``app.db.ddl.boundary``): it passes only as a carry writes it, with a fresh claim token, a
    worker, a lease and a fresh attempt budget (the first attempt and run of the new stage). A
    bare ``UPDATE … SET status`` along either is still refused, and neither reaches a state the
    edges on its way do not.
    """
    composite = ""
    fresh_claim = ("\n          AND NEW.claim_token IS NOT NULL"
                   "\n          AND NEW.claim_token IS DISTINCT FROM OLD.claim_token"
                   "\n          AND NEW.claimed_by IS NOT NULL"
                   "\n          AND NEW.lease_expires_at IS NOT NULL")
    if claim_starts:
        pairs = ", ".join(f"('{src}', '{dst}')" for src, dst in claim_starts)
        composite = ("\n     AND NOT ((OLD.status::text, NEW.status::text) IN (" + pairs + ")"
                     + fresh_claim +
                     "\n          AND NEW.attempts = OLD.attempts + 1)")
    if carries:
        pairs = ", ".join(f"('{src}', '{dst}')" for src, dst in carries)
        composite += ("\n     AND NOT ((OLD.status::text, NEW.status::text) IN (" + pairs + ")"
                      + fresh_claim +
                      "\n          AND NEW.attempts = 1 AND NEW.stage_runs = 1)")
    return f"""CREATE OR REPLACE FUNCTION tasks_guard_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NOT task_transition_allowed(OLD.status, NEW.status){composite} THEN
    RAISE EXCEPTION 'illegal task transition % -> % (task %)', OLD.status, NEW.status, OLD.id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'tasks_transition';
  END IF;
  RETURN NEW;
END
$$"""


def postgres_uninstall() -> list[str]:
    """Drop what ``postgres_install`` created (triggers go with their tables or explicitly)."""
    statements = [f"DROP TRIGGER IF EXISTS {t}_set_updated_at ON {t}"
                  for t in TABLES_WITH_UPDATED_AT]
    statements.append("DROP TRIGGER IF EXISTS tasks_guard_transition ON tasks")
    statements += [f"DROP FUNCTION IF EXISTS {name}" for name in PG_FUNCTIONS]
    return statements


def sqlite_install(pairs: Sequence[Pair]) -> list[str]:
    """The same guarantees for SQLite: a RAISE(ABORT) guard and AFTER UPDATE timestamp fix-ups."""
    allowed = _case_expression(pairs, "OLD.status", "NEW.status").replace("false", "0")
    statements = [
        f"""CREATE TRIGGER tasks_guard_transition BEFORE UPDATE OF status ON tasks
FOR EACH ROW WHEN OLD.status IS NOT NEW.status AND NOT ({allowed})
BEGIN
  SELECT RAISE(ABORT, 'illegal task transition');
END"""
    ]
    statements += [
        f"""CREATE TRIGGER {table}_set_updated_at AFTER UPDATE ON {table}
FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at
BEGIN
  UPDATE {table} SET updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = NEW.id;
END"""
        for table in TABLES_WITH_UPDATED_AT
    ]
    return statements


def sqlite_uninstall() -> list[str]:
    statements = [f"DROP TRIGGER IF EXISTS {t}_set_updated_at" for t in TABLES_WITH_UPDATED_AT]
    statements.append("DROP TRIGGER IF EXISTS tasks_guard_transition")
    return statements
