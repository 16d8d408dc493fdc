"""Revision 0012's stage boundaries of several tasks, frozen (what ``0012_set_boundaries``
installs and a downgrade to it re-installs). The live one is ``boundary.render_batch``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from app.db.ddl import claim_task
from app.db.ddl.boundary import (
    BOUNDARIES,
    BOUNDARY,
    OUT,
    Finish,
    Steps,
    _actor,
    _assignments,
    _channel_of,
    _out,
    _step_case,
    _step_text,
)


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
    otherwise scan it): the function plans without sequential scans, hash or merge joins."""
    whens = " ".join(f"WHEN '{active}' THEN '{stage}'" for active, stage in next_stage.items())
    done = " ".join(f"WHEN '{status}' THEN '{changes['status'].strip(chr(39))}'"
                    for status, changes in finish.items())
    start_case = " ".join(f"WHEN '{s}' THEN '{a}'" for s, a in starts.items())
    active_list = ", ".join(f"'{status}'" for status in active)
    shared, every = claim_task.SHARED, claim_task.EVERY_STAGE
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
        WHERE t.id = x.p_task AND t.status = x.p_status AND t.claim_token = x.p_token
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
        WHERE t.id = x.p_task AND t.status = x.p_status AND t.claim_token = x.p_token
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
