"""DDL of a stage boundary: ``stage_boundary`` ends a stage and starts the next in one
statement; ``pick_up`` is the workers' pick-up, returning what the stage needs.

A worker that finishes a stage used to make three to five round trips, each its own commit:
record the success, take the automatic moves (``assembly_ready → final_review``, a gate listed
in ``AUTO_APPROVE_GATES``), claim the task's next stage, load the task for it. Here that is one
call:

- **the success**, guarded by the stage's status and fenced by the claim token, written as
  ``app.moves.finish`` says (rendered from that rule, ``finish_rule``);
- **the automatic moves** after it, each guarded by the status it leaves (``steps_rule``, from
  ``app.moves.automatic_step``; which gates pass is the caller's ``AUTO_APPROVE_GATES``);
- **the next stage**, when the task would rest in a state a claim starts from and the caller
  may carry it on: claimed as ``claim_task`` would claim it (no turn is taken; its channel
  active, the task not on hold, a capacity slot and the stage's quota), so a task whose next
  stage cannot be had now stays runnable for the next claim in queue order;
- **the next stage's input** (the task's fields and stage outputs), so nothing is loaded apart.

A task carried on is written once: its row goes from one stage's active state straight to
the next's, with the success's columns and the claim's (``CLAIM_WRITES``) in one ``UPDATE``,
and every transition on the way gets its ``task_events`` row. The database guard accepts that
pair only as a carry writes it (``lifecycle.CARRIES``: a fresh claim token and attempt budget).
The task holds its capacity slot through the move, so the cap is counted only to refuse a carry
when the cap was lowered meanwhile, and without the channel row's lock (which claims take to
serialise new slots): carries of one channel never wait for each other. A task not carried
on gets the success and each automatic move as a guarded ``UPDATE`` of its own. Either way
the caller sees one statement and one commit; no row comes back when the success is refused
(the claim was lost): nothing was written. ``tests/test_moves_agree.py`` holds a boundary
equal to the success, the automatic moves and ``claim_task`` made one by one.

``stage_boundary`` itself, the boundary of one task, is what revision 0010 installed, rendered
by the frozen ``boundary_0011``; ``stage_boundaries`` (rendered here) writes the common cases a
set at a time and calls it for the others.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from app import moves
from app.db.ddl import claim_task
from app.lifecycle import GATE_BY_WAITING, GATES, STAGES, TaskStatus
from app.moves import Claim, MergeArtifact

BOUNDARY = "stage_boundary"
#: Several stage boundaries in one statement and one commit.
BOUNDARIES = "stage_boundaries"
PICK_UP = "pick_up"
#: Pick-ups wanted at once from which ``pick_up`` decides them in one ``pick_channels`` call
#: rather than one ``pick_channel`` call each: its fixed cost (reading each channel's first
#: tasks, deciding in PL/pgSQL) is about three single decisions' (``bench/RESULTS.md``).
PICKS_TOGETHER = 4
#: What a stage's success writes, per active state: column → SQL expression.
Finish = Mapping[str, Mapping[str, str]]
#: The automatic moves: status → (target, the gate it passes or None, the event's note).
Steps = Mapping[str, tuple[str, str | None, str | None]]

_NOW = datetime(2000, 1, 1, tzinfo=UTC)
_URL = "\x00youtube_url"


def _sql(column: str, value: Any) -> str:
    """One value of a move's changes as the function's SQL."""
    if value is None:
        return "NULL"
    if isinstance(value, TaskStatus):
        return f"'{value.value}'"
    if isinstance(value, datetime) and value == _NOW:
        return "p_now"
    if isinstance(value, MergeArtifact):
        return f"t.{column} || jsonb_build_object('{value.stage}', p_output)"
    if value == _URL:
        return f"coalesce(p_url, t.{column})"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{column}: no SQL for {value!r}")


def finish_rule() -> dict[str, dict[str, str]]:
    """``moves.finish`` of every stage as SQL: the table ``render`` takes (frozen by each
    revision that installs it)."""
    rule = {}
    for stage in STAGES:
        held = Claim(uuid.UUID(int=0), stage.active, stage.active, uuid.UUID(int=0))
        move = moves.finish(held, artefacts={"youtube_url": _URL}, now=_NOW)
        rule[stage.active.value] = {column: _sql(column, value)
                                    for column, value in move.changes.items()}
    return rule


def steps_rule() -> dict[str, tuple[str, str | None, str | None]]:
    """``moves.automatic_step`` of every status, with every gate listed as auto-approved (the
    function passes a gate only when the caller lists it)."""
    every = frozenset(gate.name for gate in GATES)
    rule = {}
    for status in TaskStatus:
        step = moves.automatic_step(status, every)
        if step is None:
            continue
        changes = moves.side_effects(status, step.target, note=step.note, now=_NOW)
        if changes.keys() != {"status", "updated_at"}:
            raise ValueError(f"{status.value} → {step.target.value} changes more than the status")
        gate = GATE_BY_WAITING[status].name if step.approval else None
        rule[status.value] = (step.target.value, gate, step.note)
    return rule


def next_stages() -> dict[str, str]:
    """Active state → the stage that follows it (the one a carried-on task starts next)."""
    return {st.active.value: nxt.name for st, nxt in itertools.pairwise(STAGES)}


#: What a claim writes on its task (``claim_task``'s ``UPDATE``), over the success's write when a
#: boundary carries the task straight on: column → SQL (``target`` the next active state,
#: ``stamp`` the start's time). ``tests/test_moves_agree.py`` holds a carry equal to the
#: success, the automatic moves and ``claim_task`` made one by one.
CLAIM_WRITES: dict[str, str] = {
    "status": "target", "claimed_by": "p_worker", "claimed_at": "stamp",
    "claim_token": "gen_random_uuid()",
    "lease_expires_at": "p_now + make_interval(secs => p_lease_s)",
    "retry_at": "NULL", "failed_stage": "NULL", "attempts": "1", "stage_runs": "1",
}


def _assignments(finish: Finish, over: Mapping[str, str] | None = None) -> str:
    """``SET`` of the success (with ``over`` written instead where it names a column): a
    column every stage writes alike is one expression, the others a ``CASE`` over the stage (a
    stage that does not write it keeps it)."""
    columns = list(dict.fromkeys(c for changes in finish.values() for c in changes))
    parts = []
    for column in columns:
        if over and column in over:
            parts.append(f"{column} = {over[column]}")
            continue
        values = {status: changes.get(column) for status, changes in finish.items()}
        if len(set(values.values())) == 1:
            parts.append(f"{column} = {next(iter(values.values()))}")
            continue
        whens = " ".join(f"WHEN '{status}' THEN {value}" for status, value in values.items()
                         if value is not None)
        parts.append(f"{column} = CASE p_status::text {whens} ELSE t.{column} END")
    parts += [f"{column} = {value}" for column, value in (over or {}).items()
              if column not in columns]
    return ",\n      ".join(parts)


def _step_case(steps: Steps, var: str = "cur") -> str:
    """The automatic move out of ``var``: the target, or NULL (a gate not listed in
    ``p_auto`` is left to a person)."""
    whens = []
    for status, (target, gate, _) in steps.items():
        value = f"'{target}'" if gate is None else \
            f"CASE WHEN '{gate}' = ANY (p_auto) THEN '{target}'::taskstatus END"
        whens.append(f"WHEN '{status}' THEN {value}")
    return f"CASE {var}::text {' '.join(whens)} END"


def _step_text(steps: Steps, index: int, var: str = "cur") -> str:
    """The gate (1) or the note (2) of the step out of ``var``, NULL for none."""
    whens = [f"WHEN '{status}' THEN '{step[index]}'" for status, step in steps.items()
             if step[index] is not None]
    return f"CASE {var}::text {' '.join(whens)} END" if whens else "NULL"


def _actor(steps: Steps, var: str) -> str:
    """Who an automatic move out of ``var`` is recorded as made by."""
    return (f"CASE WHEN {_step_text(steps, 1, var)} IS NULL THEN p_worker"
            f" ELSE '{moves.AUTO_APPROVER}' END")


def _channel_of(task: str) -> str:
    """The channel of ``task``: a primary-key look-up of its own, never a join the planner
    could turn into a scan of ``tasks`` (as it did for a plan made on an empty table)."""
    return f"(SELECT t.channel_id FROM tasks t WHERE t.id = {task})"


#: The row a stage boundary returns (``stage_boundaries`` numbers it with ``n`` first).
OUT = ("rest", "task_id", "from_status", "to_status", "claim_token", "attempt", "run", "title",
       "topic", "story_direction", "artifacts")


def _out(**values: str) -> str:
    """Every column of ``OUT`` assigned, NULL where ``values`` names none."""
    return " ".join(f"{column} := {values.get(column, 'NULL')};" for column in OUT)


def render_batch(finish: Finish, steps: Steps, claim: Mapping[str, str], *,
                 starts: Mapping[str, str], active: Iterable[str],
                 next_stage: Mapping[str, str]) -> str:
    """``stage_boundaries``: ``stage_boundary`` for each task of the arrays (one statement, one
    commit), from the frozen rule data ``render`` takes and ``next_stage`` (``next_stages``).
    Rows come back numbered as the arrays (``n``); a refused boundary's row has a NULL ``rest``.

    The common cases are written a set at a time, each row still guarded by its status and
    fenced by its claim token: one ``UPDATE`` carries on every task whose next stage can be had
    without a lock (its channel active and under its cap, the task not on hold, no quota on that
    stage), one records the success of every task that rests with no automatic move, and one
    ``INSERT`` writes their events. Row by row in a loop of ``stage_boundary`` calls, each task
    cost about three times as much of the server's time. Any other task (a quota to take,
    automatic moves to write one by one, a cap reached, a claim lost) gets a ``stage_boundary``
    call of its own, which decides as before. ``tests/test_moves_agree.py`` holds both equal
    to the boundaries made one by one.

    Several carries in one transaction could deadlock with each other's locks (the quota
    buckets of their next stages) taken in different orders, so every bucket a carry may wait
    for is locked first, in one global order (by key, as a single claim takes them). The carries
    then find them held by this transaction and do not wait. A carry locks no channel row (it
    keeps the capacity slot it holds), so a claim holding one never waits on a batch that
    waits for it. The set writes join ``tasks`` by its primary key whatever the statistics
    (plans are kept for the connection's life, and a first plan made on an empty table would
    otherwise scan it): the function plans without sequential scans, hash or merge joins, and
    each row's status and claim token are compared with ``IS NOT DISTINCT FROM`` (the same test
    for these non-null values), which no index serves: the primary key is the only way in."""
    whens = " ".join(f"WHEN '{active}' THEN '{stage}'" for active, stage in next_stage.items())
    done = " ".join(f"WHEN '{status}' THEN '{changes['status'].strip(chr(39))}'"
                    for status, changes in finish.items())
    start_case = " ".join(f"WHEN '{s}' THEN '{a}'" for s, a in starts.items())
    active_list = ", ".join(f"'{status}'" for status in active)
    shared, every = claim_task.SHARED, claim_task.EVERY_STAGE
    # Each row still in the stage its caller holds, under its claim: by key alone (above).
    held = ("WHERE t.id = x.p_task\n"
            "          AND (t.status, t.claim_token) IS NOT DISTINCT FROM (x.p_status, x.p_token)")
    rows = ("unnest(p_tasks, p_tokens, p_statuses, p_outputs, p_urls, targets, single)"
            " WITH ORDINALITY x (p_task, p_token, p_status, p_output, p_url, target, single, i)")
    return f"""CREATE FUNCTION {BOUNDARIES}(
  p_tasks uuid[], p_tokens uuid[], p_statuses taskstatus[], p_outputs jsonb[], p_urls text[],
  p_worker text, p_lease_s double precision, p_now timestamptz, p_auto text[],
  p_carry boolean)
