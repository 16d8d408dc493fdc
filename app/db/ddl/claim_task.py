"""DDL of the claim: ``pick_channel`` numbers the next pick-up, ``claim_task`` takes a task,
``claim_next`` does both for a worker.

A claim is any move from a runnable state into an active state: ``queued``, an approved state,
an automatic step, an errored task whose retry is due, or a stage handed back by a stopping
worker (taken over in place). A *pick-up* is a claim of a task no worker held. It is made in
two steps, so that turns are strict without holding claimers back:

1. **``pick_channel``** decides which channel's turn it is. Pick-ups decide one at a time,
   under an advisory lock (the turnstile), over channels with claimable work: by the priority
   of their best task, then fewest pick-ups so far (``channels.picks``), then least recently
   picked (``channels.turn``), then that task's age (two ordered index probes per channel:
   ``ix_tasks_queued`` and ``ix_tasks_runnable``). A channel at its cap (in the ranking's
   snapshot) offers only a stage handed back. The decision counts the pick-up on the channel
   and numbers it from ``task_events``' identity (the number becomes the id of its claim
   event and the channel's turn). Called on its own (``p_commit``, the workers' hot path),
   the turnstile is a transaction lock held through the statement's own commit, an
   asynchronous one: the next decision sees this one, committed, so no ranking is ever
   stale and no channel waits on another's pick in flight. Inside a caller's transaction
   (the service layer) it is a session lock released at the end of the call.
   The decision also *reserves* the channel's best task for this pick-up
   (``channels.reserved``): the rankings after it pass that task over (a queued one: the
   reservations are read from the channel's row, no look-up, until the last of them
   expires), so two pick-ups of one channel in flight never reach for the same task, and a
   pick-up whose claim runs late (its process descheduled) still takes the task of its turn,
   under its own number. Without that, a later pick-up of the channel could take the task
   first, the late one would find nothing and give its turn back, and the channel's pick-up
   would land after another channel's next one. A reservation ends when its task's row is
   next written (the claim: the channel's next pick-up keeps only those still standing), or
   after ``RESERVE_S`` (a claimer killed between the two steps).
2. **``claim_task``** takes that reserved task,
   with a guarded ``UPDATE … WHERE status = :runnable``, a fresh claim token and lease, the
   attempt and run counted, and the ``task_events`` rows. It locks the task it was given as
   it reads it (its conditions checked on the row as locked). On a channel with a cap it then
   locks the channel's row and counts its active tasks in a new statement (never a count from
   an old snapshot). A worker's claim so locks its task before its channel; a pick-up in a
   caller's transaction already holds its channel's row when it claims, but the task it
   waits for is reserved to it, and a pick cannot reserve in a channel whose row another
   holds (it skips it). At the cap only a handed-back stage, which keeps its slot, can be taken,
   and the claim event then gets its id after the count, so the history replays capacity in
   order. A pick-up that finds nothing to take (its task held or taken by a worker carrying
   it, the channel deactivated or filled meanwhile) gives its count and its reservation back
   and returns nothing; the caller picks again without that channel.

Workers make a pick-up in one round trip, ``CALL claim_next(…)``: a procedure that commits the
pick (asynchronously), then claims in a transaction of its own. With ``p_task`` set and no
ticket, ``claim_task`` claims that task only: a worker carrying the task it just
finished into its next stage. That takes no turn and needs a capacity slot like any claim.
With neither ``p_task`` nor ``p_channel`` it makes a whole pick-up in the caller's
transaction (``pick_channel`` then the claim). With ``p_start`` a claimed ``queued`` task
starts its first stage in the same write (``queued → claimed → first stage``, both events
recorded; the database guard accepts the pair only as a claim writes it).

Where each runnable state goes is rendered from the pure rule ``app.moves.claim_target`` (the
migration passes the table frozen), so the function and the services cannot disagree about
where a retry resumes: an errored task resumes at ``tasks.failed_stage``, or at the earliest
stage of its error kind when the row names none. Nothing here reads ``task_events``.

**Quotas** (``quotas``: a stage or every stage, per channel or shared, a limit of starts in a
rolling window) are enforced here too. The ranking and the probes pass over work whose stage's
quota is spent or paused (``quota_blocks``, read from the buckets' rows once per call), so the
claim takes the next claimable task in fair order and a spent quota stalls nothing else. The
decision itself is serialised like the channel cap, never taken from a snapshot: ``quota_take``
locks the buckets the stage counts against (``quota_usage``, in a fixed order), checks when each
frees (``blocked_until``) and records this start, stamped with the clock after the locks; the
claim's events carry the same stamp, so the history replays every window. A bucket's record is
``quota_merge``'s: every start of its window up to ``EXACT_STARTS`` of them (exact), past that
the starts of one slice of the window together (never more starts let in than the limit; a slot
frees at most a slice late), so a record stays a few hundred bytes whatever the limit. A claim
that finds the quota spent after all takes nothing (a pick-up gives its turn back and picks again
without that channel). Every claim into an active state counts as a start of its stage, a
stage taken over included (it calls its provider again). A stage handed back with a time
(``retry_at``: a provider's rate limit) is not claimed before it.

A task on hold (``tasks.hold_since`` set by an operator) is never claimed, whatever its state:
every probe leaves it out, and so do both claim indexes, so a thousand held rows cost a claim
nothing. A hold that commits while a claim holds the row's lock is seen by the runner's next
heartbeat, which hands the stage back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FUNCTION = "claim_task"
PICK = "pick_channel"
#: Several pick-ups decided in one call, as many ``pick_channel`` calls would decide them.
PICK_MANY = "pick_channels"
#: The reserved queued tasks of a ``pick_up`` that need no lock but their own, claimed together.
RESERVED = "claim_reserved"
#: The workers' pick-up: both steps in one call, each committed.
NEXT = "claim_next"
#: Numbers pick-ups: the sequence of ``task_events.id`` (an identity column).
EVENT_IDS = "task_events_id_seq"
#: The advisory lock under which pick-ups decide, one at a time.
TURNSTILE = 7_245_001
#: Bounds every lock wait inside the function (the turnstile, a channel, a task row): a claim
#: that cannot get one fails with ``lock_not_available`` rather than hanging.
LOCK_TIMEOUT = "30s"
#: How long a pick-up's reservation of its task lasts at most (seconds): a claimer killed
#: between its pick and its claim delays that task by this much.
RESERVE_S = 10
#: Every statement inside is planned once per connection: its plan is the same index probes
#: whatever the parameters, and a plan made for each call's values (PL/pgSQL's choice after
#: fresh statistics, at times) cost more than the claim itself (0.5 to 0.9 ms a statement).
PLANS = "force_generic_plan"
#: The settings every claim and boundary function runs under: the bounded lock wait, the plans
#: kept, and no JIT. A kept plan whose estimated cost passes ``jit_above_cost`` (the ranking's,
#: once ``tasks`` holds some tens of thousands of rows) is compiled again at every execution:
#: 20 ms per pick-up where the pick-up itself takes 0.3 ms. Workers' own connections turn the
#: JIT off at start, but connections through PgBouncer cannot, so the functions do.
SETTINGS = f"SET lock_timeout = '{LOCK_TIMEOUT}' SET plan_cache_mode = {PLANS} SET jit = off"
#: The functions that read the queue a channel at a time, in the claim order (each channel's
#: first tasks by priority, then age), with their argument types. ``claim_task`` is not one of
#: them here: its callers hand it the task a pick reserved, which it takes by key, and a
#: setting of a function holds in the functions it calls (``quota_take``, whose lock of the
#: buckets in key order must sort the few it locks rather than walk every bucket's key).
QUEUE_READERS = (f"{PICK}(timestamptz, boolean, uuid[])",
                 f"{PICK_MANY}(timestamptz, integer, uuid[])")
#: What they run under besides ``SETTINGS``: no sort wherever a plan without one exists, so
#: a channel's first tasks always come from the claim indexes (``ix_tasks_queued``,
#: ``ix_tasks_runnable``), read in order and no further than needed. Statistics taken while
#: nothing was queued (every task published, a quiet hour) make any way of finding them look
#: as cheap as any other: a kept plan then read every queued task of every channel from
#: ``ix_tasks_status`` or ``ix_tasks_channel_id_status`` and sorted them, at every pick-up,
#: until the next ``ANALYZE`` (60,000 queued: 6,000 buffers a pick-up instead of 120). Sorts
#: nothing can avoid (the ranking across channels) are still made. A function re-created
#: loses its ``SET`` clauses: a revision that re-creates one of these applies
#: ``render_queue_order`` again.
QUEUE_ORDER = ("enable_sort", "off")


def render_queue_order(*, on: bool = True) -> list[str]:
    """Set ``QUEUE_ORDER`` on each of ``QUEUE_READERS`` (``on``), or reset it."""
    name, value = QUEUE_ORDER
    change = f"SET {name} = {value}" if on else f"RESET {name}"
    return [f"ALTER FUNCTION {reader} {change}" for reader in QUEUE_READERS]


#: The partial index of runnable tasks other than queued ones (see ``runnable_predicate``).
RUNNABLE_INDEX = "ix_tasks_runnable"
RUNNABLE_COLUMNS = ("channel_id", "priority", "created_at", "id")
#: A task on hold is never claimed (every claim probe carries this condition).
NOT_ON_HOLD = "hold_since IS NULL"
#: ``ix_tasks_queued``'s predicate: queued tasks a claim may take.
QUEUED_PREDICATE = f"status = 'queued' AND {NOT_ON_HOLD}"
#: Where a claim moves a task: ``(status, failed_stage or None, start) → target``.
Targets = Mapping[tuple[str, str | None, bool], str]
#: The stage a claim starts: ``task_stage(status, failed_stage)``.
TASK_STAGE = "task_stage"
#: The buckets spent or paused now, one row per stage they hold back: ``quota_blocks()``.
QUOTA_BLOCKS = "quota_blocks"
#: Recomputes a quota's buckets after its limit or window changed: ``quota_refresh(quota)``.
QUOTA_REFRESH = "quota_refresh"
#: Checks and records one start of a stage: ``quota_take(channel, stage)``.
QUOTA_TAKE = "quota_take"
#: Pauses a stage's quotas: ``quota_pause(channel, stage, seconds)``.
QUOTA_PAUSE = "quota_pause"
#: A bucket's record with one start more (or none: kept to what matters), and when it frees:
#: ``quota_merge(starts, counts, at, max_starts, window_s)``.
QUOTA_MERGE = "quota_merge"
#: Up to n starts at one time recorded in a bucket while it has room, as ``quota_merge`` records
#: each: ``quota_admit(starts, counts, blocked_until, paused_until, at, max_starts, window_s, n)``.
QUOTA_ADMIT = "quota_admit"
#: A bucket keeps this many starts each on its own (a quota of at most this many is exact) …
EXACT_STARTS = 64
#: … and past them, the starts of one slice of the window (this many slices) as one entry.
SLICES = 64
#: The bucket key of a shared quota (``quota_usage.channel_id``).
SHARED = "00000000-0000-0000-0000-000000000000"
#: A quota on every stage.
EVERY_STAGE = "*"


def _list(values: Iterable[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def runnable_predicate(starts: Iterable[str], errors: Iterable[str],
                       active: Iterable[str]) -> str:
    """``ix_tasks_runnable``'s predicate: tasks waiting in a runnable state other than queued,
    errored tasks with a retry scheduled (an exhausted one waits for an operator, unindexed) and
    stages handed back (active, no holder); none on hold. Rows pass through these states
    briefly, so the index stays small."""
    return _indexed(_list(starts), _list(errors), _list(active))


def _indexed(starts: str, errors: str, active: str, alias: str = "") -> str:
    """``runnable_predicate`` of quoted lists, on the columns of ``alias``. Every probe of the
    rows the index covers states it word for word beside its own conditions: the planner then
    proves at once that the small ``ix_tasks_runnable`` serves the probe, in its order (no
    sort), whatever the statistics. A plan made without it, on a table that was empty when the
    connection first planned the function (a new database: plans are kept for the connection's
    life), read every row of each channel through ``ix_tasks_channel_id_status``, the published
    history included."""
    c = f"{alias}." if alias else ""
    return (f"({c}status IN ({starts})"
            f" OR ({c}status IN ({errors}) AND {c}retry_at IS NOT NULL)"
            f" OR ({c}status IN ({active}) AND {c}claim_token IS NULL)) AND {c}{NOT_ON_HOLD}")


def active_count(channel: str, active: str, *, other_than: str = "") -> str:
    """How many of ``channel``'s tasks are in an active state (``active``: a quoted list),
    ``other_than`` a task left out: one count per state, each an equality probe of both columns
    of ``ix_tasks_channel_id_status``. A single ``status IN (…)`` let a plan made on an empty
    table probe the channel alone and filter the states, reading its whole history per count."""
    left_out = f" AND a.id <> {other_than}" if other_than else ""
    return ("(SELECT sum((SELECT count(*) FROM tasks a WHERE a.channel_id = "
            f"{channel} AND a.status = s.st{left_out})) FROM unnest(ARRAY[{active}]::taskstatus[])"
            " s (st))")


def _waiting(t: str, starts: str, errors: str) -> str:
    """A task waiting for a claim that needs a capacity slot, other than a queued one."""
    return f"({t}.status IN ({starts}) OR ({t}.status IN ({errors}) AND {t}.retry_at <= p_now))"


def _unheld(t: str, active: str) -> str:
    """A stage handed back: active, no holder, its time come if it was given one (a provider's
    rate limit); it keeps its capacity slot."""
    return (f"({t}.status IN ({active}) AND {t}.claim_token IS NULL"
            f" AND ({t}.retry_at IS NULL OR {t}.retry_at <= p_now))")


def _free(t: str, spent: str) -> str:
    """The task's next stage is not among ``spent`` (an array of stage names)."""
    return f"{TASK_STAGE}({t}.status, {t}.failed_stage) <> ALL ({spent})"


