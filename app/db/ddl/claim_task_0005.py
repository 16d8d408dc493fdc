"""Frozen: the ``claim_task`` that revisions 0004 and 0005 install (the current one is
``app.db.ddl.claim_task``). Do not edit: ``tests/test_migrations.py`` holds its output.

DDL of ``claim_task``: the claim, as one PostgreSQL function (one round trip per claim).

A claim is any move from a runnable state into an active state. The function:

1. ranks channels by the priority of their best runnable task, then round-robin (least
   recently claimed first), then the age of that task — so high beats normal beats low, and
   among equal priorities a flooded channel cannot starve the others. Each channel costs two
   ordered index probes: ``ix_tasks_queued`` and ``ix_tasks_runnable`` (the other runnable
   states and retryable errors, few rows);
2. locks the best channel no other claimer holds, in the ranking statement itself
   (``FOR NO KEY UPDATE OF c SKIP LOCKED LIMIT 1``): capacity is serialised per channel, and a
   claimer that finds a channel's row locked moves on to the next one without waiting;
3. counts that channel's active tasks in a *new statement*, after the lock: every claim on the
   channel by an earlier lock holder is committed and visible (never a count from an old
   snapshot);
4. moves the ranked task with a guarded ``UPDATE … WHERE status = :runnable``, issuing a fresh
   claim token and a lease, then writes the ``task_events`` rows and the channel's turn in one
   more statement. If an earlier lock holder took that task since the ranking, the channel's
   head is read again, once, under the lock. A channel at capacity (or with nothing it can
   start) is passed over and the ranking runs again without it.

With ``p_task`` set it claims that task only (a worker continuing a task into its next stage):
the same capacity rule applies. With ``p_start`` a claimed ``queued`` task also starts its first
stage in the same transaction (``queued → claimed → generating_assets``, two events): what a
worker does next anyway, for one commit instead of two. Since revision 0005 that is a single
write on the task, which the database guard accepts along ``lifecycle.CLAIM_STARTS`` with the
fresh token; ``claimed`` never exists on its own. Rendered from frozen lifecycle data passed by
the migration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FUNCTION = "claim_task"
#: The partial index of runnable tasks other than queued ones (see ``runnable_predicate``).
RUNNABLE_INDEX = "ix_tasks_runnable"
RUNNABLE_COLUMNS = ("channel_id", "priority", "created_at", "id")


def _list(values: Iterable[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def runnable_predicate(starts: Iterable[str], errors: Iterable[str]) -> str:
    """``ix_tasks_runnable``'s predicate: tasks waiting in a runnable state other than queued,
    and errored tasks with a retry scheduled (an exhausted one waits for an operator, unindexed).
    Rows pass through these states briefly, so the index stays small."""
    return (f"status IN ({_list(starts)})"
            f" OR (status IN ({_list(errors)}) AND retry_at IS NOT NULL)")


def _head(channel: str, starts: str, errors: str) -> str:
    """The channel's best runnable task: two ordered probes, no sort of the table. No row lock:
    claimers of a channel are serialised by its row, and the UPDATE re-checks the status."""
    branch = ("(SELECT t.id, t.status, t.priority, t.created_at FROM tasks t"
              " WHERE t.channel_id = {c} AND {cond}"
              " ORDER BY t.priority, t.created_at, t.id LIMIT 1)")
    conds = ["t.status = 'queued'",
             f"(t.status IN ({starts}) OR (t.status IN ({errors}) AND t.retry_at <= p_now))"]
    branches = "\n        UNION ALL ".join(branch.format(c=channel, cond=c) for c in conds)
    return (f"SELECT h.id, h.status, h.priority, h.created_at FROM (\n        {branches}\n"
            "      ) h ORDER BY h.priority, h.created_at, h.id LIMIT 1")


def render(starts: Mapping[str, str], active: Iterable[str], errors: Iterable[str],
           first_stage: str, *, single_write: bool = True) -> str:
    """``starts`` maps each runnable state (other than queued) to the active state it enters;
    ``first_stage`` is the active state a claimed task starts in. With ``single_write``
    (revision 0005) a claim that starts its stage is one write on the task, which the guard of
    that revision accepts with the fresh token; without it (revision 0004), two."""
    start_list, error_list = _list(starts), _list(errors)
    active_list = _list(active)
    start_case = "\n".join(f"          WHEN '{s}' THEN '{a}'" for s, a in starts.items())
    write = _write_once(first_stage) if single_write else _write_twice(first_stage)
    declare = "\n  entered taskstatus;" if single_write else ""
    return f"""CREATE OR REPLACE FUNCTION {FUNCTION}(
  p_worker text, p_lease_s double precision, p_now timestamptz, p_task uuid DEFAULT NULL,
  p_start boolean DEFAULT false)
RETURNS TABLE (task_id uuid, from_status taskstatus, to_status taskstatus, claim_token uuid)
LANGUAGE plpgsql AS $$
DECLARE
  cand record;
  passed uuid[] := '{{}}';
  head_id uuid;
  head_status taskstatus;
  target taskstatus;
  token uuid;{declare}