RETURNS TABLE (n integer, rest taskstatus, task_id uuid, from_status taskstatus,
               to_status taskstatus, claim_token uuid, attempt integer, run integer,
               title text, topic text, story_direction text, artifacts jsonb)
LANGUAGE plpgsql {claim_task.SETTINGS}
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
  got record;
  bk_ch uuid[];
  bk_q integer[];
  bk_st text[];
  cur taskstatus;
  nxt taskstatus;
  o integer;
  -- How many tasks each set write has to consider (a write with none is not run).
  carries integer := 0;
  plains integer := 0;
  -- Per task: where its success leads, the state its next stage starts in (carried on), and
  -- whether it rests with no automatic move.
  ends taskstatus[] := '{{}}';
  targets taskstatus[] := '{{}}';
  single boolean[] := '{{}}';
  -- The events of the success and the automatic moves: task, order, from, to.
  ev_i integer[] := '{{}}';
  ev_o integer[] := '{{}}';
  ev_src taskstatus[] := '{{}}';
  ev_dst taskstatus[] := '{{}}';
  -- Written by the set writes, and what a carry returns.
  written boolean[] := array_fill(false, ARRAY[cardinality(p_tasks)]);
  r record;
  c_token uuid[] := '{{}}';
  c_attempt integer[] := '{{}}';
  c_run integer[] := '{{}}';
  c_title text[] := '{{}}';
  c_topic text[] := '{{}}';
  c_story text[] := '{{}}';
  c_art jsonb[] := '{{}}';
  c_stamp timestamptz[] := '{{}}';
