"""Revision 0015's pick-up, frozen (what ``0015_picks_together`` to ``0018_shared_bucket_claims``
leave installed, and a downgrade from ``0019_durable_pick_ups`` re-installs). The live one is
``boundary.render_pick_up``.
"""

from __future__ import annotations

from app.db.ddl import claim_task

PICK_UP = "pick_up"
#: As revision 0015 read it from ``boundary``.
PICKS_TOGETHER = 4


def render_pick_up() -> str:
    """``pick_up`` as revision 0015 installed it; its last commit forced a flush with a
    transaction id alone, which a commit writing no other WAL does not do."""
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
      -- A transaction id, so that this commit is written and flushed even when the last
      -- claim wrote nothing (the claims committed before it are then flushed with it).
      PERFORM pg_current_xact_id();
    END IF;
    COMMIT;
    EXIT WHEN NOT missed OR cardinality(task_ids) >= p_count;
  END LOOP;
END
$$"""