def _claimable(alias: str, starts: str, errors: str, active: str) -> str:
    """A task a claim may take now, other than a queued one."""
    return f"({_waiting(alias, starts, errors)} OR {_unheld(alias, active)})"


def _live(channel: str) -> str:
    """The reservations of ``channel`` (a ``channels`` alias) still standing: their task's row
    not written since (by its claim, or anything else) and not older than ``RESERVE_S``. One
    primary-key look-up each (a scalar subquery: never a join the planner could hash).
    Reservations are stamped with the clock, not the transaction's start: a pick-up's
    transaction may have begun long before its turn came (waiting at the turnstile)."""
    return (f"(SELECT coalesce(array_agg(u.r ORDER BY u.n), '{{}}'),"
            f" coalesce(array_agg(u.at ORDER BY u.n), '{{}}')"
            f" FROM unnest({channel}.reserved, {channel}.reserved_at) WITH ORDINALITY u (r, at, n)"
            f" WHERE u.at > clock_timestamp() - interval '{RESERVE_S} seconds' AND (SELECT"
            " x.updated_at <= u.at AND x.claim_token IS NULL FROM tasks x WHERE x.id = u.r)"
            " IS TRUE)")


def _head(channel: str, other: str, *, first: str, spent: str, queued: str = "",
          reserved: str = "") -> str:
    """The channel's best runnable task not on hold (nor, if queued, in ``reserved``, an
    array): two ordered probes, no sort of the table, or the queued one alone when ``other``
    is empty (no task of another runnable state anywhere). No row lock: the claim locks the
    task it takes and re-checks it. ``queued`` gates the queued probe (a condition and
    ``AND``); neither probe offers a task whose stage is in ``spent`` (``first``: a queued
    task's; none left out without)."""
    free = f" AND t.id <> ALL ({reserved})" if reserved else ""
    branch = ("SELECT t.id, t.status, t.failed_stage, t.priority, t.created_at FROM tasks t"
              " WHERE t.channel_id = {c} AND t.hold_since IS NULL AND {cond}"
              " ORDER BY t.priority, t.created_at, t.id LIMIT 1")
    first_free, stage_free = (f"'{first}' <> ALL ({spent}) AND ", f" AND {_free('t', spent)}") \
        if spent else ("", "")
    queued_branch = branch.format(c=channel, cond=f"{queued}{first_free}t.status = 'queued'{free}")
    if not other:
        return queued_branch
    other_branch = branch.format(c=channel, cond=f"{other}{stage_free}")
    return (f"SELECT h.id, h.status, h.failed_stage, h.priority, h.created_at"
            f" FROM (\n        ({queued_branch})\n        UNION ALL ({other_branch})\n      ) h"
            " ORDER BY h.priority, h.created_at, h.id LIMIT 1")


def _spent(channel: str) -> str:
    """The stages spent for ``channel``, from the blocks read once per call (``blocked``)."""
    return ("CASE WHEN cardinality(blk_ch) = 0 THEN '{}'::text[] ELSE ARRAY(SELECT b.st"
            f" FROM unnest(blk_ch, blk_st) b (ch, st) WHERE b.ch IN ({channel}, '{SHARED}'))"
            " END")


def _blocks(also: Mapping[str, str]) -> str:
    """Read the buckets spent or paused now into ``blk_ch`` and ``blk_st`` (usually none), and
    each expression of ``also`` into its variable, in one statement."""
    exprs = "".join(f", {expr}" for expr in also.values())
    into = "".join(f", {var}" for var in also)
    return ("SELECT coalesce(array_agg(b.channel), '{}'), coalesce(array_agg(b.stage), '{}')"
            f"{exprs} INTO blk_ch, blk_st{into} FROM {QUOTA_BLOCKS}() b;")


