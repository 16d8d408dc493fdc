"""DDL of ``claim_task``: the claim, as one PostgreSQL function (one round trip per claim).

A claim is any move from a runnable state into an active state: ``queued``, an approved state,
an automatic step, an errored task whose retry is due, or a stage handed back by a stopping
worker (taken over in place). A *pick-up* is a claim of a task no worker held; the function
makes one like this:

1. **Rank** the channels with claimable work: by the priority of their best task, then fewest
   pick-ups so far (``channels.picks``), then least recently picked (``channels.turn``), then
   that task's age. Each channel costs two ordered index probes, ``ix_tasks_queued`` and
   ``ix_tasks_runnable`` (every other runnable row, few of them).
2. **Lock** the best channel no other claimer holds, in the ranking statement itself
   (``FOR NO KEY UPDATE OF c SKIP LOCKED``). Turns are strict, whatever the number of
   claimers:
   - pick-ups decide one at a time, under a session advisory lock (``TURNSTILE``) held only
     for the ranking and released as soon as the channel is locked, so each decision sees
     every earlier one: committed (its counts) or in flight (a locked row, passed over). The
     claim's work after that (capacity, the write, the commit) runs concurrently;
   - a channel picked by a claim that committed after the ranking's snapshot is caught when
     its row is locked (the locked row is its newest version; the head subquery carries the
     turn it was ranked by): the decision's block is undone, its lock with it, and the
     ranking runs again on a fresh snapshot. A stale ranking never wins;
   - a channel whose pick is still in flight cannot take its next one. When the best free
     channel is two picks ahead of one like that (both read in the ranking's snapshot), the
     decision waits outside the turnstile, locking nothing, for that pick to land (bounded)
     instead of putting it further behind;
   - the pick-up is numbered from ``task_events``' identity: the number becomes the id of
     its claim event and the channel's turn, so the history lists pick-ups in the order they
     were decided.
3. **Count** the channel's active tasks in a new statement, after the lock (never from an old
   snapshot). At its cap only a handed-back stage, which keeps its slot, can be taken.
4. **Write** the task with a guarded ``UPDATE … WHERE status = :runnable`` (re-checking it is
   still claimable), issuing a fresh claim token and lease and counting the attempt and run,
   then its ``task_events`` rows and the channel's turn in one more statement. If the ranked
   task was taken since the ranking, the channel's head is read again under the lock, once.
   A channel at capacity or with nothing it can start is passed over and the ranking runs
   again without it.

With ``p_task`` set it claims that task only: a worker carrying the task it just finished into
its next stage. That takes no turn and needs a capacity slot like any claim: on a channel with
a cap it waits for the channel's lock; on one without it locks nothing, so it never holds up
another channel's pick-up. With ``p_start`` a claimed ``queued`` task starts its first stage in
the same write (``queued → claimed → first stage``, both events recorded; the database guard
accepts the pair only as a claim writes it).

Where each runnable state goes is rendered from the pure rule ``app.moves.claim_target`` (the
migration passes the table frozen), so the function and the services cannot disagree about
where a retry resumes: an errored task resumes at ``tasks.failed_stage``, or at the earliest
stage of its error kind when the row names none. Nothing here reads ``task_events``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FUNCTION = "claim_task"
#: Numbers pick-ups: the sequence of ``task_events.id`` (an identity column).
EVENT_IDS = "task_events_id_seq"
#: The session advisory lock under which pick-ups decide, one at a time.
TURNSTILE = 7_245_001
#: SQLSTATE that undoes a decision (caught inside): its channel was picked since the ranking's
#: snapshot, or taking it would put it two picks ahead of a channel whose pick is in flight.
STALE = "PQ001"
#: How long a pick-up waits for a channel's pick in flight before going on without it, and
#: how often it looks.
OWED_WAIT_MS = 1000
OWED_POLL_S = 0.002
#: Bounds every lock wait inside the function (the turnstile, a channel, a task row): a claim
#: that cannot get one fails with ``lock_not_available`` rather than hanging.
LOCK_TIMEOUT = "30s"
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


def _waiting(t: str, starts: str, errors: str) -> str:
    """A task waiting for a claim that needs a capacity slot, other than a queued one."""
    return f"({t}.status IN ({starts}) OR ({t}.status IN ({errors}) AND {t}.retry_at <= p_now))"


def _unheld(t: str, active: str) -> str:
    """A stage handed back: active, no holder; it keeps its capacity slot."""
    return f"({t}.status IN ({active}) AND {t}.claim_token IS NULL)"


def _claimable(alias: str, starts: str, errors: str, active: str) -> str:
    """A task a claim may take now, other than a queued one."""
    return f"({_waiting(alias, starts, errors)} OR {_unheld(alias, active)})"


def _head(channel: str, other: str, *, seen: str = "", queued: str = "") -> str:
    """The channel's best runnable task: two ordered probes, no sort of the table. No row lock:
    claimers of a channel are serialised by its row, and the UPDATE re-checks the task.
    ``queued`` gates the queued probe (a condition and ``AND``)."""
    branch = ("(SELECT t.id, t.status, t.failed_stage, t.priority, t.created_at FROM tasks t"
              " WHERE t.channel_id = {c} AND {cond}"
              " ORDER BY t.priority, t.created_at, t.id LIMIT 1)")
    conds = [f"{queued}t.status = 'queued'", other]
    branches = "\n        UNION ALL ".join(branch.format(c=channel, cond=c) for c in conds)
    return (f"SELECT h.id, h.status, h.failed_stage, h.priority, h.created_at{seen}"
            f" FROM (\n        {branches}\n      ) h ORDER BY h.priority, h.created_at, h.id"
            " LIMIT 1")


def _decide(starts: str, errors: str, active: str) -> str:
    """The pick-up's ranking: channels with claimable work by the priority of their best task,
    then fewest pick-ups, then least recently picked, then the task's age; the best one no
    other claimer holds is locked. A channel at its cap (in this snapshot) offers only a stage
    handed back. It also returns, per priority, the fewest pick-ups of any channel
    (``floor``), the most (``top``) and the channel with the fewest (``lowest``)."""
    gated = (f"((NOT cap.full AND {_waiting('t', starts, errors)})"
             f" OR {_unheld('t', active)})")
    head = _head("c0.id", gated, seen=", c0.turn AS seen_turn", queued="NOT cap.full AND ")
    return f"""SELECT r.*, c.turn AS now_turn INTO cand
          FROM (
            SELECT c0.id AS channel, c0.max_concurrent, c0.picks, best.*,
                   min(c0.picks) OVER w AS floor, max(c0.picks) OVER w AS top,
                   first_value(c0.id) OVER (w ORDER BY c0.picks, c0.turn NULLS FIRST, c0.id)
                     AS lowest,
                   first_value(c0.turn) OVER (w ORDER BY c0.picks, c0.turn NULLS FIRST, c0.id)
                     AS lowest_turn
            FROM channels c0
            CROSS JOIN LATERAL (SELECT CASE WHEN c0.max_concurrent IS NULL THEN false
                                       ELSE c0.max_concurrent <= (
                                         SELECT count(*) FROM tasks a WHERE a.channel_id = c0.id
                                           AND a.status IN ({active})) END AS full) cap
            CROSS JOIN LATERAL ({head}) best
            WHERE c0.is_active AND c0.id <> ALL (passed)
            WINDOW w AS (PARTITION BY best.priority)
          ) r
          JOIN channels c ON c.id = r.channel
          ORDER BY r.priority, r.picks, r.seen_turn NULLS FIRST, r.created_at, r.channel
          LIMIT 1
          FOR NO KEY UPDATE OF c SKIP LOCKED;"""


def _unheld_head(channel: str, active: str) -> str:
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
LANGUAGE plpgsql SET lock_timeout = '{LOCK_TIMEOUT}' AS $$
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
  ticket bigint;
  found_one boolean;
  owed uuid;
  owed_turn bigint;
  deadline timestamptz;
  top_picks bigint;
  waited uuid[] := '{{}}';
  turnstile boolean;
BEGIN
  LOOP
    ticket := NULL;
    IF p_task IS NULL THEN
      -- Pick-ups decide one at a time (see the module's documentation). The lock is the
      -- session's: it is taken inside the block, so an error or a cancellation at any point
      -- after it releases it too; and the function's lock_timeout bounds every wait.
      LOOP
        owed := NULL;
        turnstile := false;
        BEGIN
          PERFORM pg_advisory_lock({TURNSTILE});
          turnstile := true;
          {_decide(start_list, error_list, active_list)}
          found_one := FOUND;
          IF found_one AND cand.now_turn IS DISTINCT FROM cand.seen_turn THEN
            -- Picked by a claim that committed after the ranking's snapshot: undo this block
            -- (its lock too) and rank again on a fresh snapshot.
            RAISE EXCEPTION USING ERRCODE = '{STALE}';
          END IF;
          IF found_one AND cand.picks >= cand.floor + 2 AND cand.lowest <> ALL (waited) THEN
            -- The channel furthest behind is locked: its pick is still in flight. Taking this
            -- one would put it two picks ahead; wait for that pick to land instead.
            owed := cand.lowest;
            owed_turn := cand.lowest_turn;
            RAISE EXCEPTION USING ERRCODE = '{STALE}';
          END IF;
          at_cap := false;
          IF found_one AND cand.max_concurrent IS NOT NULL THEN
            -- Counted after the lock and before the pick is numbered, so that in the history
            -- every stage the count saw end is recorded before this claim.
            at_cap := cand.max_concurrent <= (SELECT count(*) FROM tasks
              WHERE channel_id = cand.channel AND status IN ({active_list}));
            IF at_cap AND cand.status NOT IN ({active_list})
                AND NOT EXISTS ({_unheld_head('cand.channel', active_list)}) THEN
              -- Full, with no stage handed back to take over: undo the lock, go on without it.
              passed := passed || cand.channel;
              RAISE EXCEPTION USING ERRCODE = '{STALE}';
            END IF;
          END IF;
          IF found_one THEN
            ticket := nextval('{EVENT_IDS}');
            top_picks := cand.top;
          END IF;
          PERFORM pg_advisory_unlock({TURNSTILE});
          EXIT;
        EXCEPTION
          WHEN SQLSTATE '{STALE}' THEN
            PERFORM pg_advisory_unlock({TURNSTILE});
          WHEN query_canceled OR others THEN
            IF turnstile THEN
              PERFORM pg_advisory_unlock({TURNSTILE});
            END IF;
            RAISE;
        END;
        IF owed IS NOT NULL THEN
          -- Outside the turnstile, for a bounded time, locking nothing (a lock, even for a
          -- moment, would read as a pick in flight): watch for that pick to land.
          waited := waited || owed;
          deadline := clock_timestamp() + make_interval(secs => {OWED_WAIT_MS / 1000});
          LOOP
            EXIT WHEN clock_timestamp() > deadline OR (
              SELECT o.turn FROM channels o WHERE o.id = owed) IS DISTINCT FROM owed_turn;
            PERFORM pg_sleep({OWED_POLL_S});
          END LOOP;
        END IF;
      END LOOP;
      EXIT WHEN NOT found_one;
    ELSE
      -- One task carried into its next stage (no turn taken). Only a channel with a cap is
      -- locked, for its count; on one without, no pick-up is held up.
      SELECT c.id AS channel, c.max_concurrent, t.id, t.status, t.failed_stage INTO cand
      FROM tasks t JOIN channels c ON c.id = t.channel_id
      WHERE t.id = p_task AND c.is_active AND c.id <> ALL (passed)
        AND (t.status = 'queued' OR {other});
      EXIT WHEN NOT FOUND;
      IF cand.max_concurrent IS NOT NULL THEN
        PERFORM 1 FROM channels c WHERE c.id = cand.channel FOR NO KEY UPDATE;
      END IF;
      -- A new statement after the lock: sees every claim committed by earlier lock holders.
      at_cap := false;
      IF cand.max_concurrent IS NOT NULL THEN
        at_cap := cand.max_concurrent <= (SELECT count(*) FROM tasks
          WHERE channel_id = cand.channel AND status IN ({active_list}));
      END IF;
    END IF;
    passed := passed || cand.channel;
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
            FROM ({_unheld_head('cand.channel', active_list)}) h;
        ELSE
          SELECT h.id, h.status, h.failed_stage INTO head_id, head_status, head_failed
            FROM ({_head('cand.channel', other)}) h;
        END IF;
        EXIT WHEN NOT FOUND;
      END IF;
      target := {_target_case(targets)};
      EXIT WHEN target IS NULL;
      token := gen_random_uuid();
      UPDATE tasks t SET status = target, claimed_by = p_worker, claimed_at = clock_timestamp(),
          claim_token = token, lease_expires_at = p_now + make_interval(secs => p_lease_s),
          retry_at = NULL, failed_stage = NULL,
          attempts = CASE WHEN target = 'claimed' THEN t.attempts ELSE t.attempts + 1 END,
          stage_runs = CASE WHEN target = 'claimed' THEN t.stage_runs ELSE t.stage_runs + 1 END
        WHERE t.id = head_id AND t.status = head_status AND (t.status = 'queued' OR {other})
        RETURNING t.attempts, t.stage_runs INTO attempt, run;
      CONTINUE WHEN NOT FOUND;
      -- Both transitions of a claim that starts its stage; a handed-back stage taken over is
      -- recorded with from = to. A pick-up's event carries its number, which becomes the
      -- channel's turn.
      mid := CASE WHEN head_status = 'queued' THEN 'claimed'::taskstatus ELSE target END;
      WITH turn AS (
          UPDATE channels SET turn = ticket, picks = greatest(picks + 1, top_picks - 1)
          WHERE id = cand.channel AND ticket IS NOT NULL)
      INSERT INTO task_events (id, task_id, from_status, to_status, actor, note, created_at)
        SELECT CASE WHEN e.n = 1 THEN coalesce(ticket, nextval('{EVENT_IDS}'))
                    ELSE nextval('{EVENT_IDS}') END,
               head_id, e.src, e.dst, p_worker, e.note, clock_timestamp()
        FROM (VALUES (head_status, mid, CASE WHEN head_status IN ({active_list})
                                             THEN 'claim: taken over' ELSE 'claim' END, 1),
                     (mid, target, NULL, 2)) e (src, dst, note, n)
        WHERE e.n = 1 OR e.src <> e.dst
        ORDER BY e.n;
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
