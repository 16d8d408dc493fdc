"""Revision 0017's claim of reserved tasks together, frozen (what ``0017_one_bucket_claims``
installs and a downgrade to it re-installs): a lone pick that one quota counts recorded in the
statement that claims it; several picks whose buckets are shared recorded one ``UPDATE`` each,
after a statement of their own locks the buckets. The live one is ``claim_task.render_reserved``.
"""

from __future__ import annotations

from app.db.ddl.claim_task import (
    EVERY_STAGE,
    RESERVED,
    SETTINGS,
    SHARED,
    TASK_STAGE,
    Targets,
    _bucket_of,
    _claim_together,
    _one_status,
    _record,
    _spent_at,
)


def render_reserved(targets: Targets) -> str:
    """``claim_reserved`` as revision 0017 installs it: the module's docstring says how it
    differs from the live one (``claim_task.render_reserved``)."""
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
  buckets integer;
  ks bigint[];
  k bigint;
  locked integer;
  chans integer;
  counted integer;
  at timestamptz;
BEGIN
  SELECT count(*) FILTER (WHERE q.per_channel), count(*) FILTER (WHERE NOT q.per_channel),
         count(*) FILTER (WHERE cardinality(p_channels) = 1 AND EXISTS (
           SELECT 1 FROM quota_usage u
            WHERE u.quota_id = q.id AND u.channel_id = {_bucket_of('q', 'p_channels[1]')}))
    INTO per_channel, shared, buckets FROM quotas q WHERE {quota};
  IF per_channel + shared = 0 THEN
    RETURN QUERY
    WITH free AS ({free}),
    {_claim_together("free", "clock_timestamp()")};
    RETURN;
  END IF;
  IF per_channel + shared = 1 AND cardinality(p_channels) = 1 THEN
    -- A lone pick counting against one bucket: its task locked, then its bucket, whose room
    -- is read on the version the UPDATE locks (a bucket written meanwhile is read again), its
    -- start recorded there, and the pick claimed if recorded: one statement. (Several picks
    -- lock their buckets in one order first, below: locked in one statement, two calls could
    -- each wait for a bucket the other holds.)
    IF buckets = 0 THEN
      {make("p_channels")}
    END IF;
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
