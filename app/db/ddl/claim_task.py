"""DDL of the claim: ``pick_channel`` numbers the next pick-up, ``claim_task`` takes a task,
``claim_next`` does both for a worker.

A claim is any move from a runnable state into an active state: ``queued``, an approved state,
an automatic step, an errored task whose retry is due, or a stage handed back by a stopping
worker (taken over in place). A *pick-up* is a claim of a task no worker held. It is made in
two steps, so that turns are strict without holding claimers back:

1. **``pick_channel``** decides which channel's turn it is. It reads the channels with
   claimable work (two ordered index probes per channel: ``ix_tasks_queued`` and
   ``ix_tasks_runnable``; a channel at its cap, in that snapshot, offers only a stage handed
   back) in turn order: by the priority of their best task, then fewest pick-ups so far
   (``channels.picks``), then least recently picked (``channels.turn``), then that task's
   age. It takes the first channel whose pick-ups do not exceed the fewest of the others at
   its priority (its *bound*), locking the channel's row with that condition
   (``FOR NO KEY UPDATE SKIP LOCKED``): the lock and the count are checked in one statement
   against the committed row, so a turn taken since the read is never taken twice; it then
   counts the pick-up on the row and numbers it from ``task_events``' identity (the number
   becomes the id of its claim event and the channel's turn). Pick-ups of different channels
   decide in parallel, each holding only its own channel's row, until its commit:
   - a channel whose row another pick holds is passed over only for a channel level with it
     (same priority, as few pick-ups); otherwise the pick waits for that row (up to
     ``LOCK_TIMEOUT``, as a capacity check waits), so no channel gets ahead of one whose pick
     is in flight, however slow;
   - a channel alone with work at its priority takes no turn from anyone: its pick-ups are
     neither counted nor locked, so they run in parallel (a late-comer at that priority is
     raised to one below the most pick-ups there);
   - called on its own (``p_commit``, the workers' hot path) the pick commits
     asynchronously; inside a caller's transaction (the service layer) it never waits, and
     the rows it locked stay locked until the caller ends.
2. **``claim_task``** takes that channel's best task no other claim holds
   (``FOR UPDATE SKIP LOCKED``: several pick-ups of one channel may be in flight at once),
   with a guarded ``UPDATE … WHERE status = :runnable``, a fresh claim token and lease, the
   attempt and run counted, and the ``task_events`` rows. On a channel with a cap it first
   locks the channel's row and counts its active tasks in a new statement (never a count from
   an old snapshot); at the cap only a handed-back stage, which keeps its slot, can be taken,
   and the claim event then gets its id after the count, so the history replays capacity in
   order. A pick-up that finds nothing to take (the channel emptied or filled meanwhile) gives
   its count back (while it is still the channel's last) and returns nothing; the caller
   picks again without that channel.

Workers make a pick-up in one round trip, ``CALL claim_next(…)``: a procedure that commits the
pick (asynchronously), then claims in a transaction of its own. With ``p_task`` set,
``claim_task`` claims that task only: a worker carrying the task it just
finished into its next stage. That takes no turn and needs a capacity slot like any claim.
With neither ``p_task`` nor ``p_channel`` it makes a whole pick-up in the caller's
transaction (``pick_channel`` then the claim). With ``p_start`` a claimed ``queued`` task
starts its first stage in the same write (``queued → claimed → first stage``, both events
recorded; the database guard accepts the pair only as a claim writes it).

Where each runnable state goes is rendered from the pure rule ``app.moves.claim_target`` (the
migration passes the table frozen), so the function and the services cannot disagree about
where a retry resumes: an errored task resumes at ``tasks.failed_stage``, or at the earliest
stage of its error kind when the row names none. Nothing here reads ``task_events``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FUNCTION = "claim_task"
PICK = "pick_channel"
#: The workers' pick-up: both steps in one call, each committed.
NEXT = "claim_next"
#: Numbers pick-ups: the sequence of ``task_events.id`` (an identity column).
EVENT_IDS = "task_events_id_seq"
#: Bounds every lock wait inside the functions (a channel, a task row): a claim that cannot
#: get one fails with ``lock_not_available`` rather than hanging.
LOCK_TIMEOUT = "30s"
#: Readings of the turns a pick makes at most (each after other picks moved them).
MAX_PASSES = 100
#: Every statement inside is planned once per connection: its plan is the same index probes
#: whatever the parameters, and a plan made for each call's values (PL/pgSQL's choice after
#: fresh statistics, at times) cost more than the claim itself (0.5 to 0.9 ms a statement).
PLANS = "force_generic_plan"
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


def _ranking(starts: str, errors: str, active: str) -> str:
    """The channels with claimable work, each with its best task's priority and age. A channel
    at its cap (in this snapshot) offers only a stage handed back."""
    gated = (f"((NOT cap.full AND {_waiting('t', starts, errors)})"
             f" OR {_unheld('t', active)})")
    head = _head("c.id", gated, queued="NOT cap.full AND ")
    return f"""SELECT c.id, best.priority, best.created_at, c.picks, c.turn
        FROM channels c
        CROSS JOIN LATERAL (SELECT CASE WHEN c.max_concurrent IS NULL THEN false
                                   ELSE c.max_concurrent <= (
                                     SELECT count(*) FROM tasks a WHERE a.channel_id = c.id
                                       AND a.status IN ({active})) END AS full) cap
        CROSS JOIN LATERAL ({head}) best
        WHERE c.is_active AND c.id <> ALL (p_skip)"""


def _queued_ranking(active: str) -> str:
    """``_ranking`` when no task is in ``ix_tasks_runnable``: queued heads only (one probe a
    channel), channels at their cap left out."""
    return f"""SELECT c.id, best.priority, best.created_at, c.picks, c.turn
        FROM channels c
        CROSS JOIN LATERAL (SELECT t.priority, t.created_at FROM tasks t
          WHERE t.channel_id = c.id AND t.status = 'queued'
          ORDER BY t.priority, t.created_at, t.id LIMIT 1) best
        WHERE c.is_active AND c.id <> ALL (p_skip)
          AND (c.max_concurrent IS NULL OR c.max_concurrent > (
            SELECT count(*) FROM tasks a WHERE a.channel_id = c.id AND a.status IN ({active})))"""


#: A channel with claimable work, as a pick reads it.
CANDIDATE = "pick_candidate"
CANDIDATE_TYPE = (f"CREATE TYPE {CANDIDATE} AS"
                  " (id uuid, priority prioritylevel, created_at timestamptz, picks bigint)")
#: Turn order: by the priority of the best task, then fewest pick-ups, then least recently
#: picked, then that task's age.
_TURN_ORDER = "priority, picks, turn NULLS FIRST, created_at, id"
#: The candidates again, with the pick-ups of now (their heads as first read), but for those
#: a caller's transaction left out (``passed``: held by another transaction).
_AGAIN = """SELECT c.id, x.priority, x.created_at, c.picks, c.turn
        FROM unnest(cands) AS x JOIN channels c ON c.id = x.id WHERE x.id <> ALL (passed)"""


def _in_turn_order(source: str) -> str:
    """``source``'s channels into ``cands``, in turn order; when the first is alone at its
    priority it is the pick at once (``channel``, numbered in ``ticket``): no turn to take
    from anyone, decided in the one statement."""
    key = ", ".join(f"s.{part}" for part in _TURN_ORDER.split(", "))
    alone = ("cardinality(r.cands) = 1 OR (r.cands[2]).priority <> (r.cands[1]).priority")
    return f"""SELECT r.cands, CASE WHEN {alone} THEN (r.cands[1]).id END,
             CASE WHEN {alone} THEN nextval('{EVENT_IDS}') END
      INTO cands, channel, ticket
      FROM (SELECT array_agg(ROW(s.id, s.priority, s.created_at, s.picks)::{CANDIDATE}
                             ORDER BY {key}) AS cands
            FROM ({source}) s) r;"""


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


def render_pick(*, starts: Iterable[str], active: Iterable[str], errors: Iterable[str]) -> str:
    """``pick_channel``, from frozen lifecycle data."""
    starts, active, errors = list(starts), list(active), list(errors)
    start_list, error_list, active_list = _list(starts), _list(errors), _list(active)
    return f"""CREATE FUNCTION {PICK}(
  p_now timestamptz, p_commit boolean DEFAULT false, p_skip uuid[] DEFAULT '{{}}')