def _flags(starts: str, errors: str, active: str) -> dict[str, str]:
    """What the ranking needs to handle: whether any active channel has a cap (``capped``),
    and whether any task waits in a runnable state other than queued (``others``: one probe
    of the small ``ix_tasks_runnable``, in its order, so that any plan reads the index)."""
    return {"capped": "EXISTS (SELECT 1 FROM channels c WHERE c.is_active"
                      " AND c.max_concurrent IS NOT NULL)",
            "others": f"EXISTS (SELECT 1 FROM tasks t WHERE {_indexed(starts, errors, active, 't')}"
                      " ORDER BY t.channel_id, t.priority, t.created_at, t.id LIMIT 1)"}


#: The ranking's forms: ``(capped, blocked, others)``, each flag off where the call found
#: nothing for it to handle (see ``_ranking``).
FORMS = tuple((capped, blocked, others) for capped in (True, False)
              for blocked in (True, False) for others in (True, False))


def _ranking(starts: str, errors: str, active: str, first: str, *, capped: bool,
             blocked: bool, others: bool) -> str:
    """The pick-up's ranking: channels with claimable work by the priority of their best task,
    then fewest pick-ups, then least recently picked, then the task's age. A channel at its
    cap (in this snapshot) offers only a stage handed back. ``top`` is the most pick-ups of a
    channel at that priority (a late-comer is raised to one below it).

    One ranking in eight forms: each flag keeps the part that handles its case, and without it
    that part is its constant. ``capped``: some active channel has a cap (else none is full);
    ``blocked``: some quota is spent or paused (else no stage is spent); ``others``: some task
    waits in a runnable state other than queued (else each channel's head is its queued one).
    A statement's set-up costs for every node it holds, run or not: where only queued work
    and no caps were to be ranked, the full form's unused parts cost a pick-up about a tenth
    of its server time.
    A flag read just before the ranking is as good as the ranking's own snapshot: work that
    appears in between is ranked at the next pick-up, as if it had come a moment later."""
    laterals = []
    if capped:
        laterals.append("CROSS JOIN LATERAL (SELECT CASE WHEN c.max_concurrent IS NULL THEN false"
                        f" ELSE c.max_concurrent <= {active_count('c.id', active)}"
                        " END AS full) cap")
    if blocked:
        laterals.append(f"CROSS JOIN LATERAL (SELECT {_spent('c.id')} AS stages) sp")
    gate = "NOT cap.full AND " if capped else ""
    other = (f"(({gate}{_waiting('t', starts, errors)}) OR {_unheld('t', active)})"
             f" AND {_indexed(starts, errors, active, 't')}") if others else ""
    reserved = ("CASE WHEN c.reserved_until > clock_timestamp() THEN c.reserved"
                " ELSE '{}'::uuid[] END")
    head = _head("c.id", other, first=first, spent="sp.stages" if blocked else "",
                 queued=gate, reserved=reserved)
    joins = "".join(f"{join}\n        " for join in laterals)
    return f"""SELECT c.id AS channel, best.id AS task,
               max(c.picks) OVER (PARTITION BY best.priority) AS top
          INTO cand
        FROM channels c
        {joins}CROSS JOIN LATERAL ({head}) best
        WHERE c.is_active AND c.id <> ALL (held)
        ORDER BY best.priority, c.picks, c.turn NULLS FIRST, best.created_at, c.id
        LIMIT 1;"""


def _unheld_head(channel: str, indexed: str, active: str) -> str:
    """The channel's best handed-back stage: all a claim may take at the channel's cap."""
    return ("SELECT t.id, t.status, t.failed_stage FROM tasks t"
            f" WHERE t.channel_id = {channel} AND t.hold_since IS NULL"
            f" AND {_unheld('t', active)} AND {_free('t', 'spent')} AND {indexed}"
            " ORDER BY t.priority, t.created_at, t.id LIMIT 1")


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


def render_pick(*, starts: Iterable[str], active: Iterable[str], errors: Iterable[str],
                first: str) -> str:
    """``pick_channel``, from frozen lifecycle data (``first``: the first stage's name)."""
    start_list, error_list, active_list = _list(starts), _list(errors), _list(active)
    forms: list[str] = []
    for capped, blocked, others in FORMS:
        flags = [f"{'' if capped else 'NOT '}capped",
                 f"cardinality(blk_ch) {'>' if blocked else '='} 0",
                 f"{'' if others else 'NOT '}others"]
        ranking = _ranking(start_list, error_list, active_list, first, capped=capped,
                           blocked=blocked, others=others)
        forms.append(f"{'IF' if not forms else 'ELSIF'} {' AND '.join(flags)} THEN\n"
                     f"      {ranking}")
    chain = "\n      ".join(forms)
    count = f"""{_blocks(_flags(start_list, error_list, active_list))}
    LOOP
      {chain}
      END IF;
      EXIT WHEN NOT FOUND;
      -- The channel's row, unless a claim of it holds the row (a capped channel counting,
      -- a caller's open transaction): then the next best, so no decision waits. The pick-up
      -- counted and numbered, its task reserved beside the reservations still standing.
      UPDATE channels c SET picks = greatest(c.picks + 1, cand.top - 1),
          turn = nextval('{EVENT_IDS}'),
          (reserved, reserved_at) = (SELECT l.ids || cand.task, l.ats || clock_timestamp()
                                     FROM {_live("c")} l (ids, ats)),
          reserved_until = clock_timestamp() + interval '{RESERVE_S} seconds'
        WHERE c.id = (SELECT k.id FROM channels k WHERE k.id = cand.channel
                      FOR NO KEY UPDATE SKIP LOCKED)
        RETURNING c.turn INTO ticket;
      IF FOUND THEN
        channel := cand.channel;
        task := cand.task;
        EXIT;
      END IF;
      held := held || cand.channel;
    END LOOP;"""
    return f"""CREATE FUNCTION {PICK}(
  p_now timestamptz, p_commit boolean DEFAULT false, p_skip uuid[] DEFAULT '{{}}')
RETURNS TABLE (channel uuid, ticket bigint, task uuid)
LANGUAGE plpgsql {SETTINGS} AS $$
DECLARE
  cand record;
  held uuid[] := p_skip;
  turnstile boolean := false;
  blk_ch uuid[];
  blk_st text[];
  capped boolean;
  others boolean;
BEGIN
  IF p_commit THEN
    -- Alone in its transaction: the lock lasts through the (asynchronous) commit, so the next
    -- decision sees this one.
    PERFORM set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock({TURNSTILE});
    {count}
  ELSE
    -- In a caller's transaction: a session lock, released however the call ends.
    BEGIN
      PERFORM pg_advisory_lock({TURNSTILE});
      turnstile := true;
      {count}
      PERFORM pg_advisory_unlock({TURNSTILE});
    EXCEPTION WHEN query_canceled OR others THEN
      IF turnstile THEN
        PERFORM pg_advisory_unlock({TURNSTILE});
      END IF;
      RAISE;
    END;
  END IF;
  IF channel IS NOT NULL THEN
    RETURN NEXT;
  END IF;
END
$$"""