BEGIN
  IF p_carry THEN
    IF EXISTS (SELECT 1 FROM quotas) THEN
      SELECT coalesce(array_agg(k.channel_id ORDER BY k.channel_id, k.quota_id), '{{}}'),
             coalesce(array_agg(k.quota_id ORDER BY k.channel_id, k.quota_id), '{{}}'),
             coalesce(array_agg(k.stage ORDER BY k.channel_id, k.quota_id), '{{}}')
        INTO bk_ch, bk_q, bk_st
        FROM (SELECT DISTINCT CASE WHEN q.per_channel THEN t.channel_id
                                   ELSE '{shared}'::uuid END AS channel_id,
                     q.id AS quota_id, q.stage
              FROM (SELECT {_channel_of("x.id")} AS channel_id, x.status
                    FROM unnest(p_tasks, p_statuses) x (id, status)) t
              JOIN quotas q ON q.stage IN (CASE t.status::text {whens} END, '{every}')) k;
      INSERT INTO quota_usage (channel_id, quota_id, stage)
        SELECT k.ch, k.q, k.st FROM unnest(bk_ch, bk_q, bk_st) WITH ORDINALITY k (ch, q, st, o)
        ORDER BY k.o ON CONFLICT DO NOTHING;
      PERFORM 1 FROM quota_usage u
        WHERE (u.channel_id, u.quota_id) IN (SELECT k.ch, k.q FROM unnest(bk_ch, bk_q) k (ch, q))
        ORDER BY u.channel_id, u.quota_id FOR UPDATE;
    END IF;
  END IF;
  -- Where each success leads: its done state, then the automatic moves after it.
  FOR i IN 1 .. cardinality(p_tasks) LOOP
    cur := CASE p_statuses[i]::text {done} END;
    ev_i := ev_i || i; ev_o := ev_o || 1; ev_src := ev_src || p_statuses[i];
    ev_dst := ev_dst || cur;
    o := 1;
    LOOP
      nxt := {_step_case(steps)};
      EXIT WHEN nxt IS NULL;
      o := o + 1;
      ev_i := ev_i || i; ev_o := ev_o || o; ev_src := ev_src || cur; ev_dst := ev_dst || nxt;
      cur := nxt;
    END LOOP;
    ends := ends || cur;
    targets := targets || (CASE WHEN p_carry THEN CASE cur::text {start_case} END END)::taskstatus;
    single := single || (o = 1);
    IF targets[i] IS NOT NULL THEN
      carries := carries + 1;
    ELSIF o = 1 THEN
      plains := plains + 1;
    END IF;
  END LOOP;
  IF carries > 0 THEN
    -- Carried straight on, in one write of each row, where no lock is needed: the channel
    -- active and under its cap (a carry keeps the slot it holds; only a cap lowered meanwhile
    -- refuses it), the task not on hold, no quota on its next stage.
    FOR r IN
      UPDATE tasks t SET
          {_assignments(finish, claim)}
        FROM (SELECT x.*, clock_timestamp() AS stamp FROM {rows}
              WHERE x.target IS NOT NULL) x,
             channels c
        {held}
          AND c.id = t.channel_id AND c.is_active AND t.hold_since IS NULL
          AND (c.max_concurrent IS NULL
               OR c.max_concurrent > {claim_task.active_count("c.id", active_list,
                                                              other_than="x.p_task")})
          AND NOT EXISTS (SELECT 1 FROM quotas q
                          WHERE q.stage IN ({claim_task.TASK_STAGE}(x.target, NULL), '{every}'))
        RETURNING x.i, t.claim_token, t.attempts, t.stage_runs, t.title, t.topic,
                  t.story_direction, t.artifacts, t.claimed_at
    LOOP
      written[r.i] := true;
      c_token[r.i] := r.claim_token; c_attempt[r.i] := r.attempts; c_run[r.i] := r.stage_runs;
      c_title[r.i] := r.title; c_topic[r.i] := r.topic; c_story[r.i] := r.story_direction;
      c_art[r.i] := r.artifacts; c_stamp[r.i] := r.claimed_at;
    END LOOP;
  END IF;
  -- The success alone, where the task rests after it with no automatic move.
  IF plains > 0 THEN
    FOR r IN
      UPDATE tasks t SET
          {_assignments(finish)}
        FROM {rows}
        {held}
          AND x.target IS NULL AND x.single
        RETURNING x.i
    LOOP
      written[r.i] := true;
    END LOOP;
  END IF;
  IF true = ANY (written) THEN
    INSERT INTO task_events (task_id, from_status, to_status, actor, note, created_at)
      SELECT e.task, e.src, e.dst, e.actor, e.note, e.at FROM (
        SELECT e.i, e.o, p_tasks[e.i] AS task, e.src, e.dst,
               CASE WHEN e.o = 1 THEN p_worker ELSE {_actor(steps, "e.src")} END AS actor,
               CASE WHEN e.o = 1 THEN NULL ELSE {_step_text(steps, 2, "e.src")} END AS note,
               p_now AS at
          FROM unnest(ev_i, ev_o, ev_src, ev_dst) e (i, o, src, dst)
          WHERE written[e.i]
        UNION ALL
        SELECT k.i, 0, p_tasks[k.i], ends[k.i], targets[k.i], p_worker, 'claim', c_stamp[k.i]
          FROM generate_subscripts(p_tasks, 1) k (i)
          WHERE c_stamp[k.i] IS NOT NULL) e
      ORDER BY e.i, e.o = 0, e.o;
  END IF;
  FOR i IN 1 .. cardinality(p_tasks) LOOP
    n := i;
    IF written[i] AND c_stamp[i] IS NOT NULL THEN
      {_out(rest="targets[i]", task_id="p_tasks[i]", from_status="ends[i]",
            to_status="targets[i]", claim_token="c_token[i]", attempt="c_attempt[i]",
            run="c_run[i]", title="c_title[i]", topic="c_topic[i]",
            story_direction="c_story[i]", artifacts="c_art[i]")}
    ELSIF written[i] THEN
      {_out(rest="ends[i]")}
    ELSE
      SELECT b.* INTO got FROM {BOUNDARY}(p_tasks[i], p_tokens[i], p_statuses[i], p_outputs[i],
                                          p_urls[i], p_worker, p_lease_s, p_now, p_auto,
                                          p_carry) b;
      IF FOUND THEN
        {_out(**{column: f"got.{column}" for column in OUT})}
      ELSE
        {_out()}
      END IF;
    END IF;
    RETURN NEXT;
  END LOOP;