RETURNS TABLE (channel uuid, ticket bigint)
LANGUAGE plpgsql SET lock_timeout = '{LOCK_TIMEOUT}' SET plan_cache_mode = {PLANS} AS $$
DECLARE
  cands {CANDIDATE}[];
  cand {CANDIDATE};
  n integer;
  first integer;      -- the first candidate at cand's priority (the fewest pick-ups)
  bound bigint;       -- the fewest pick-ups of the others at cand's priority (null: none)
  top bigint;         -- the most pick-ups at cand's priority
  passed uuid[] := '{{}}';
  picked bigint;
  w integer;
  moved boolean;
BEGIN
  -- Tasks other than queued ones wait for a claim rarely (the index of them is mostly empty):
  -- without any, a channel's best task is its queued head.
  IF EXISTS (SELECT 1 FROM tasks t WHERE {runnable_predicate(starts, errors, active)}) THEN
    {_in_turn_order(_ranking(start_list, error_list, active_list))}
  ELSE
    {_in_turn_order(_queued_ranking(active_list))}
  END IF;
  IF ticket IS NOT NULL THEN
    RETURN NEXT;        -- alone at its priority (the common case: one statement)
    RETURN;
  END IF;
  FOR pass IN 1 .. {MAX_PASSES} LOOP
    n := coalesce(array_length(cands, 1), 0);
    w := NULL;
    moved := false;
    first := 1;
    FOR i IN 1 .. n LOOP
      cand := cands[i];
      IF cand.priority <> cands[first].priority THEN
        first := i;
      END IF;
      -- Past a channel another pick holds, only a channel level with it (same priority, as
      -- few pick-ups): the held one gets its pick first.
      EXIT WHEN w IS NOT NULL AND (cand.priority <> cands[w].priority
                                   OR cand.picks > cands[w].picks);
      bound := CASE WHEN i > first THEN cands[first].picks
                    WHEN i < n AND cands[i + 1].priority = cand.priority
                      THEN cands[i + 1].picks END;
      channel := cand.id;
      IF bound IS NULL THEN
        -- Alone at its priority (behind others' picks in flight): no turn to take from anyone,
        -- so nothing to count or lock; a late-comer is raised to it later.
        ticket := nextval('{EVENT_IDS}');
        RETURN NEXT;
        RETURN;
      END IF;
      top := (SELECT max(x.picks) FROM unnest(cands[i:n]) x WHERE x.priority = cand.priority);
      -- Its row, while it is still its turn (a row whose turn has passed is not locked).
      PERFORM 1 FROM channels c WHERE c.id = cand.id AND c.picks <= bound
        FOR NO KEY UPDATE SKIP LOCKED;
      IF FOUND THEN
        IF p_commit THEN
          PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        ticket := nextval('{EVENT_IDS}');
        UPDATE channels SET picks = greatest(picks + 1, top - 1), turn = ticket
          WHERE id = channel;
        RETURN NEXT;
        RETURN;
      END IF;
      SELECT c.picks INTO picked FROM channels c WHERE c.id = cand.id;
      IF picked > bound THEN
        moved := true;    -- picked since it was read: others first
      ELSIF NOT p_commit THEN
        -- Another transaction's. A caller's transaction never waits (it may hold rows of its
        -- own to its end): it leaves that channel out and reads the turns again.
        passed := passed || cand.id;
        moved := true;
      ELSIF FOUND AND w IS NULL THEN
        w := i;           -- another pick's, in flight
      END IF;
    END LOOP;
    channel := NULL;
    IF w IS NOT NULL THEN
      -- Every channel it may take is another pick's: wait for the first (as long as any lock
      -- wait here, LOCK_TIMEOUT), and take it if that leaves it no further ahead than the
      -- others. Turns stay strict however slow that pick is. Never while holding a row: a lock
      -- whose turn moved as it was taken stays held, and a pick waiting on it would wait in
      -- turn. Then it ends with no channel, and the caller commits and picks again.
      IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RETURN NEXT;
        RETURN;
      END IF;
      cand := cands[w];
      bound := (SELECT min(x.picks) FROM unnest(cands) x
                WHERE x.priority = cand.priority AND x.id <> cand.id);
      top := (SELECT max(x.picks) FROM unnest(cands) x WHERE x.priority = cand.priority);
      UPDATE channels SET picks = greatest(picks + 1, top - 1), turn = nextval('{EVENT_IDS}')
        WHERE id = cand.id AND picks <= bound
        RETURNING id, turn INTO channel, ticket;
      IF channel IS NOT NULL THEN
        IF p_commit THEN
          PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        RETURN NEXT;
        RETURN;
      END IF;
    ELSIF NOT moved THEN
      EXIT;
    END IF;
    {_in_turn_order(_AGAIN)}
    IF ticket IS NOT NULL THEN
      RETURN NEXT;
      RETURN;
    END IF;
  END LOOP;
