"""Revision 0013's pick-up, frozen (what ``0013_quota_set_claims`` and ``0014_plans_by_key``
leave installed, and a downgrade from ``0015_picks_together`` re-installs). The live one is
``boundary.render_pick_up``.
"""

from __future__ import annotations

from app.db.ddl import claim_task

PICK_UP = "pick_up"


def render_pick_up() -> str:
    """``pick_up``: up to ``p_count`` of the workers' pick-ups in one round trip, returning each
    claim with its stage's input (arrays). A procedure, called on its own (``CALL``, no
    transaction open).

    The pick-ups are decided together, one after the other, under one hold of the turnstile
    (each ``pick_channel`` sees the ones before it, so turns stay strict), and committed; then
    each reserved task is claimed: together by ``claim_reserved`` where its channel has no cap
    (the common case; quotas counted under their buckets' locks), else by ``claim_task``.
    Claims that may wait for a lock (a capped channel's row, a quota bucket) commit apart, so
    that no claim holds a lock while it waits for another; the others, which lock only the
    tasks reserved for them, share one commit. Only the last commit waits for the disk: the
    call returns nothing before it, and it makes every earlier one durable with it. A pick-up
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