def render_pick_many(*, starts: Iterable[str], active: Iterable[str],
                     errors: Iterable[str]) -> str:
    """``pick_channels``: up to ``p_count`` pick-ups decided in one call under the turnstile
    (``p_commit``'s transaction lock), the same picks, counts, turns and reservations as as many
    calls of ``pick_channel`` one after the other (``tests/test_pick_many.py`` holds the two
    equal in random cases), from frozen lifecycle data.

    In the common form (no active channel with a cap, no quota spent or paused, no runnable
    work but queued tasks) the ranking reads each channel's first queued tasks once, and the
    decisions are made on them in memory, each as the ranking would make it: by the priority of
    the channel's best task not reserved, then fewest pick-ups, then least recently picked
    (a pick's number is drawn from the sequence as it is made), then the task's age; a pick
    raises the channel's count to one below the most of a channel at that priority if it is
    further behind. A channel's reservations standing in its row are passed over until its
    first pick here; from then on those still standing when re-read, and the tasks picked
    here. The channels picked are then locked and written once each. In any other form, or
    where another transaction holds a picked channel's row or changed its count or turn since
    it was read, the picks are made by ``pick_channel`` one at a time, as before. One decision
    costs a ranking (a probe of each channel) and a write of the channel's row; here a call of
    n pick-ups costs one read of each channel's first n tasks and one write of each channel
    picked."""
    flags = _blocks(_flags(_list(starts), _list(errors), _list(active)))
    stood = ("CASE WHEN c.reserved_until > clock_timestamp() THEN c.reserved"
             " ELSE '{}'::uuid[] END")
    # The head of channel ``w``: its first task from ``i`` on that is not passed over.
    head = """WHILE i < hi[w] AND CASE WHEN once[w] THEN cl[i] OR cu[i] ELSE cs[i] END LOOP
        i := i + 1;
      END LOOP;
      hd[w] := CASE WHEN i < hi[w] THEN i ELSE 0 END;"""
    return f"""CREATE FUNCTION {PICK_MANY}(
  p_now timestamptz, p_count integer, p_skip uuid[] DEFAULT '{{}}')
RETURNS TABLE (channel uuid, ticket bigint, task uuid)
LANGUAGE plpgsql {SETTINGS} AS $$
DECLARE
  blk_ch uuid[];
  blk_st text[];
  capped boolean;
  others boolean;
  picked record;
  -- The channels ranked: id, pick-ups, turn, their tasks' places [lo, hi), the head's place
  -- (0: none left), and whether this call has picked the channel yet.
  chan uuid[]; pk integer[]; tn bigint[]; lo integer[]; hi integer[];
  -- Each channel's count and turn as read.
  pk0 integer[]; tn0 bigint[];
  hd integer[]; once boolean[];
  -- Their first queued tasks, channel by channel in the ranking's order: id, priority, age,
  -- reserved in the row (standing), reserved still when re-read (live), picked here.
  ct uuid[]; cp prioritylevel[]; ca timestamptz[]; cs boolean[]; cl boolean[]; cu boolean[];
  w integer;
  i integer;
  top integer;
  locked integer;
  pch uuid[] := '{{}}';
  ptk bigint[] := '{{}}';
  pts uuid[] := '{{}}';
BEGIN
  -- Alone in its transaction, as pick_channel's p_commit: the lock lasts through the commit.
  PERFORM set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock({TURNSTILE});
  {flags}
  -- In the common form, the decisions made together; otherwise (or where a picked channel's
  -- row is held or changed since it was read), one at a time below.
  <<together>>
  BEGIN
    EXIT together WHEN capped OR cardinality(blk_ch) > 0 OR others;
    -- Each channel's first queued tasks, in the ranking's order within the channel, the
    -- channels in order of id; and each channel's count, turn and first task's place.
    SELECT coalesce(array_agg(r.ch ORDER BY r.o) FILTER (WHERE r.k = 1), '{{}}'),
           coalesce(array_agg(r.picks ORDER BY r.o) FILTER (WHERE r.k = 1), '{{}}'),
           coalesce(array_agg(r.turn ORDER BY r.o) FILTER (WHERE r.k = 1), '{{}}'),
           coalesce(array_agg(r.o ORDER BY r.o) FILTER (WHERE r.k = 1), '{{}}'),
           coalesce(array_agg(r.task ORDER BY r.o), '{{}}'),
           coalesce(array_agg(r.priority ORDER BY r.o), '{{}}'),
           coalesce(array_agg(r.created_at ORDER BY r.o), '{{}}'),
           coalesce(array_agg(r.stood ORDER BY r.o), '{{}}'),
           coalesce(array_agg(r.live ORDER BY r.o), '{{}}')
      INTO chan, pk, tn, lo, ct, cp, ca, cs, cl
      FROM (SELECT c.id AS ch, c.picks, c.turn, t.id AS task, t.priority, t.created_at,
                   t.id = ANY (v.stood) AS stood, t.id = ANY (v.live) AS live,
                   row_number() OVER (ORDER BY c.id, t.priority, t.created_at, t.id) AS o,
                   row_number() OVER (PARTITION BY c.id
                                      ORDER BY t.priority, t.created_at, t.id) AS k
              FROM channels c
              CROSS JOIN LATERAL (SELECT {stood} AS stood, l.ids AS live
                                  FROM {_live("c")} l (ids, ats)) v
              CROSS JOIN LATERAL (SELECT t.id, t.priority, t.created_at FROM tasks t
                                  WHERE t.channel_id = c.id AND t.hold_since IS NULL
                                    AND t.status = 'queued'
                                  ORDER BY t.priority, t.created_at, t.id
                                  LIMIT p_count + cardinality(v.stood)) t
              WHERE c.is_active AND c.id <> ALL (p_skip)) r;
    hi := lo[2:] || (cardinality(ct) + 1);
    pk0 := pk;
    tn0 := tn;
    cu := array_fill(false, ARRAY[cardinality(ct)]);
    once := array_fill(false, ARRAY[cardinality(chan)]);
    hd := array_fill(0, ARRAY[cardinality(chan)]);
    FOR j IN 1 .. cardinality(chan) LOOP
      w := j;
      i := lo[w];
      {head}
    END LOOP;
    FOR n IN 1 .. p_count LOOP
      -- The ranking's choice among the channels with a head.
      w := 0;
      FOR j IN 1 .. cardinality(chan) LOOP
        CONTINUE WHEN hd[j] = 0;
        IF w = 0 OR (cp[hd[j]], pk[j], tn[j] IS NOT NULL, coalesce(tn[j], 0), ca[hd[j]], chan[j])
                    < (cp[hd[w]], pk[w], tn[w] IS NOT NULL, coalesce(tn[w], 0), ca[hd[w]], chan[w])
        THEN
          w := j;
        END IF;
      END LOOP;
      EXIT WHEN w = 0;
      top := 0;
      FOR j IN 1 .. cardinality(chan) LOOP
        IF hd[j] <> 0 AND cp[hd[j]] = cp[hd[w]] AND pk[j] > top THEN
          top := pk[j];
        END IF;
      END LOOP;
      pk[w] := greatest(pk[w] + 1, top - 1);
      tn[w] := nextval('{EVENT_IDS}');
      pch := pch || chan[w]; ptk := ptk || tn[w]; pts := pts || ct[hd[w]];
      cu[hd[w]] := true;
      -- The channel's next head: after its first pick, its reservations as re-read.
      i := CASE WHEN once[w] THEN hd[w] ELSE lo[w] END;
      once[w] := true;
      {head}
    END LOOP;
    IF cardinality(pch) = 0 THEN
      RETURN;
    END IF;
    -- The channels picked, locked as they were read. Where another transaction holds one's
    -- row, or changed its count or turn since (a claim that found nothing gives its count
    -- back outside the turnstile): one decision at a time, as pick_channel makes them.
    SELECT count(*) INTO locked
      FROM (SELECT 1 FROM channels k JOIN unnest(chan, pk0, tn0) r (id, picks, turn)
                                       ON r.id = k.id
            WHERE k.id = ANY (pch) AND k.picks = r.picks AND k.turn IS NOT DISTINCT FROM r.turn
            FOR NO KEY UPDATE OF k SKIP LOCKED) l;
    EXIT together WHEN locked < cardinality(ARRAY(SELECT DISTINCT unnest(pch)));
    UPDATE channels c SET picks = v.picks, turn = v.turn,
        (reserved, reserved_at) = (SELECT l.ids || v.tasks,
                                          l.ats || array_fill(clock_timestamp(),
                                                              ARRAY[cardinality(v.tasks)])
                                   FROM {_live("c")} l (ids, ats)),
        reserved_until = clock_timestamp() + interval '{RESERVE_S} seconds'
      FROM (SELECT p.ch, max(p.tk) AS turn, array_agg(p.task ORDER BY p.o) AS tasks,
                   (SELECT q.pk FROM unnest(chan, pk) q (ch, pk) WHERE q.ch = p.ch) AS picks
              FROM unnest(pch, ptk, pts) WITH ORDINALITY p (ch, tk, task, o) GROUP BY p.ch) v
      WHERE c.id = v.ch;
    RETURN QUERY SELECT p.ch, p.tk, p.task
      FROM unnest(pch, ptk, pts) WITH ORDINALITY p (ch, tk, task, o) ORDER BY p.o;
    RETURN;
  END;
  FOR n IN 1 .. p_count LOOP
    SELECT p.channel, p.ticket, p.task INTO picked FROM {PICK}(p_now, true, p_skip) p;
    EXIT WHEN NOT FOUND;
    channel := picked.channel; ticket := picked.ticket; task := picked.task;
    RETURN NEXT;
  END LOOP;
END
$$"""