END
$$"""


def render(targets: Targets, *, starts: Iterable[str], active: Iterable[str],
           errors: Iterable[str]) -> str:
    """``claim_task``, from frozen lifecycle data: ``targets`` (see ``Targets``), the runnable
    states other than queued and errors (``starts``), the active states and the error states."""
    start_list, error_list, active_list = _list(starts), _list(errors), _list(active)
    other = _claimable("t", start_list, error_list, active_list)
    return f"""CREATE FUNCTION {FUNCTION}(
  p_worker text, p_lease_s double precision, p_now timestamptz, p_task uuid DEFAULT NULL,
  p_start boolean DEFAULT false, p_channel uuid DEFAULT NULL, p_ticket bigint DEFAULT NULL)
RETURNS TABLE (task_id uuid, from_status taskstatus, to_status taskstatus, claim_token uuid,
               attempt integer, run integer)
LANGUAGE plpgsql SET lock_timeout = '{LOCK_TIMEOUT}' SET plan_cache_mode = {PLANS} AS $$
DECLARE
  chan record;
  skip uuid[] := '{{}}';
  ch uuid := p_channel;
  tk bigint := p_ticket;
  at_cap boolean;
  head_id uuid;
  head_status taskstatus;
  head_failed text;
  best_other record;
  mid taskstatus;
  target taskstatus;
  token uuid;
