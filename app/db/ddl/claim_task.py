"""DDL of ``claim_task``: the claim, as one PostgreSQL function (one round trip per claim).

A claim is any move from a runnable state into an active state: ``queued``, an approved state,
an automatic step, an errored task whose retry is due, or a stage handed back by a stopping
worker (taken over in place). The function:

1. ranks channels by the priority of their best runnable task, then by turn (a number from the
   ``channel_turns`` sequence, issued by each pick-up: the channel picked least recently goes
   first), then by that task's age. Each channel costs two ordered index probes,
   ``ix_tasks_queued`` and ``ix_tasks_runnable`` (every other runnable row, few of them);
2. locks the best channel no other claimer holds, in the ranking statement itself
   (``FOR NO KEY UPDATE OF c SKIP LOCKED``). The ranking reads a snapshot; a channel picked
   by another claimer that committed after it has a newer turn by the time its row is
   locked, so PostgreSQL's re-check of the locked row (``c.turn IS NOT DISTINCT FROM
   best.seen_turn``: the head subquery carries the turn it was ranked by) fails and the row is
   passed over for the next one. A stale ranking can never win: turns are strict;
3. counts the channel's active tasks in a *new statement*, after the lock (never a count from
   an old snapshot). At its cap only a handed-back stage, which still holds its slot, can be
   taken;
4. moves the task with a guarded ``UPDATE … WHERE status = :runnable`` (re-checking that it is
   still runnable), issuing a fresh claim token and lease and counting the attempt and run,
   then writes the ``task_events`` rows and, for a pick-up, the channel's next turn in one
   more statement. If the ranked task was taken since the ranking, the channel's head is read
   again under the lock, once. A channel at capacity or with nothing it can start is passed
   over and the ranking runs again without it.

With ``p_task`` set it claims that task only: a worker carrying the task it just finished into
its next stage. That waits for the channel's lock, needs a capacity slot like any claim, and
takes no turn (a pick-up is a claim of a task no worker held). With ``p_start`` a claimed
``queued`` task starts its first stage in the same write (``queued → claimed → first stage``,
both events recorded; the database guard accepts the pair only as a claim writes it).

Where each runnable state goes is rendered from the pure rule ``app.moves.claim_target`` (the
migration passes the table frozen), so the function and the services cannot disagree about
where a retry resumes: an errored task resumes at ``tasks.failed_stage``, or at the earliest
stage of its error kind when the row names none. Nothing here reads ``task_events``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FUNCTION = "claim_task"
SEQUENCE = "channel_turns"
#: The partial index of runnable tasks other than queued ones (see ``runnable_predicate``).
RUNNABLE_INDEX = "ix_tasks_runnable"
RUNNABLE_COLUMNS = ("channel_id", "priority", "created_at", "id")
#: Where a claim moves a task: ``(status, failed_stage or None, start) → target``.
Targets = Mapping[tuple[str, str | None, bool], str]


def _list(values: Iterable[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def runnable_predicate(starts: Iterable[str], errors: Iterable[str],
                       active: Iterable[str] = ()) -> str:
    """``ix_tasks_runnable``'s predicate: tasks waiting in a runnable state other than queued,
    errored tasks with a retry scheduled (an exhausted one waits for an operator, unindexed) and
    stages handed back (active, no holder). Rows pass through these states briefly, so the
    index stays small. Without ``active``: revision 0004's predicate."""
    predicate = (f"status IN ({_list(starts)})"
                 f" OR (status IN ({_list(errors)}) AND retry_at IS NOT NULL)")
    active = list(active)
    if active:
        predicate += f" OR (status IN ({_list(active)}) AND claim_token IS NULL)"
    return predicate


def _claimable(alias: str, starts: str, errors: str, active: str) -> str:
    """A task a claim may take now, other than a queued one."""
    t = alias
    return (f"({t}.status IN ({starts})"
            f" OR ({t}.status IN ({errors}) AND {t}.retry_at <= p_now)"
            f" OR ({t}.status IN ({active}) AND {t}.claim_token IS NULL))")