END
$$"""


def render_pick_up() -> str:
    """``pick_up``: up to ``p_count`` of the workers' pick-ups in one round trip, returning each
    claim with its stage's input (arrays). A procedure, called on its own (``CALL``, no
    transaction open).

    The pick-ups are decided together, one after the other, under one hold of the turnstile
    (one by ``pick_channel``; several by ``pick_channels``, which decides them as as many calls
    of ``pick_channel`` would, each seeing the ones before it, so turns stay strict), and
    committed; then
    each reserved task is claimed: together by ``claim_reserved`` where its channel has no cap
    (the common case; quotas counted under their buckets' locks), else by ``claim_task``.
    Claims that may wait for a lock (a capped channel's row, a quota bucket) commit apart, so
    that no claim holds a lock while it waits for another; the others, which lock only the
    tasks reserved for them, share one commit. Only the last commit waits for the disk: the
    call returns nothing before it, and it makes every earlier one durable with it (where
    claims committed apart, it writes a WAL record of its own, a logical message, so that it
    is flushed even when the last claim wrote nothing). A pick-up
    whose claim finds nothing gives its turn back, and the procedure picks again without that
    channel; one whose claim fails on a lock is not made (its turn stays counted, as when a
    claim fails after its pick) and the claims made beside it are kept."""
    fields = (("task_ids", "task_id", "uuid"), ("from_statuses", "from_status", "taskstatus"),
              ("to_statuses", "to_status", "taskstatus"), ("claim_tokens", "claim_token", "uuid"),
              ("attempts", "attempt", "integer"), ("runs", "run", "integer"),
              ("titles", "title", "text"), ("topics", "topic", "text"),
              ("story_directions", "story_direction", "text"),
              ("artifact_sets", "artifacts", "jsonb"))
    inouts = ",\n  ".join(f"INOUT {many} {kind}[] DEFAULT '{{}}'" for many, _, kind in fields)
    appends = "\n        ".join(f"{many} := {many} || got.{one};" for many, one, _ in fields)
    return f"""CREATE PROCEDURE {PICK_UP}(
  p_worker text, p_lease_s double precision, p_now timestamptz, p_start boolean,
  p_count integer,
  {inouts})
LANGUAGE plpgsql AS $$
DECLARE
  skip uuid[] := '{{}}';
  chs uuid[];
  tks bigint[];
  wants uuid[];
  picked record;
  got record;
  made boolean;
  missed boolean;
  alone boolean;
  taken boolean[];
BEGIN
  LOOP
    -- The pick-ups still wanted, decided under one hold of the turnstile, then committed:
    -- a few one after the other by pick_channel, more together by pick_channels.
    chs := '{{}}'; tks := '{{}}'; wants := '{{}}';
    IF p_count - cardinality(task_ids) < {PICKS_TOGETHER} THEN
      FOR i IN 1 .. p_count - cardinality(task_ids) LOOP
        SELECT p.channel, p.ticket, p.task INTO picked
          FROM {claim_task.PICK}(p_now, true, skip) p;
        EXIT WHEN NOT FOUND;
        chs := chs || picked.channel; tks := tks || picked.ticket; wants := wants || picked.task;
      END LOOP;
    ELSE
      SELECT coalesce(array_agg(p.channel ORDER BY p.o), '{{}}'),
             coalesce(array_agg(p.ticket ORDER BY p.o), '{{}}'),
             coalesce(array_agg(p.task ORDER BY p.o), '{{}}')
        INTO chs, tks, wants
        FROM {claim_task.PICK_MANY}(p_now, p_count - cardinality(task_ids), skip)
             WITH ORDINALITY p (channel, ticket, task, o);
    END IF;
    EXIT WHEN cardinality(chs) = 0;
    COMMIT;
    missed := false;
    -- Claims that may wait for a lock (a capped channel's row, a quota bucket) commit one by
    -- one, so that none holds a lock while waiting for another; the others share one commit.
    -- (A single claim has no other to share it with: nothing to look up.)
    alone := false;
    IF cardinality(chs) > 1 THEN
      alone := EXISTS (SELECT 1 FROM quotas) OR EXISTS (SELECT 1 FROM channels c
                                                        WHERE c.id = ANY (chs)
                                                          AND c.max_concurrent IS NOT NULL);
    END IF;
    -- The reserved tasks of uncapped channels, claimed together (the others below, one by
    -- one).
    taken := array_fill(false, ARRAY[cardinality(chs)]);
    BEGIN
      FOR got IN SELECT r.* FROM {claim_task.RESERVED}(p_worker, p_lease_s, p_now, p_start, chs,
                                                      tks, wants) r LOOP
        taken[got.n] := true;
        {appends}
      END LOOP;
    EXCEPTION WHEN lock_not_available OR deadlock_detected OR serialization_failure THEN
      -- Nothing of it was written: every claim goes one by one instead.
      NULL;
    END;
    IF alone AND true = ANY (taken) AND false = ANY (taken) THEN
      -- The buckets those claims counted against let go before a claim below waits.
      PERFORM set_config('synchronous_commit', 'off', true);
      COMMIT;
    END IF;
    FOR i IN 1 .. cardinality(chs) LOOP
      CONTINUE WHEN taken[i];
      BEGIN
        SELECT c.* INTO got
          FROM {claim_task.FUNCTION}(p_worker, p_lease_s, p_now, wants[i], p_start, chs[i],
                                    tks[i]) c;
        made := FOUND;
      EXCEPTION WHEN lock_not_available OR deadlock_detected OR serialization_failure THEN
        -- This claim only is lost (its pick stays counted): the claims made are kept.
        RAISE WARNING 'pick_up: claim of task % not made: %', wants[i], SQLERRM;
        made := false;
      END;
      IF made THEN
        {appends}
      ELSE
        -- Nothing to take there (its pick given back): pick again without that channel.
        missed := true;
        skip := skip || chs[i];
      END IF;
      IF alone AND i < cardinality(chs) THEN
        -- Asynchronous: nothing is returned before the last commit below, which is
        -- synchronous and so makes every earlier one durable with it.
        PERFORM set_config('synchronous_commit', 'off', true);
        COMMIT;
      END IF;
    END LOOP;
    IF alone THEN
      -- A record of its own, so that this commit waits for the disk even when the last claim
      -- wrote nothing (the claims committed before it are then flushed with it). A
      -- transaction id alone does not: a commit that wrote no other WAL is not flushed.
      PERFORM pg_logical_emit_message(true, '{PICK_UP}', '');
    END IF;
    COMMIT;
    EXIT WHEN NOT missed OR cardinality(task_ids) >= p_count;
  END LOOP;
END
$$"""


def drop() -> list[str]:
    return [f"DROP FUNCTION IF EXISTS {BOUNDARIES}(uuid[], uuid[], taskstatus[], jsonb[], text[],"
            " text, double precision, timestamptz, text[], boolean)",
            f"DROP FUNCTION IF EXISTS {BOUNDARY}(uuid, uuid, taskstatus, jsonb, text, text,"
            " double precision, timestamptz, text[], boolean)",
            f"DROP PROCEDURE IF EXISTS {PICK_UP}(text, double precision, timestamptz, boolean,"
            " integer, uuid[], taskstatus[], taskstatus[], uuid[], integer[], integer[], text[],"
            " text[], text[], jsonb[])"]