BEGIN
  FOR attempt_no IN 1..8 LOOP
    IF p_task IS NULL AND p_channel IS NULL THEN
      -- A whole pick-up in the caller's transaction.
      SELECT p.channel, p.ticket INTO ch, tk FROM {PICK}(p_now, false, skip) p;
      EXIT WHEN NOT FOUND OR ch IS NULL;
    END IF;
    IF p_task IS NOT NULL THEN
      SELECT c.id, c.max_concurrent, t.id AS task, t.status, t.failed_stage INTO chan
        FROM tasks t JOIN channels c ON c.id = t.channel_id
        WHERE t.id = p_task AND c.is_active AND (t.status = 'queued' OR {other});
    ELSE
      SELECT c.id, c.max_concurrent, NULL::uuid AS task INTO chan
        FROM channels c WHERE c.id = ch AND c.is_active;
    END IF;
    IF FOUND THEN
      at_cap := false;
      IF chan.max_concurrent IS NOT NULL THEN
        -- Capacity is serialised per channel: its row, then a count in a new statement.
        PERFORM 1 FROM channels c WHERE c.id = chan.id FOR NO KEY UPDATE;
        at_cap := chan.max_concurrent <= (SELECT count(*) FROM tasks
          WHERE channel_id = chan.id AND status IN ({active_list}));
      END IF;
      head_id := NULL;
      IF p_task IS NOT NULL THEN
        IF NOT at_cap OR chan.status IN ({active_list}) THEN
          SELECT t.id, t.status, t.failed_stage INTO head_id, head_status, head_failed
            FROM tasks t WHERE t.id = p_task AND (t.status = 'queued' OR {other})
            FOR UPDATE;
        END IF;
      ELSIF at_cap THEN
        SELECT h.id, h.status, h.failed_stage INTO head_id, head_status, head_failed
          FROM ({_unheld_head('chan.id', active_list)} FOR UPDATE SKIP LOCKED) h;
      ELSE
        -- The channel's best task no other claim holds: the rare rows of the other runnable
        -- states first, then the queued head.
        SELECT t.id, t.status, t.failed_stage, t.priority, t.created_at INTO best_other
          FROM tasks t WHERE t.channel_id = chan.id AND {other}
          ORDER BY t.priority, t.created_at, t.id LIMIT 1 FOR UPDATE SKIP LOCKED;
        SELECT t.id, t.status, t.failed_stage INTO head_id, head_status, head_failed
          FROM tasks t WHERE t.channel_id = chan.id AND t.status = 'queued'
            AND (best_other.id IS NULL OR (t.priority, t.created_at, t.id)
                 < (best_other.priority, best_other.created_at, best_other.id))
          ORDER BY t.priority, t.created_at, t.id LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF head_id IS NULL AND best_other.id IS NOT NULL THEN
          head_id := best_other.id;
          head_status := best_other.status;
          head_failed := best_other.failed_stage;
        END IF;
      END IF;
      IF head_id IS NOT NULL THEN
        target := {_target_case(targets)};
      END IF;
      IF head_id IS NOT NULL AND target IS NOT NULL THEN
        token := gen_random_uuid();
        UPDATE tasks t SET status = target, claimed_by = p_worker,
            claimed_at = clock_timestamp(), claim_token = token,
            lease_expires_at = p_now + make_interval(secs => p_lease_s),
            retry_at = NULL, failed_stage = NULL,
            attempts = CASE WHEN target = 'claimed' THEN t.attempts ELSE t.attempts + 1 END,
            stage_runs = CASE WHEN target = 'claimed' THEN t.stage_runs
                              ELSE t.stage_runs + 1 END
          WHERE t.id = head_id
          RETURNING t.attempts, t.stage_runs INTO attempt, run;
        -- Both transitions of a claim that starts its stage; a stage taken over is recorded
        -- with from = to. A pick-up's event carries its number, unless the channel has a cap:
        -- then its id comes after the count, for the history to replay capacity in order.
        mid := CASE WHEN head_status = 'queued' THEN 'claimed'::taskstatus ELSE target END;
        INSERT INTO task_events (id, task_id, from_status, to_status, actor, note, created_at)
          SELECT CASE WHEN e.n = 1 AND chan.max_concurrent IS NULL
                      THEN coalesce(tk, nextval('{EVENT_IDS}'))
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
      END IF;
    END IF;
    -- Nothing to take: a pick-up gives its count back; the caller (or the next round) picks
    -- again without this channel.
    IF tk IS NOT NULL THEN
      UPDATE channels SET picks = greatest(picks - 1, 0) WHERE id = ch AND turn = tk;
    END IF;
    EXIT WHEN p_task IS NOT NULL OR p_channel IS NOT NULL;
    skip := skip || ch;
  END LOOP;
