"""Revision 0016's bucket record, frozen (what ``0016_compact_quota_record`` installs): its
``quota_merge`` summed a record's counts with a query and copied its arrays at every call. The
live one is ``claim_task.render_merge``.
"""

from __future__ import annotations

from app.db.ddl.claim_task import EXACT_STARTS, QUOTA_MERGE, SLICES


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
    start."""
    return f"""CREATE FUNCTION {QUOTA_MERGE}(
  p_starts timestamptz[], p_counts integer[], p_at timestamptz, p_max integer, p_window_s integer,
  OUT starts timestamptz[], OUT counts integer[], OUT frees timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  n integer;
  first integer := 1;
  total bigint;
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
    starts := starts[first:n]; counts := counts[first:n]; n := n - first + 1;
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
  total := coalesce((SELECT sum(c) FROM unnest(counts) c), 0);
  first := 1;
  WHILE first < n AND total - counts[first] >= p_max LOOP
    total := total - counts[first]; first := first + 1;
  END LOOP;
  starts := starts[first:n]; counts := counts[first:n];
  IF total >= p_max THEN
    frees := starts[1] + make_interval(secs => p_window_s);
  END IF;
END
$$"""
