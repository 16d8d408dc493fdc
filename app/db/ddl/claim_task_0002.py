"""``claim_task`` as revision 0002 created it, frozen: downgrading revision 0004 restores it.
The current function is rendered by ``app.db.ddl.claim_task``.

A claim is any move from a runnable state into an active state. The function:

1. ranks channels by the priority of their best runnable task, then round-robin (least
   recently claimed first), then the age of that task — so high beats normal beats low, and
   among equal priorities a flooded channel cannot starve the others;
2. locks one channel row at a time with ``FOR NO KEY UPDATE SKIP LOCKED``: capacity is
   serialised per channel (a claimer that finds the row locked moves on to other work);
3. counts that channel's active tasks in a *new statement*, after the lock: every claim on the
   channel by an earlier lock holder is committed and visible (never a count from an old
   snapshot);
4. moves the channel's head task with a guarded ``UPDATE … WHERE status = :runnable``, issuing a
   fresh claim token and a lease, and writes the ``task_events`` row.

With ``p_task`` set it claims that task only (a worker continuing a task into its next stage):
the same capacity rule applies. Rendered from frozen lifecycle data passed by the migration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FUNCTION = "claim_task"


def _list(values: Iterable[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def _runnable_head(channel: str, starts: str, errors: str) -> str:
    """The channel's best runnable task: queued (partial index), other runnable states, or an
    error state whose retry is due. Each branch is a small index scan of one channel. No row
    lock: claimers of a channel are serialised by its row, and the UPDATE re-checks status."""
    branch = ("(SELECT t.id, t.status, t.priority, t.created_at FROM tasks t"
              " WHERE t.channel_id = {c} AND {cond}"
              " ORDER BY t.priority, t.created_at, t.id LIMIT 1)")
    conds = ["t.status = 'queued'", f"t.status IN ({starts})",
             f"t.status IN ({errors}) AND t.retry_at <= p_now"]
    branches = "\n      UNION ALL ".join(
        branch.format(c=channel, cond=cond) for cond in conds)
    return (f"SELECT * FROM (\n      {branches}\n    ) h"
            " ORDER BY h.priority, h.created_at, h.id LIMIT 1")


def render(starts: Mapping[str, str], active: Iterable[str], errors: Iterable[str]) -> str:
    """``starts`` maps each runnable state (other than queued) to the active state it enters."""
    start_list, error_list = _list(starts), _list(errors)
    active_list = _list(active)
    start_case = "\n".join(f"        WHEN '{s}' THEN '{a}'" for s, a in starts.items())
    return f"""CREATE OR REPLACE FUNCTION {FUNCTION}(
  p_worker text, p_lease_s double precision, p_now timestamptz, p_task uuid DEFAULT NULL)
RETURNS TABLE (task_id uuid, from_status taskstatus, to_status taskstatus, claim_token uuid)
LANGUAGE plpgsql AS $$
DECLARE
  cand record;
  head record;
  target taskstatus;
  token uuid;
BEGIN
  FOR cand IN
    SELECT c.id, c.max_concurrent
    FROM channels c
    CROSS JOIN LATERAL ({_runnable_head('c.id', start_list, error_list)}) best
    WHERE c.is_active
      AND (p_task IS NULL OR c.id = (SELECT channel_id FROM tasks WHERE id = p_task))
    ORDER BY best.priority, c.last_claimed_at NULLS FIRST, best.created_at, c.id
  LOOP
    -- Serialise capacity per channel; a channel another claimer holds is skipped, not waited on.
    PERFORM 1 FROM channels WHERE id = cand.id FOR NO KEY UPDATE SKIP LOCKED;
    CONTINUE WHEN NOT FOUND;
    -- A new statement after the lock: sees every claim committed by earlier lock holders.
    CONTINUE WHEN cand.max_concurrent IS NOT NULL AND cand.max_concurrent <= (
      SELECT count(*) FROM tasks WHERE channel_id = cand.id AND status IN ({active_list}));
    IF p_task IS NULL THEN
      {_runnable_head('cand.id', start_list, error_list)} INTO head;
    ELSE
      SELECT t.id, t.status FROM tasks t WHERE t.id = p_task AND (t.status = 'queued'
        OR t.status IN ({start_list})
        OR (t.status IN ({error_list}) AND t.retry_at <= p_now)) INTO head;
    END IF;
    CONTINUE WHEN NOT FOUND;
    target := CASE head.status::text
        WHEN 'queued' THEN 'claimed'
{start_case}
        -- an error state: retry the stage that failed (its active state, from the history)
        ELSE (SELECT e.from_status FROM task_events e
              WHERE e.task_id = head.id AND e.to_status = head.status
                AND e.from_status IS DISTINCT FROM e.to_status
              ORDER BY e.id DESC LIMIT 1)::text
      END::taskstatus;
    CONTINUE WHEN target IS NULL OR NOT task_transition_allowed(head.status, target);
    token := gen_random_uuid();
    UPDATE tasks t SET status = target, claimed_by = p_worker, claimed_at = p_now,
        claim_token = token, lease_expires_at = p_now + make_interval(secs => p_lease_s),
        retry_at = NULL,
        attempts = CASE WHEN target = 'claimed' THEN t.attempts ELSE t.attempts + 1 END
      WHERE t.id = head.id AND t.status = head.status;
    CONTINUE WHEN NOT FOUND;
    INSERT INTO task_events (task_id, from_status, to_status, actor, note, created_at)
      VALUES (head.id, head.status, target, p_worker, 'claim', p_now);
    UPDATE channels SET last_claimed_at = p_now WHERE id = cand.id;
    task_id := head.id; from_status := head.status; to_status := target;
    claim_token := token;
    RETURN NEXT;
    RETURN;
  END LOOP;
END
$$"""


def drop() -> str:
    return f"DROP FUNCTION IF EXISTS {FUNCTION}(text, double precision, timestamptz, uuid)"