def _head(channel: str, other: str, *, seen: str = "") -> str:
    """The channel's best runnable task: two ordered probes, no sort of the table. No row lock:
    claimers of a channel are serialised by its row, and the UPDATE re-checks the task."""
    branch = ("(SELECT t.id, t.status, t.failed_stage, t.priority, t.created_at FROM tasks t"
              " WHERE t.channel_id = {c} AND {cond}"
              " ORDER BY t.priority, t.created_at, t.id LIMIT 1)")
    conds = ["t.status = 'queued'", other]
    branches = "\n        UNION ALL ".join(branch.format(c=channel, cond=c) for c in conds)
    return (f"SELECT h.id, h.status, h.failed_stage, h.priority, h.created_at{seen}"
            f" FROM (\n        {branches}\n      ) h ORDER BY h.priority, h.created_at, h.id"
            " LIMIT 1")


def _unheld(channel: str, active: str) -> str:
    """The channel's best handed-back stage: all a claim may take at the channel's cap."""
    return ("SELECT t.id, t.status, t.failed_stage FROM tasks t"
            f" WHERE t.channel_id = {channel} AND t.status IN ({active})"
            " AND t.claim_token IS NULL ORDER BY t.priority, t.created_at, t.id LIMIT 1")


def _target_case(targets: Targets) -> str:
    """``CASE`` over the head's status (and failed stage, and ``p_start``) rendering the claim
    targets; a status the table does not list yields NULL (not claimable)."""
    statuses = list(dict.fromkeys(status for status, _, _ in targets))
    whens = []
    for status in statuses:
        whens.append(f"          WHEN '{status}' THEN {_one_status(status, targets)}")
    return "CASE head_status::text\n" + "\n".join(whens) + "\n        END::taskstatus"


def _one_status(status: str, targets: Targets) -> str:
    def by_start(failed: str | None) -> str:
        yes, no = targets[(status, failed, True)], targets[(status, failed, False)]
        return f"'{yes}'" if yes == no else \
            f"(CASE WHEN p_start THEN '{yes}' ELSE '{no}' END)"

    failed = [f for s, f, _ in targets if s == status and f is not None]
    default = by_start(None)
    named = {f: by_start(f) for f in dict.fromkeys(failed)}
    named = {f: value for f, value in named.items() if value != default}
    if not named:
        return default
    cases = " ".join(f"WHEN '{f}' THEN {value}" for f, value in named.items())
    return f"(CASE head_failed {cases} ELSE {default} END)"