def render(targets: Targets, *, starts: Iterable[str], active: Iterable[str],
           errors: Iterable[str], first: str) -> str:
    """``claim_task``, from frozen lifecycle data: ``targets`` (see ``Targets``), the runnable
    states other than queued and errors (``starts``), the active states, the error states and
    the first stage's name."""
    start_list, error_list, active_list = _list(starts), _list(errors), _list(active)
    other = _claimable("t", start_list, error_list, active_list)
    indexed = _indexed(start_list, error_list, active_list, "t")
    return f"""CREATE FUNCTION {FUNCTION}(
  p_worker text, p_lease_s double precision, p_now timestamptz, p_task uuid DEFAULT NULL,
  p_start boolean DEFAULT false, p_channel uuid DEFAULT NULL, p_ticket bigint DEFAULT NULL)
RETURNS TABLE (task_id uuid, from_status taskstatus, to_status taskstatus, claim_token uuid,
               attempt integer, run integer, title text, topic text, story_direction text,
               artifacts jsonb)
LANGUAGE plpgsql {SETTINGS} AS $$
DECLARE
  chan record;
  skip uuid[] := '{{}}';
  ch uuid := p_channel;
  tk bigint := p_ticket;
  want uuid;
  at_cap boolean;
  head_id uuid;
  head_status taskstatus;
  head_failed text;
  best_other record;
  mid taskstatus;
  target taskstatus;
  claim_note text;
  claim_event bigint;
  token uuid;
  quotas_on boolean;
  spent text[] := '{{}}';
  stamp timestamptz;
  blk_ch uuid[];
  blk_st text[];
BEGIN
  {_blocks({"quotas_on": "EXISTS (SELECT 1 FROM quotas)"})}
  FOR attempt_no IN 1..8 LOOP
    want := p_task;
    IF p_task IS NULL AND p_channel IS NULL THEN
      -- A whole pick-up in the caller's transaction.
      SELECT p.channel, p.ticket, p.task INTO ch, tk, want FROM {PICK}(p_now, false, skip) p;
      EXIT WHEN NOT FOUND;
    END IF;
    IF want IS NOT NULL THEN
      -- The task a pick-up reserved, or one a worker carries on: locked (and its conditions
      -- checked again on the row as locked), with its channel.
      SELECT c.id, c.max_concurrent, t.id AS task, t.status, t.failed_stage INTO chan
        FROM tasks t JOIN channels c ON c.id = t.channel_id
        WHERE t.id = want AND c.is_active AND t.hold_since IS NULL
          AND (t.status = 'queued' OR {other})
        FOR UPDATE OF t;
    ELSE
      SELECT c.id, c.max_concurrent, NULL::uuid AS task INTO chan
        FROM channels c WHERE c.id = ch AND c.is_active;
    END IF;
    IF FOUND THEN
      at_cap := false;
      IF chan.max_concurrent IS NOT NULL THEN
        -- Capacity is serialised per channel: its row, then a count in a new statement.
        PERFORM 1 FROM channels c WHERE c.id = chan.id FOR NO KEY UPDATE;
        at_cap := chan.max_concurrent <= {active_count("chan.id", active_list)};
      END IF;
      head_id := NULL;
      spent := '{{}}';
      IF cardinality(blk_ch) > 0 THEN
        spent := {_spent("chan.id")};
      END IF;
      IF want IS NOT NULL THEN
        IF NOT at_cap OR chan.status IN ({active_list}) THEN
          head_id := chan.task;
          head_status := chan.status;
          head_failed := chan.failed_stage;
        END IF;
      ELSIF at_cap THEN
        SELECT h.id, h.status, h.failed_stage INTO head_id, head_status, head_failed
          FROM ({_unheld_head('chan.id', indexed, active_list)} FOR UPDATE SKIP LOCKED) h;
      ELSE
        -- The channel's best task no other claim holds: the rare rows of the other runnable
        -- states first, then the queued head.
        SELECT t.id, t.status, t.failed_stage, t.priority, t.created_at INTO best_other
          FROM tasks t WHERE t.channel_id = chan.id AND t.hold_since IS NULL AND {other}
            AND {_free('t', 'spent')} AND {indexed}
          ORDER BY t.priority, t.created_at, t.id LIMIT 1 FOR UPDATE SKIP LOCKED;
        SELECT t.id, t.status, t.failed_stage INTO head_id, head_status, head_failed
          FROM tasks t WHERE t.channel_id = chan.id AND t.status = 'queued'
            AND '{first}' <> ALL (spent)
            AND t.hold_since IS NULL AND (best_other.id IS NULL OR (t.priority, t.created_at, t.id)
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
      stamp := clock_timestamp();
      IF head_id IS NOT NULL AND target IS NOT NULL AND quotas_on THEN
        -- The start counted against its stage's quotas, under their buckets' locks.
        stamp := {QUOTA_TAKE}(chan.id, {TASK_STAGE}(target, NULL));
        IF stamp IS NULL THEN
          head_id := NULL;
        END IF;
      END IF;
      IF head_id IS NOT NULL AND target IS NOT NULL THEN
        token := gen_random_uuid();
        UPDATE tasks t SET status = target, claimed_by = p_worker,
            claimed_at = stamp, claim_token = token,
            lease_expires_at = p_now + make_interval(secs => p_lease_s),
            retry_at = NULL, failed_stage = NULL,
            attempts = CASE WHEN target = 'claimed' THEN t.attempts ELSE t.attempts + 1 END,
            stage_runs = CASE WHEN target = 'claimed' THEN t.stage_runs
                              ELSE t.stage_runs + 1 END
          WHERE t.id = head_id
          RETURNING t.attempts, t.stage_runs, t.title, t.topic, t.story_direction, t.artifacts
            INTO attempt, run, title, topic, story_direction, artifacts;
        -- Both transitions of a claim that starts its stage; a stage taken over is recorded
        -- with from = to. A pick-up's event carries its number, unless the channel has a cap:
        -- then its id comes after the count, for the history to replay capacity in order.
        mid := CASE WHEN head_status = 'queued' THEN 'claimed'::taskstatus ELSE target END;
        claim_note := CASE WHEN head_status IN ({active_list}) THEN 'claim: taken over'
                     ELSE 'claim' END;
        claim_event := CASE WHEN chan.max_concurrent IS NULL
                            THEN coalesce(tk, nextval('{EVENT_IDS}'))
                            ELSE nextval('{EVENT_IDS}') END;
        IF mid = target THEN
          INSERT INTO task_events (id, task_id, from_status, to_status, actor, note, created_at)
            VALUES (claim_event, head_id, head_status, mid, p_worker, claim_note, stamp);
        ELSE
          INSERT INTO task_events (id, task_id, from_status, to_status, actor, note, created_at)
            VALUES (claim_event, head_id, head_status, mid, p_worker, claim_note, stamp),
                   (nextval('{EVENT_IDS}'), head_id, mid, target, p_worker, NULL, stamp);
        END IF;
        task_id := head_id; from_status := head_status; to_status := target;
        claim_token := token;
        RETURN NEXT;
        RETURN;
      END IF;
    END IF;
    -- Nothing to take: a pick-up gives its count and its reservation back; the caller (or the
    -- next round) picks again without this channel.
    IF tk IS NOT NULL THEN
      UPDATE channels c SET picks = greatest(c.picks - 1, 0),
          reserved = coalesce((SELECT array_agg(u.r ORDER BY u.n) FROM unnest(c.reserved)
                               WITH ORDINALITY u (r, n) WHERE u.r IS DISTINCT FROM want), '{{}}'),
          reserved_at = coalesce((SELECT array_agg(u.at ORDER BY u.n)
                                  FROM unnest(c.reserved, c.reserved_at) WITH ORDINALITY
                                    u (r, at, n) WHERE u.r IS DISTINCT FROM want), '{{}}')
        WHERE c.id = ch;
    END IF;
    EXIT WHEN p_task IS NOT NULL OR p_channel IS NOT NULL;
    skip := skip || ch;
  END LOOP;
END
$$"""


