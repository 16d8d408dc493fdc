"""Revision 0011's ``pick_channel``, frozen (what ``0011_lean_pick`` installs and a downgrade
from ``0015_picks_together`` re-installs). The live one is ``claim_task.render_pick``.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.db.ddl.claim_task import (
    EVENT_IDS,
    FORMS,
    PICK,
    RESERVE_S,
    SETTINGS,
    TURNSTILE,
    _blocks,
    _flags,
    _list,
    _live,
    _ranking,
)


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