def render(targets: Targets, *, starts: Iterable[str], active: Iterable[str],
           errors: Iterable[str]) -> str:
    """The function, from frozen lifecycle data: ``targets`` (see ``Targets``), the runnable
    states other than queued and errors (``starts``), the active states and the error states."""
    start_list, error_list, active_list = _list(starts), _list(errors), _list(active)
    other = _claimable("t", start_list, error_list, active_list)
    return f"""CREATE FUNCTION {FUNCTION}(
  p_worker text, p_lease_s double precision, p_now timestamptz, p_task uuid DEFAULT NULL,
  p_start boolean DEFAULT false)
RETURNS TABLE (task_id uuid, from_status taskstatus, to_status taskstatus, claim_token uuid,
               attempt integer, run integer)
LANGUAGE plpgsql AS $$
DECLARE
  cand record;
  passed uuid[] := '{{}}';
  at_cap boolean;
  head_id uuid;
  head_status taskstatus;
  head_failed text;
  mid taskstatus;
  target taskstatus;
  token uuid;
BEGIN
  LOOP
    IF p_task IS NULL THEN
      -- The best channel whose row no other claimer holds, locked. The re-check of the locked
      -- row passes it over when its turn moved since the ranking's snapshot.
      SELECT c.id AS channel, c.max_concurrent, best.id, best.status, best.failed_stage
        INTO cand
      FROM channels c
      CROSS JOIN LATERAL ({_head('c.id', other, seen=', c.turn AS seen_turn')}) best
      WHERE c.is_active AND c.id <> ALL (passed) AND c.turn IS NOT DISTINCT FROM best.seen_turn
      ORDER BY best.priority, c.turn NULLS FIRST, best.created_at, c.id
      LIMIT 1
      FOR NO KEY UPDATE OF c SKIP LOCKED;
    ELSE
      -- One task carried into its next stage: wait for its channel's lock (no turn taken).
      SELECT c.id AS channel, c.max_concurrent, t.id, t.status, t.failed_stage INTO cand
      FROM tasks t JOIN channels c ON c.id = t.channel_id
      WHERE t.id = p_task AND c.is_active AND c.id <> ALL (passed)
        AND (t.status = 'queued' OR {other})
      FOR NO KEY UPDATE OF c;
    END IF;
    EXIT WHEN NOT FOUND;
    passed := passed || cand.channel;
    -- A new statement after the lock: sees every claim committed by earlier lock holders.
    at_cap := cand.max_concurrent IS NOT NULL AND cand.max_concurrent <= (
      SELECT count(*) FROM tasks WHERE channel_id = cand.channel AND status IN ({active_list}));
    head_id := cand.id;
    head_status := cand.status;
    head_failed := cand.failed_stage;
    FOR pass IN 1..2 LOOP
      IF pass = 2 OR (at_cap AND head_status NOT IN ({active_list})) THEN
        -- The ranked task was taken since the ranking, or the channel is at its cap, where
        -- only a handed-back stage (which keeps its slot) can be taken: the head now, under
        -- the lock.
        EXIT WHEN p_task IS NOT NULL;
        IF at_cap THEN
          SELECT h.id, h.status, h.failed_stage INTO head_id, head_status, head_failed
            FROM ({_unheld('cand.channel', active_list)}) h;
        ELSE
          SELECT h.id, h.status, h.failed_stage INTO head_id, head_status, head_failed
            FROM ({_head('cand.channel', other)}) h;
        END IF;
        EXIT WHEN NOT FOUND;
      END IF;
      target := {_target_case(targets)};
      EXIT WHEN target IS NULL;
      token := gen_random_uuid();
      UPDATE tasks t SET status = target, claimed_by = p_worker, claimed_at = p_now,
          claim_token = token, lease_expires_at = p_now + make_interval(secs => p_lease_s),
          retry_at = NULL, failed_stage = NULL,
          attempts = CASE WHEN target = 'claimed' THEN t.attempts ELSE t.attempts + 1 END,
          stage_runs = CASE WHEN target = 'claimed' THEN t.stage_runs ELSE t.stage_runs + 1 END
        WHERE t.id = head_id AND t.status = head_status AND (t.status = 'queued' OR {other})
        RETURNING t.attempts, t.stage_runs INTO attempt, run;
      CONTINUE WHEN NOT FOUND;
      -- Both transitions of a claim that starts its stage; a handed-back stage taken over is
      -- recorded with from = to. A pick-up takes the channel's next turn.
      mid := CASE WHEN head_status = 'queued' THEN 'claimed'::taskstatus ELSE target END;
      WITH turn AS (
          UPDATE channels SET turn = nextval('{SEQUENCE}')
          WHERE id = cand.channel AND p_task IS NULL)
      INSERT INTO task_events (task_id, from_status, to_status, actor, note, created_at)
        SELECT head_id, e.src, e.dst, p_worker, e.note, p_now
        FROM (VALUES (head_status, mid, CASE WHEN head_status IN ({active_list})
                                             THEN 'claim: taken over' ELSE 'claim' END, 1),
                     (mid, target, NULL, 2)) e (src, dst, note, n)
        WHERE e.n = 1 OR e.src <> e.dst;
      task_id := head_id; from_status := head_status; to_status := target;
      claim_token := token;
      RETURN NEXT;
      RETURN;
    END LOOP;
  END LOOP;
END
$$"""


def drop() -> str:
    return f"DROP FUNCTION IF EXISTS {FUNCTION}(text, double precision, timestamptz, uuid, boolean)"