def render_next() -> str:
    """``claim_next``: the workers' pick-up in one round trip. A procedure, so that it can
    commit the pick (asynchronously, releasing the turnstile) before it claims the task, and
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
  want uuid;
  got record;
BEGIN
  LOOP
    SELECT p.channel, p.ticket, p.task INTO ch, tk, want FROM {PICK}(p_now, true, skip) p;
    EXIT WHEN NOT FOUND;
    COMMIT;
    SELECT c.* INTO got FROM {FUNCTION}(p_worker, p_lease_s, p_now, want, p_start, ch, tk) c;
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


def _stage_case(targets: Targets, stage_of: Mapping[str, str]) -> str:
    """``CASE`` over ``p_status`` (and ``p_failed``): the stage a claim of it starts. It compares
    the enum itself, not its text: an enum's text is only stable (labels can be renamed), and a
    function declared immutable whose body is not is never inlined."""
    whens = []
    for status in dict.fromkeys(status for status, _, _ in targets):
        default = stage_of[targets[(status, None, True)]]
        named = {f: stage_of[targets[(status, f, True)]] for s, f, start in targets
                 if s == status and f is not None and start}
        named = {f: stage for f, stage in named.items() if stage != default}
        if named:
            cases = " ".join(f"WHEN '{f}' THEN '{stage}'" for f, stage in named.items())
            whens.append(f"    WHEN '{status}' THEN CASE p_failed {cases} ELSE '{default}' END")
        else:
            whens.append(f"    WHEN '{status}' THEN '{default}'")
    return "CASE p_status\n" + "\n".join(whens) + "\n  END"


def _bucket_of(quota: str, channel: str) -> str:
    """The key of the bucket of ``quota`` (a ``quotas`` alias) a start on ``channel`` counts
    against."""
    return f"CASE WHEN {quota}.per_channel THEN {channel} ELSE '{SHARED}'::uuid END"


def _spent_at(stage: str, channel: str) -> str:
    """A bucket a start of ``stage`` on ``channel`` counts against is spent or paused at
    ``at``."""
    return ("SELECT 1 FROM quota_usage v JOIN quotas w ON w.id = v.quota_id"
            f" WHERE w.stage IN ({stage}, '{EVERY_STAGE}') AND v.channel_id ="
            f" {_bucket_of('w', channel)} AND v.blocked_until > at")


def _record(indent: str, at: str = "at") -> str:
    """``SET`` of a start at ``at`` (NULL: none) recorded in a bucket (``u``, its quota ``q``),
    as ``quota_merge`` keeps it, and when the bucket frees."""
    return ("SET (starts, counts, blocked_until) = (SELECT m.starts, m.counts,"
            f" greatest(u.paused_until, m.frees)\n{indent}  FROM {QUOTA_MERGE}(u.starts, u.counts,"
            f" {at}, q.max_starts, q.window_s) m)")


def _buckets(stage: str) -> str:
    """The buckets of ``p_channel`` a start of ``stage`` counts against (``u``, with its quota
    ``q``)."""
    return (f"quota_usage u JOIN quotas q ON q.id = u.quota_id WHERE q.stage IN ({stage},"
            f" '{EVERY_STAGE}') AND u.channel_id = {_bucket_of('q', 'p_channel')}")


def _lock(stage: str) -> str:
    """Create the buckets if missing, then lock them in one order (no two claims deadlock)."""
    return ("INSERT INTO quota_usage (channel_id, quota_id, stage)"
            f" SELECT {_bucket_of('q', 'p_channel')}, q.id,"
            f" q.stage FROM quotas q WHERE q.stage IN ({stage}, '{EVERY_STAGE}')"
            " ON CONFLICT DO NOTHING;\n"
            f"  PERFORM 1 FROM {_buckets(stage)} ORDER BY u.channel_id, u.quota_id"
            " FOR UPDATE OF u;")


def _claim_together(picks: str, stamp: str) -> str:
    """The statement that claims ``picks`` (a relation of ``ch, tk, want, k`` whose tasks this
    transaction holds locked, or ``free`` locks) at ``stamp``, as ``claim_task`` claims one: the
    row's guarded ``UPDATE`` and both events, the pick's ticket numbering the first."""
    return f"""claimed AS (
    UPDATE tasks t SET status = x.target, claimed_by = p_worker, claimed_at = x.stamp,
        claim_token = gen_random_uuid(),
        lease_expires_at = p_now + make_interval(secs => p_lease_s),
        retry_at = NULL, failed_stage = NULL,
        attempts = CASE WHEN x.target = 'claimed' THEN t.attempts ELSE t.attempts + 1 END,
        stage_runs = CASE WHEN x.target = 'claimed' THEN t.stage_runs
                          ELSE t.stage_runs + 1 END
      FROM (SELECT x.*, target AS target, {stamp} AS stamp FROM {picks} x) x
      WHERE t.id = x.want
      RETURNING x.k, x.tk, x.stamp, x.target, t.id, t.claim_token, t.attempts, t.stage_runs,
                t.title, t.topic, t.story_direction, t.artifacts),
  events AS (
    INSERT INTO task_events (id, task_id, from_status, to_status, actor, note, created_at)
      SELECT e.id, e.task, e.src, e.dst, p_worker, e.note, e.at FROM (
        SELECT c.k, 1 AS o, coalesce(c.tk, nextval('{EVENT_IDS}')) AS id, c.id AS task,
               'queued'::taskstatus AS src, 'claimed'::taskstatus AS dst, 'claim' AS note,
               c.stamp AS at
          FROM claimed c
        UNION ALL
        SELECT c.k, 2, nextval('{EVENT_IDS}'), c.id, 'claimed', c.target, NULL, c.stamp
          FROM claimed c WHERE c.target <> 'claimed') e
      ORDER BY e.k, e.o)
  SELECT c.k::integer, c.id, 'queued'::taskstatus, c.target, c.claim_token, c.attempts,
         c.stage_runs, c.title::text, c.topic::text, c.story_direction, c.artifacts
    FROM claimed c"""


def render_reserved(targets: Targets) -> str:
    """``claim_reserved``: ``claim_task`` of several picks at once, for the common case: the task
    each pick reserved still queued and not on hold, its channel active and without a cap. A
    task another transaction holds locked is skipped, not waited for. The target is the same
    rule's, from the frozen ``targets``. A pick it does not claim returns no row, and the caller
    gives it to ``claim_task``, which decides as ever (``tests/test_reserved_claims.py`` holds
    the two equal). Claimed one by one, each cost a function call and five statements.

    Where quotas count the stage these claims start, the tasks are locked first (skipping any
    another transaction holds), then every bucket of their channels in ``quota_take``'s order,
    made first if missing; the clock read after the locks stamps every start. Each pick records
    its start in all its buckets, or in none where one has no room or is paused
    (``quota_take``'s check and record), and the picks recorded are claimed together: so the
    picks claimed are those ``claim_task`` would claim one by one. Where no two picks share a
    bucket (per-channel quotas, picks of distinct channels), the records and the claims are
    one statement; else, where several quotas count the stage, the picks record one after the
    other, in their order (where one does, below).

    Where one quota counts the stage of a lone pick (a lone claimer's every pick-up), its
    bucket is not locked beforehand: one bucket, so there is no order to keep and nothing to
    record in all or none (two buckets locked by one statement could be locked in either
    order, and two calls could each wait for the other's). The ``UPDATE`` that records the
    start locks the bucket and reads its room (``blocked_until``) on the version it locks: a
    bucket written since the statement began is read again, newest version, before anything is
    written (the check ``quota_take`` makes under its lock). The start is stamped with the
    clock read there, after any wait, so a bucket's starts stay in order; the task's claim
    carries the same stamp. One statement instead of two: 0.05 to 0.1 ms of a lone claimer's
    pick-up.

    Where one quota counts the stage of several picks (a shared quota, or picks of one
    channel), each pick counts against one bucket and the picks of a bucket are recorded in one
    write of it: the tasks are locked, then the buckets in ``quota_take``'s order, read as they
    were locked (a bucket written since the statement began is read newest version); the clock
    read after the locks stamps every start, and ``quota_admit`` records as many of a bucket's
    picks as it has room for, in their order, each as ``quota_merge`` records one. Locks,
    records and claims are one statement (before, a statement to lock the buckets and one
    ``UPDATE`` per pick where picks shared a bucket).

    Each task is found by its id, in a lateral subquery that locks it: its status and hold are
    compared with ``IS NOT DISTINCT FROM`` (the same test for these values, which no index
    serves) and ``OFFSET 0`` keeps its channel's conditions out of it (checked on the row
    locked). No other index can serve that look-up, so a plan made while ``tasks`` was tiny
    still probes the primary key once the queue fills, rather than reading every queued task;
    and a task no longer queued is not locked."""
    target = _one_status("queued", targets)
    picks = "unnest(p_channels, p_tickets, p_tasks) WITH ORDINALITY x (ch, tk, want, k)"
    free = (f"SELECT x.* FROM {picks} CROSS JOIN LATERAL ("
            "SELECT t.channel_id FROM tasks t WHERE t.id = x.want"
            " AND (t.status, t.hold_since IS NULL) IS NOT DISTINCT FROM ('queued', true)"
            " OFFSET 0 FOR UPDATE OF t SKIP LOCKED) t"
            " JOIN channels c ON c.id = t.channel_id"
            " WHERE t.channel_id = x.ch AND c.is_active AND c.max_concurrent IS NULL")
    quota = f"q.stage IN (st, '{EVERY_STAGE}')"
    chs = "ARRAY(SELECT p_channels[i] FROM unnest(ks) i)"

    def lock(channels: str) -> str:
        """Lock the buckets of ``channels`` (a query of channel ids) in ``quota_take``'s
        order: their own, and the shared one if they are any."""
        return (f"SELECT 1 FROM quota_usage u JOIN quotas q ON q.id = u.quota_id WHERE {quota}"
                f" AND CASE WHEN q.per_channel THEN u.channel_id IN ({channels})"
                f" ELSE u.channel_id = '{SHARED}' AND EXISTS ({channels}) END"
                " ORDER BY u.channel_id, u.quota_id FOR UPDATE OF u")
    def make(channels: str) -> str:
        """Make the buckets of ``channels`` (an array of channel ids) that are missing."""
        return ("INSERT INTO quota_usage (channel_id, quota_id, stage)"
                f" SELECT DISTINCT {_bucket_of('q', 'x.ch')}, q.id, q.stage"
                f" FROM quotas q CROSS JOIN unnest({channels}) x (ch) WHERE {quota}"
                " ON CONFLICT DO NOTHING;")
    return f"""CREATE FUNCTION {RESERVED}(
  p_worker text, p_lease_s double precision, p_now timestamptz, p_start boolean,
  p_channels uuid[], p_tickets bigint[], p_tasks uuid[])
RETURNS TABLE (n integer, task_id uuid, from_status taskstatus, to_status taskstatus,
               claim_token uuid, attempt integer, run integer, title text, topic text,
               story_direction text, artifacts jsonb)
LANGUAGE plpgsql {SETTINGS}
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
  target taskstatus := {target};
  st text := {TASK_STAGE}(target, NULL);
  per_channel integer;
  shared integer;
  missing integer;
  ks bigint[];
  k bigint;
  locked integer;
  chans integer;
  counted integer;
  at timestamptz;
BEGIN
  SELECT count(*) FILTER (WHERE q.per_channel), count(*) FILTER (WHERE NOT q.per_channel),
         count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM unnest(p_channels) x (ch) WHERE NOT EXISTS (
             SELECT 1 FROM quota_usage u
              WHERE u.quota_id = q.id AND u.channel_id = {_bucket_of('q', 'x.ch')})))
    INTO per_channel, shared, missing FROM quotas q WHERE {quota};
  IF per_channel + shared = 0 THEN
    RETURN QUERY
    WITH free AS ({free}),
    {_claim_together("free", "clock_timestamp()")};
    RETURN;
  END IF;
  IF per_channel + shared = 1 AND missing > 0 THEN
    -- A bucket made at its first start (one quota: each pick's one bucket).
    {make("p_channels")}
  END IF;
  IF per_channel + shared = 1 AND cardinality(p_channels) = 1 THEN
    -- A lone pick counting against one bucket: its task locked, then its bucket, whose room
    -- is read on the version the UPDATE locks (a bucket written meanwhile is read again), its
    -- start recorded there, and the pick claimed if recorded: one statement. (Several picks
    -- lock their buckets in one order first, below: locked in one statement, two calls could
    -- each wait for a bucket the other holds.)
    RETURN QUERY
    WITH free AS MATERIALIZED ({free}),
    recorded AS (
      UPDATE quota_usage u
        {_record("          ", "clock_timestamp()")}
        FROM free f JOIN quotas q ON {quota}
        WHERE q.id = u.quota_id AND u.channel_id = {_bucket_of('q', 'f.ch')}
          AND (u.blocked_until IS NULL OR u.blocked_until <= clock_timestamp())
        RETURNING f.k, u.starts[cardinality(u.starts)] AS started),
    granted AS (SELECT x.*, r.started FROM {picks} JOIN recorded r ON r.k = x.k),
    {_claim_together("granted", "x.started")};
    RETURN;
  END IF;
  IF per_channel + shared = 1 THEN
    -- Several picks, each counting against one bucket (its channel's, or the shared one):
    -- their tasks locked, then their buckets in quota_take's order, read as locked; the clock
    -- read after the locks stamps every start; each bucket records as many of its picks' starts
    -- as it has room for, in their order (quota_admit), in one write; those picks are claimed.
    RETURN QUERY
    WITH free AS MATERIALIZED ({free}),
    wanted AS MATERIALIZED (
      SELECT {_bucket_of('q', 'f.ch')} AS bucket, q.id AS quota, q.max_starts, q.window_s,
             array_agg(f.k ORDER BY f.k) AS ks
        FROM free f JOIN quotas q ON {quota} GROUP BY 1, 2),
    locked AS MATERIALIZED (
      SELECT u.channel_id, u.quota_id, u.starts, u.counts, u.blocked_until, u.paused_until,
             w.max_starts, w.window_s, w.ks
        FROM wanted w JOIN quota_usage u ON u.channel_id = w.bucket AND u.quota_id = w.quota
        ORDER BY u.channel_id, u.quota_id FOR UPDATE OF u),
    clock AS MATERIALIZED (SELECT clock_timestamp() AS at FROM (SELECT count(*) FROM locked) l),
    admitted AS MATERIALIZED (
      SELECT l.channel_id, l.quota_id, l.ks, a.* FROM locked l CROSS JOIN clock c
      CROSS JOIN LATERAL {QUOTA_ADMIT}(l.starts, l.counts, l.blocked_until, l.paused_until, c.at,
                                       l.max_starts, l.window_s, cardinality(l.ks)) a),
    recorded AS (
      UPDATE quota_usage u
        SET (starts, counts, blocked_until) = (a.starts, a.counts, a.blocked_until)
        FROM admitted a
        WHERE a.admitted > 0 AND u.channel_id = a.channel_id AND u.quota_id = a.quota_id),
    granted AS (
      SELECT x.*, c.at FROM {picks} CROSS JOIN clock c
       WHERE x.k IN (SELECT unnest(a.ks[1:a.admitted]) FROM admitted a)),
    {_claim_together("granted", "x.at")};
    RETURN;
  END IF;
  -- Starts of this stage count against quotas: the tasks locked (skipping any another
  -- transaction holds), then the buckets of their channels, in quota_take's order.
  WITH free AS MATERIALIZED ({free})
  SELECT (SELECT coalesce(array_agg(f.k ORDER BY f.k), '{{}}') FROM free f),
         (SELECT count(*) FROM ({lock("SELECT f.ch FROM free f")}) l),
         (SELECT count(DISTINCT f.ch) FROM free f)
    INTO ks, locked, chans;
  IF cardinality(ks) = 0 THEN
    RETURN;
  END IF;
  IF locked < shared + per_channel * chans THEN
    -- A bucket made at its first start.
    {make(chs)}
    PERFORM 1 FROM ({lock(f"SELECT unnest({chs})")}) l;
  END IF;
  -- The clock read after the locks stamps every start.
  at := clock_timestamp();
  IF shared = 0 AND chans = cardinality(ks) THEN
    -- No two picks share a bucket: each records its start in all its buckets or in none, and
    -- those recorded are claimed, in one statement.
    RETURN QUERY
    WITH recorded AS (
      UPDATE quota_usage u
        {_record("          ")}
        FROM {picks} JOIN quotas q ON {quota}
        WHERE x.k = ANY (ks) AND q.id = u.quota_id AND u.channel_id = x.ch
          AND NOT EXISTS ({_spent_at("st", "x.ch")})
        RETURNING x.k),
    granted AS (SELECT x.* FROM {picks} WHERE x.k IN (SELECT r.k FROM recorded r)),
    {_claim_together("granted", "at")};
    RETURN;
  END IF;
  -- Each pick in turn: its start recorded in every bucket it counts against, or in none.
  FOR i IN 1 .. cardinality(ks) LOOP
    k := ks[i];
    UPDATE quota_usage u
      {_record("        ")}
      FROM quotas q WHERE q.id = u.quota_id AND {quota}
        AND u.channel_id = {_bucket_of('q', 'p_channels[k]')}
        AND NOT EXISTS ({_spent_at("st", "p_channels[k]")});
    GET DIAGNOSTICS counted = ROW_COUNT;
    IF counted = 0 THEN
      ks[i] := NULL;
    END IF;
  END LOOP;
  RETURN QUERY
  WITH granted AS (SELECT x.* FROM {picks} WHERE x.k = ANY (ks)),
  {_claim_together("granted", "at")};
END
$$"""


def render_take() -> str:
    """``quota_take``: check and record one start of ``p_stage`` on ``p_channel`` under its
    buckets' locks; the start's time, or NULL when a bucket is spent or paused. A stage no
    quota names costs one look-up (every claim calls this once any quota exists), and the
    check and the record are one ``UPDATE``: it writes every bucket or none, and fewer rows
    than were locked means one was spent."""
    return f"""CREATE FUNCTION {QUOTA_TAKE}(p_channel uuid, p_stage text) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
  at timestamptz;
  locked integer;
  counted integer;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM quotas q WHERE q.stage IN (p_stage, '{EVERY_STAGE}')) THEN
    RETURN clock_timestamp();
  END IF;
  {_lock("p_stage")}
  GET DIAGNOSTICS locked = ROW_COUNT;
  at := clock_timestamp();
  -- This start recorded (as quota_merge keeps a record), and when each bucket frees;
  -- nothing written when one of them is spent or paused.
  UPDATE quota_usage u
    {_record("        ")}
    FROM quotas q WHERE q.id = u.quota_id AND q.stage IN (p_stage, '{EVERY_STAGE}')
      AND u.channel_id = {_bucket_of('q', 'p_channel')}
      AND NOT EXISTS ({_spent_at("p_stage", "p_channel")});
  GET DIAGNOSTICS counted = ROW_COUNT;
  IF counted < locked THEN
    RETURN NULL;
  END IF;
  RETURN at;
END
$$"""


def render_quotas(targets: Targets, stage_of: Mapping[str, str]) -> list[str]:
    """The quota functions, from frozen lifecycle data: ``targets`` and the stage of each state a
    claim moves into (``stage_of``).

    ``quota_blocks`` compares with the time the caller's statement began, a stable value: the
    planner inlines the function into the statement that reads it, and reads the buckets
    through ``ix_quota_usage_blocked_until``. (With the clock, volatile, it was planned anew
    at every call and scanned the whole table, which every start rewrites.) A bucket that
    freed since the statement began still reads as blocked: the claim passes over its stage
    once more, and never takes a start the bucket has no room for."""
    every = ", ".join(f"'{name}'" for name in dict.fromkeys(stage_of.values()))
    blocks = f"""CREATE FUNCTION {QUOTA_BLOCKS}() RETURNS TABLE (channel uuid, stage text)
LANGUAGE sql STABLE AS $$
  SELECT u.channel_id, st FROM quota_usage u
  CROSS JOIN LATERAL unnest(CASE WHEN u.stage = '{EVERY_STAGE}' THEN ARRAY[{every}]
                                 ELSE ARRAY[u.stage] END) st
  WHERE u.blocked_until > statement_timestamp()
$$"""
    take = render_take()
    pause = f"""CREATE FUNCTION {QUOTA_PAUSE}(p_channel uuid, p_stage text,
                                        p_seconds double precision) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  n integer;
  until timestamptz := clock_timestamp() + make_interval(secs => p_seconds);
BEGIN
  {_lock("p_stage")}
  UPDATE quota_usage u SET paused_until = greatest(u.paused_until, until),
                           blocked_until = greatest(u.blocked_until, until)
    FROM quotas q WHERE q.id = u.quota_id AND q.stage IN (p_stage, '{EVERY_STAGE}')
      AND u.channel_id = {_bucket_of('q', 'p_channel')};
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$"""
    refresh = f"""CREATE FUNCTION {QUOTA_REFRESH}(p_quota integer) RETURNS void
LANGUAGE sql AS $$
  UPDATE quota_usage u
    {_record("    ", "NULL")}
    FROM quotas q WHERE q.id = u.quota_id AND q.id = p_quota
$$"""
    return [render_task_stage(targets, stage_of), blocks, take, pause, refresh]


def render_merge() -> str:
    """``quota_merge``: a bucket's record (``starts``, oldest first, and their ``counts``), with
    a start at ``p_at`` added (NULL: none), kept to what can still matter; and when the bucket
    frees (NULL: it has room).

    Each entry of ``starts`` is the newest start of ``counts`` starts (no counts: one each). A
    bucket keeps its first ``EXACT_STARTS`` entries one start each, so a quota of at most that
    many starts is counted exactly; past them a start joins the newest entry when both fall in
    the same slice of the window (``SLICES`` of it), else opens an entry. An entry leaves the
    window with its newest start, so its older starts count a little longer than they should,
    never shorter: no window lets in more starts than the limit, and a spent bucket frees at
    most one slice late. Entries whose window passed go, and so do the oldest ones while the
    newer ones hold the limit on their own; the record stays at most ``EXACT_STARTS`` +
    ``SLICES`` + 1 entries whatever the limit (a record of every start rewrote up to the limit's
    worth of timestamps with each start), and a longer one is brought to that at its next
    start. Every claim counted by a quota calls it, so it sums the counts in a loop (a query
    costs more than the loop over at most those entries) and copies an array only when an
    entry leaves: 10 µs a call against 18 for revision 0016's (``merge_0016``)."""
    return f"""CREATE FUNCTION {QUOTA_MERGE}(
  p_starts timestamptz[], p_counts integer[], p_at timestamptz, p_max integer, p_window_s integer,
  OUT starts timestamptz[], OUT counts integer[], OUT frees timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  n integer;
  first integer := 1;
  total bigint;
  entry integer;
  slice double precision := p_window_s::double precision / {SLICES};
BEGIN
  IF cardinality(p_counts) = 0 AND p_max <= {EXACT_STARTS} THEN
    -- Every start on its own: the newest p_max, the oldest of them leaving the window first.
    starts := CASE WHEN p_at IS NULL THEN p_starts ELSE p_starts || p_at END;
    starts := starts[greatest(cardinality(starts) + 1 - p_max, 1):];
    counts := '{{}}';
    IF cardinality(starts) >= p_max THEN
      frees := starts[1] + make_interval(secs => p_window_s);
    END IF;
    RETURN;
  END IF;
  starts := p_starts;
  counts := CASE WHEN cardinality(p_counts) = 0 THEN array_fill(1, ARRAY[cardinality(p_starts)])
                 ELSE p_counts END;
  n := cardinality(starts);
  IF p_at IS NOT NULL THEN
    -- The entries whose newest start left the window go.
    WHILE first <= n AND starts[first] <= p_at - make_interval(secs => p_window_s) LOOP
      first := first + 1;
    END LOOP;
    IF first > 1 THEN
      starts := starts[first:n]; counts := counts[first:n]; n := n - first + 1;
    END IF;
    IF n > {EXACT_STARTS + SLICES + 1} THEN
      -- A record kept otherwise (every start its own, as before revision 0016): past the
      -- first entries, one entry per slice.
      SELECT starts[1:{EXACT_STARTS}] || array_agg(g.s ORDER BY g.s),
             counts[1:{EXACT_STARTS}] || array_agg(g.c ORDER BY g.s)
        INTO starts, counts
        FROM (SELECT max(e.s) AS s, sum(e.c)::integer AS c
                FROM unnest(starts[{EXACT_STARTS + 1}:n], counts[{EXACT_STARTS + 1}:n]) e (s, c)
               GROUP BY floor(extract(epoch FROM e.s) / slice)) g;
      n := cardinality(starts);
    END IF;
    IF n >= {EXACT_STARTS} AND floor(extract(epoch FROM starts[n]) / slice)
                               = floor(extract(epoch FROM p_at) / slice) THEN
      starts[n] := p_at; counts[n] := counts[n] + 1;
    ELSE
      starts := starts || p_at; counts := counts || 1; n := n + 1;
    END IF;
  END IF;
  -- The oldest entries go while the newer ones hold the limit on their own.
  total := 0;
  FOREACH entry IN ARRAY counts LOOP
    total := total + entry;
  END LOOP;
  first := 1;
  WHILE first < n AND total - counts[first] >= p_max LOOP
    total := total - counts[first]; first := first + 1;
  END LOOP;
  IF first > 1 THEN
    starts := starts[first:n]; counts := counts[first:n];
  END IF;
  IF total >= p_max THEN
    frees := starts[1] + make_interval(secs => p_window_s);
  END IF;
END
$$"""


def render_admit() -> str:
    """``quota_admit``: up to ``p_n`` starts at ``p_at`` recorded in a bucket (its record,
    when it frees as stored, and its pause), one after the other while it has room, each as
    ``quota_merge`` records one: the record, when the bucket frees, and how many were recorded.
    Picks that share a bucket are so recorded in one write of it, as one write each would."""
    return f"""CREATE FUNCTION {QUOTA_ADMIT}(
  p_starts timestamptz[], p_counts integer[], p_blocked timestamptz, p_paused timestamptz,
  p_at timestamptz, p_max integer, p_window_s integer, p_n integer,
  OUT starts timestamptz[], OUT counts integer[], OUT blocked_until timestamptz,
  OUT admitted integer)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  frees timestamptz;
BEGIN
  starts := p_starts; counts := p_counts; blocked_until := p_blocked; admitted := 0;
  WHILE admitted < p_n AND (blocked_until IS NULL OR blocked_until <= p_at) LOOP
    SELECT m.starts, m.counts, m.frees INTO starts, counts, frees
      FROM {QUOTA_MERGE}(starts, counts, p_at, p_max, p_window_s) m;
    blocked_until := greatest(p_paused, frees);
    admitted := admitted + 1;
  END LOOP;
END
$$"""


def render_task_stage(targets: Targets, stage_of: Mapping[str, str]) -> str:
    """``task_stage(status, failed stage)``: the stage a claim of a task in that state starts,
    from frozen lifecycle data. An SQL function that the planner inlines into every query that
    calls it; one it cannot inline runs as a query of its own, parsed and planned again at each
    execution of the query that calls it."""
    return f"""CREATE OR REPLACE FUNCTION {TASK_STAGE}(p_status taskstatus, p_failed text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT {_stage_case(targets, stage_of)}
$$"""


def drop() -> list[str]:
    """Drop the procedure, both claim functions and the quota functions."""
    return [f"DROP PROCEDURE IF EXISTS {NEXT}(text, double precision, timestamptz, boolean,"
            " uuid, taskstatus, taskstatus, uuid, integer, integer)",
            f"DROP FUNCTION IF EXISTS {FUNCTION}(text, double precision, timestamptz, uuid,"
            " boolean, uuid, bigint)",
            f"DROP FUNCTION IF EXISTS {PICK}(timestamptz, boolean, uuid[])",
            f"DROP FUNCTION IF EXISTS {RESERVED}(text, double precision, timestamptz, boolean,"
            " uuid[], bigint[], uuid[])",
            f"DROP FUNCTION IF EXISTS {QUOTA_TAKE}(uuid, text)",
            f"DROP FUNCTION IF EXISTS {QUOTA_PAUSE}(uuid, text, double precision)",
            f"DROP FUNCTION IF EXISTS {QUOTA_BLOCKS}()",
            f"DROP FUNCTION IF EXISTS {QUOTA_REFRESH}(integer)",
            f"DROP FUNCTION IF EXISTS {QUOTA_MERGE}(timestamptz[], integer[], timestamptz, integer,"
            " integer)",
            f"DROP FUNCTION IF EXISTS {TASK_STAGE}(taskstatus, text)"]