BEGIN
  LOOP
    -- The best channel whose row no other claimer holds, locked: capacity is serialised per
    -- channel, and a held channel is skipped, not waited on.
    IF p_task IS NULL THEN
      SELECT c.id AS channel, c.max_concurrent, best.id, best.status INTO cand
      FROM channels c
      CROSS JOIN LATERAL ({_head('c.id', start_list, error_list)}) best
      WHERE c.is_active AND c.id <> ALL (passed)
      ORDER BY best.priority, c.last_claimed_at NULLS FIRST, best.created_at, c.id
      LIMIT 1
      FOR NO KEY UPDATE OF c SKIP LOCKED;
    ELSE
      SELECT c.id AS channel, c.max_concurrent, t.id, t.status INTO cand
      FROM tasks t JOIN channels c ON c.id = t.channel_id
      WHERE t.id = p_task AND c.is_active AND c.id <> ALL (passed)
      FOR NO KEY UPDATE OF c SKIP LOCKED;
    END IF;
    EXIT WHEN NOT FOUND;
    passed := passed || cand.channel;
    IF cand.max_concurrent IS NOT NULL THEN
      -- A new statement after the lock: sees every claim committed by earlier lock holders.
      CONTINUE WHEN cand.max_concurrent <= (
        SELECT count(*) FROM tasks WHERE channel_id = cand.channel AND status IN ({active_list}));
    END IF;
    head_id := cand.id;
    head_status := cand.status;
    FOR pass IN 1..2 LOOP
      IF pass = 2 THEN
        -- The ranked task was taken since the ranking: the channel's head now, under the lock.
        EXIT WHEN p_task IS NOT NULL;
        SELECT h.id, h.status INTO head_id, head_status
          FROM ({_head('cand.channel', start_list, error_list)}) h;
        EXIT WHEN NOT FOUND;
      END IF;
      IF head_status IN ({error_list}) THEN
        -- Retry the stage that failed (its active state, from the history) once it is due.
        EXIT WHEN NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = head_id AND t.retry_at <= p_now);
        target := (SELECT e.from_status FROM task_events e
                   WHERE e.task_id = head_id AND e.to_status = head_status
                     AND e.from_status IS DISTINCT FROM e.to_status
                   ORDER BY e.id DESC LIMIT 1);
        EXIT WHEN target IS NULL OR NOT task_transition_allowed(head_status, target);
      ELSE
        target := CASE head_status::text
          WHEN 'queued' THEN 'claimed'
{start_case}
        END::taskstatus;
        EXIT WHEN target IS NULL;
      END IF;
{write}      task_id := head_id; from_status := head_status; to_status := target;
      claim_token := token;
      RETURN NEXT;
      RETURN;
    END LOOP;
  END LOOP;
END
$$"""


def _claim_update(status: str) -> str:
    """The guarded move of the ranked task into ``status`` (a PL/pgSQL variable), with a fresh
    claim token and lease; a task taken since the ranking sends the claim to its next pass."""
    return f"""\
      UPDATE tasks t SET status = {status}, claimed_by = p_worker, claimed_at = p_now,
          claim_token = token, lease_expires_at = p_now + make_interval(secs => p_lease_s),
          retry_at = NULL,
          attempts = CASE WHEN {status} = 'claimed' THEN t.attempts ELSE t.attempts + 1 END
        WHERE t.id = head_id AND t.status = head_status;
      CONTINUE WHEN NOT FOUND;
"""


def _write_twice(first_stage: str) -> str:
    """Revision 0004's claim: the move, then (for a start) a second write into the stage."""
    return f"""      token := gen_random_uuid();
{_claim_update('target')}\
      -- The rest in one statement: the start (if asked), the event rows, the channel's turn.
      IF p_start AND target = 'claimed' THEN
        WITH started AS (
            UPDATE tasks t SET status = '{first_stage}', attempts = t.attempts + 1
            WHERE t.id = head_id),
          turn AS (UPDATE channels SET last_claimed_at = p_now WHERE id = cand.channel)
        INSERT INTO task_events (task_id, from_status, to_status, actor, note, created_at)
          VALUES (head_id, head_status, target, p_worker, 'claim', p_now),
                 (head_id, target, '{first_stage}', p_worker, NULL, p_now);
        target := '{first_stage}';
      ELSE
        WITH turn AS (UPDATE channels SET last_claimed_at = p_now WHERE id = cand.channel)
        INSERT INTO task_events (task_id, from_status, to_status, actor, note, created_at)
          VALUES (head_id, head_status, target, p_worker, 'claim', p_now);
      END IF;
"""


def _write_once(first_stage: str) -> str:
    """One write on the task, straight into the first stage for a start (``queued → claimed →
    first stage``: a second tuple version, its index entries, triggers and foreign-key check
    saved), then both transitions' events and the channel's turn in one statement."""
    return f"""      token := gen_random_uuid();
      entered := CASE WHEN p_start AND target = 'claimed' THEN '{first_stage}' ELSE target END;
{_claim_update('entered')}\
      WITH turn AS (UPDATE channels SET last_claimed_at = p_now WHERE id = cand.channel)
      INSERT INTO task_events (task_id, from_status, to_status, actor, note, created_at)
        SELECT head_id, e.src, e.dst, p_worker, e.note, p_now
        FROM (VALUES (head_status, target, 'claim'), (target, entered, NULL)) e (src, dst, note)
        WHERE e.src <> e.dst;
      target := entered;
"""


def drop() -> str:
    return f"DROP FUNCTION IF EXISTS {FUNCTION}(text, double precision, timestamptz, uuid, boolean)"
