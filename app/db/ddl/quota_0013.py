"""Revision 0013's quota functions, frozen: a bucket kept every start of its window, up to the
quota's limit (what revisions 0011 and 0013 install, and a downgrade to them re-installs).
The live ones are ``claim_task.render_quotas`` and its ``_record``.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.db.ddl.claim_task import (
    EVERY_STAGE,
    QUOTA_BLOCKS,
    QUOTA_PAUSE,
    QUOTA_REFRESH,
    QUOTA_TAKE,
    Targets,
    _bucket_of,
    _lock,
    _spent_at,
    render_task_stage,
)


def _record(indent: str) -> str:
    """``SET`` of a start at ``at`` recorded in a bucket (``u``, its quota ``q``): only the
    newest ``max_starts`` kept, and when the bucket frees."""
    return ("SET starts = (u.starts || at)[greatest(cardinality(u.starts) + 2 - q.max_starts,"
            f" 1):],\n{indent}blocked_until = {_blocked_until('u.starts || at')}")


def _blocked_until(starts: str) -> str:
    """When a bucket whose newest starts are ``starts`` frees: the ``max_starts``-th newest start
    plus the window (null: not spent), or its pause if later. A bucket keeps only its newest
    ``max_starts`` starts, so checking one is one comparison."""
    return (f"greatest(u.paused_until, CASE WHEN cardinality({starts}) >= q.max_starts"
            f" THEN ({starts})[cardinality({starts}) - q.max_starts + 1]"
            " + make_interval(secs => q.window_s) END)")


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
  -- This start recorded (only the newest max_starts kept), and when each bucket frees;
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
  UPDATE quota_usage u SET blocked_until = {_blocked_until("u.starts")}
    FROM quotas q WHERE q.id = u.quota_id AND q.id = p_quota
$$"""
    return [render_task_stage(targets, stage_of), blocks, take, pause, refresh]