END
$$"""


def render_next() -> str:
    """``claim_next``: the workers' pick-up in one round trip. A procedure, so that it can
    commit the pick (asynchronously, releasing its channel's row) before it claims the task, and
    the claim in its own transaction; called on its own (``CALL``, no transaction open)."""
    return f"""CREATE PROCEDURE {NEXT}(
  p_worker text, p_lease_s double precision, p_now timestamptz, p_start boolean,
  INOUT task_id uuid DEFAULT NULL, INOUT from_status taskstatus DEFAULT NULL,
  INOUT to_status taskstatus DEFAULT NULL, INOUT claim_token uuid DEFAULT NULL,
  INOUT attempt integer DEFAULT NULL, INOUT run integer DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  skip uuid[] := '{{}}';
  ch uuid;
  tk bigint;
  got record;
  retries integer := 0;
BEGIN
  LOOP
    SELECT p.channel, p.ticket INTO ch, tk FROM {PICK}(p_now, true, skip) p;
    EXIT WHEN NOT FOUND;
    IF ch IS NULL THEN
      COMMIT;       -- a row it held but did not take: let go, then pick again
      retries := retries + 1;
      EXIT WHEN retries > {MAX_PASSES};
      CONTINUE;
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
      COMMIT;       -- the pick counted: release its channel's row
    END IF;
    SELECT c.* INTO got FROM {FUNCTION}(p_worker, p_lease_s, p_now, NULL, p_start, ch, tk) c;
    IF FOUND THEN
      task_id := got.task_id; from_status := got.from_status; to_status := got.to_status;
      claim_token := got.claim_token; attempt := got.attempt; run := got.run;
      RETURN;
    END IF;
    -- Nothing to take there (its pick given back): pick again without that channel.
    COMMIT;
    skip := skip || ch;
  END LOOP;
END
$$"""


def drop() -> list[str]:
    """Drop the procedure, both functions and the candidates' type (the claim's old signature
    is ``claim_task_0005.drop``)."""
    return [f"DROP PROCEDURE IF EXISTS {NEXT}(text, double precision, timestamptz, boolean,"
            " uuid, taskstatus, taskstatus, uuid, integer, integer)",
            f"DROP FUNCTION IF EXISTS {FUNCTION}(text, double precision, timestamptz, uuid,"
            " boolean, uuid, bigint)",
            f"DROP FUNCTION IF EXISTS {PICK}(timestamptz, boolean, uuid[])",
            f"DROP TYPE IF EXISTS {CANDIDATE}"]
