"""Revision 0012's pick-up and its claim of reserved tasks together, frozen (what
``0012_set_boundaries`` installs and a downgrade to it re-installs). The live ones are
``claim_task.render_reserved`` and ``boundary.render_pick_up``.
"""

from __future__ import annotations

from app.db.ddl import claim_task_0010 as claim_task
from app.db.ddl.claim_task_0010 import EVENT_IDS, SETTINGS, Targets, _one_status

PICK_UP = "pick_up"
RESERVED = "claim_reserved"


def render_reserved(targets: Targets) -> str:
    """``claim_reserved``: ``claim_task`` of several picks at once, for the common case only: the
    task each pick reserved still queued and not on hold, its channel active and without a cap,
    no quota anywhere. One ``UPDATE`` claims them (a task another transaction holds locked is
    skipped, not waited for) and one ``INSERT`` writes their events, as ``claim_task`` writes
    them (the pick's ticket numbers its first event); the target is the same rule's, from the
    frozen ``targets``. A pick it does not claim returns no row, and the caller gives it to
    ``claim_task``, which decides as ever (``tests/test_reserved_claims.py`` holds the two
    equal). Claimed one by one, each cost a function call and five statements."""
    target = _one_status("queued", targets)
    return f"""CREATE FUNCTION {RESERVED}(
  p_worker text, p_lease_s double precision, p_now timestamptz, p_start boolean,
  p_channels uuid[], p_tickets bigint[], p_tasks uuid[])
RETURNS TABLE (n integer, task_id uuid, from_status taskstatus, to_status taskstatus,
               claim_token uuid, attempt integer, run integer, title text, topic text,
               story_direction text, artifacts jsonb)
LANGUAGE plpgsql {SETTINGS}
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM quotas) THEN
    RETURN;
  END IF;
  RETURN QUERY
  WITH free AS (
    SELECT t.id FROM tasks t JOIN channels c ON c.id = t.channel_id
      WHERE t.id = ANY (p_tasks) AND t.status = 'queued' AND t.hold_since IS NULL
        AND c.is_active AND c.max_concurrent IS NULL
      FOR UPDATE OF t SKIP LOCKED),
  claimed AS (
    UPDATE tasks t SET status = x.target, claimed_by = p_worker, claimed_at = x.stamp,
        claim_token = gen_random_uuid(),
        lease_expires_at = p_now + make_interval(secs => p_lease_s),
        retry_at = NULL, failed_stage = NULL,
        attempts = CASE WHEN x.target = 'claimed' THEN t.attempts ELSE t.attempts + 1 END,
        stage_runs = CASE WHEN x.target = 'claimed' THEN t.stage_runs
                          ELSE t.stage_runs + 1 END
      FROM (SELECT x.*, {target}::taskstatus AS target, clock_timestamp() AS stamp
            FROM unnest(p_channels, p_tickets, p_tasks) WITH ORDINALITY x (ch, tk, want, k)) x
      WHERE t.id = x.want AND t.channel_id = x.ch AND t.id IN (SELECT f.id FROM free f)
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
    FROM claimed c;
END
$$"""


def render_pick_up() -> str:
    """``pick_up``: up to ``p_count`` of the workers' pick-ups in one round trip, returning each
    claim with its stage's input (arrays). A procedure, called on its own (``CALL``, no
    transaction open).

    The pick-ups are decided together, one after the other, under one hold of the turnstile
    (each ``pick_channel`` sees the ones before it, so turns stay strict), and committed; then
    each reserved task is claimed: together by ``claim_reserved`` where it needs no lock but its
    own (the common case), else by ``claim_task``. Claims that may wait for a lock (a capped
    channel's row, a quota bucket) commit one by one, so that no claim holds a lock while it
    waits for another; the others, which lock only the tasks reserved for them, share one
    commit. Only the last commit waits for the disk: the call returns nothing before it, and
    it makes every earlier one durable with it. A pick-up whose claim finds
    nothing gives its turn back, and the procedure picks again without that channel; one whose
    claim fails on a lock is not made (its turn stays counted, as when a claim fails after its
    pick) and the claims made beside it are kept."""
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
    -- The pick-ups still wanted, decided under one hold of the turnstile, then committed.
    chs := '{{}}'; tks := '{{}}'; wants := '{{}}';
    FOR i IN 1 .. p_count - cardinality(task_ids) LOOP
      SELECT p.channel, p.ticket, p.task INTO picked FROM {claim_task.PICK}(p_now, true, skip) p;
      EXIT WHEN NOT FOUND;
      chs := chs || picked.channel; tks := tks || picked.ticket; wants := wants || picked.task;
    END LOOP;
    EXIT WHEN cardinality(chs) = 0;
    COMMIT;
    missed := false;
    -- The reserved tasks that need no lock but their own, claimed together (the others below,
    -- one by one).
    taken := array_fill(false, ARRAY[cardinality(chs)]);
    BEGIN
      FOR got IN SELECT r.* FROM {RESERVED}(p_worker, p_lease_s, p_now, p_start, chs,
                                                      tks, wants) r LOOP
        taken[got.n] := true;
        {appends}
      END LOOP;
    EXCEPTION WHEN lock_not_available OR deadlock_detected OR serialization_failure THEN
      -- Nothing of it was written: every claim goes one by one instead.
      NULL;
    END;
    -- Claims that may wait for a lock (a capped channel's row, a quota bucket) commit one by
    -- one, so that none holds a lock while waiting for another; the others share one commit.
    -- (A single claim has no other to share it with: nothing to look up.)
    alone := false;
    IF cardinality(chs) > 1 THEN
      alone := EXISTS (SELECT 1 FROM quotas) OR EXISTS (SELECT 1 FROM channels c
                                                        WHERE c.id = ANY (chs)
                                                          AND c.max_concurrent IS NOT NULL);
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
      -- A transaction id, so that this commit is written and flushed even when the last
      -- claim wrote nothing (the claims committed before it are then flushed with it).
      PERFORM pg_current_xact_id();
    END IF;
    COMMIT;
    EXIT WHEN NOT missed OR cardinality(task_ids) >= p_count;
  END LOOP;
END
$$"""
