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
- **the next stage**, when the task rests in a state a claim starts from and the caller may
  carry it on: ``claim_task`` of that task, the same claim as any other (no turn is taken, a
  capacity slot and the stage's quota are), so a task at its channel's cap, on hold or whose
  quota is spent stays runnable for the next claim in queue order;
- **the next stage's input** (the task's fields and stage outputs), so nothing is loaded apart.

Every move is its own guarded ``UPDATE`` with its ``task_events`` row, so the database guard
sees each edge as it sees any other; the caller sees one statement and one commit. No row comes
back when the success is refused (the claim was lost): nothing was written.
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


def _assignments(finish: Finish) -> str:
    """``SET`` of the success: a column every stage writes alike is one expression, the
    others a ``CASE`` over the stage (a stage that does not write it keeps it)."""
    columns = list(dict.fromkeys(c for changes in finish.values() for c in changes))
    parts = []
    for column in columns:
        values = {status: changes.get(column) for status, changes in finish.items()}
        if len(set(values.values())) == 1:
            parts.append(f"{column} = {next(iter(values.values()))}")
            continue
        whens = " ".join(f"WHEN '{status}' THEN {value}" for status, value in values.items()
                         if value is not None)
        parts.append(f"{column} = CASE p_status::text {whens} ELSE t.{column} END")
    return ",\n      ".join(parts)


def _step_case(steps: Steps) -> str:
    """The automatic move out of ``cur``: the target, or NULL (a gate not listed in
    ``p_auto`` is left to a person)."""
    whens = []
    for status, (target, gate, _) in steps.items():
        value = f"'{target}'" if gate is None else \
            f"CASE WHEN '{gate}' = ANY (p_auto) THEN '{target}'::taskstatus END"
        whens.append(f"WHEN '{status}' THEN {value}")
    return f"CASE cur::text {' '.join(whens)} END"


def _step_text(steps: Steps, index: int) -> str:
    """The gate (1) or the note (2) of the step out of ``cur``, NULL for none."""
    whens = [f"WHEN '{status}' THEN '{step[index]}'" for status, step in steps.items()
             if step[index] is not None]
    return f"CASE cur::text {' '.join(whens)} END" if whens else "NULL"


def render(finish: Finish, steps: Steps, *, starts: Iterable[str]) -> str:
    """``stage_boundary``, from frozen rule data: ``finish`` (``finish_rule``), ``steps``
    (``steps_rule``) and the states a claim starts a stage from, other than ``queued``."""
    start_list = ", ".join(f"'{status}'" for status in starts)
    approver = moves.AUTO_APPROVER
    return f"""CREATE FUNCTION {BOUNDARY}(
  p_task uuid, p_token uuid, p_status taskstatus, p_output jsonb, p_url text,
  p_worker text, p_lease_s double precision, p_now timestamptz, p_auto text[],
  p_carry boolean)
RETURNS TABLE (rest taskstatus, task_id uuid, from_status taskstatus, to_status taskstatus,
               claim_token uuid, attempt integer, run integer, title text, topic text,
               story_direction text, artifacts jsonb)
LANGUAGE plpgsql SET plan_cache_mode = {claim_task.PLANS} AS $$
DECLARE
  cur taskstatus;
  nxt taskstatus;
  got record;
BEGIN
  -- The stage's success, fenced by the claim token.
  UPDATE tasks t SET
      {_assignments(finish)}
    WHERE t.id = p_task AND t.status = p_status AND t.claim_token = p_token
    RETURNING t.status INTO cur;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  INSERT INTO task_events (task_id, from_status, to_status, actor, note, created_at)
    VALUES (p_task, p_status, cur, p_worker, NULL, p_now);
  -- The automatic moves after it, each guarded by the status it leaves.
  LOOP
    nxt := {_step_case(steps)};
    EXIT WHEN nxt IS NULL;
    UPDATE tasks t SET status = nxt, updated_at = p_now WHERE t.id = p_task AND t.status = cur;
    INSERT INTO task_events (task_id, from_status, to_status, actor, note, created_at)
      VALUES (p_task, cur, nxt,
              CASE WHEN {_step_text(steps, 1)} IS NULL THEN p_worker ELSE '{approver}' END,
              {_step_text(steps, 2)}, p_now);
    cur := nxt;
  END LOOP;
  rest := cur;
  -- The next stage, claimed as any claim of this task would be.
  IF p_carry AND cur IN ({start_list}) THEN
    SELECT c.* INTO got FROM {claim_task.FUNCTION}(p_worker, p_lease_s, p_now, p_task, true) c;
    IF FOUND THEN
      rest := got.to_status; task_id := got.task_id; from_status := got.from_status;
      to_status := got.to_status; claim_token := got.claim_token; attempt := got.attempt;
      run := got.run;
      SELECT t.title, t.topic, t.story_direction, t.artifacts
        INTO title, topic, story_direction, artifacts FROM tasks t WHERE t.id = p_task;
    END IF;
  END IF;
  RETURN NEXT;
END
$$"""


def render_batch(next_stage: Mapping[str, str]) -> str:
    """``stage_boundaries``: ``stage_boundary`` for each task of the arrays (one statement, one
    commit), from the frozen ``next_stage`` (``next_stages``). Rows come back numbered as the
    arrays (``n``); a refused boundary's row has a NULL ``rest``.

    Several carries in one transaction could deadlock with each other's locks (a capped
    channel's row, a quota bucket) taken in different orders, so every lock a carry may wait
    for is taken first, in one global order: the capped channels' rows by id, then the quota
    buckets of each task's next stage by key (as a single claim takes them: channel row, then
    buckets). The claims then find them held by this transaction and do not wait."""
    whens = " ".join(f"WHEN '{active}' THEN '{stage}'" for active, stage in next_stage.items())
    shared, every = claim_task.SHARED, claim_task.EVERY_STAGE
    return f"""CREATE FUNCTION {BOUNDARIES}(
  p_tasks uuid[], p_tokens uuid[], p_statuses taskstatus[], p_outputs jsonb[], p_urls text[],
  p_worker text, p_lease_s double precision, p_now timestamptz, p_auto text[],
  p_carry boolean)
RETURNS TABLE (n integer, rest taskstatus, task_id uuid, from_status taskstatus,
               to_status taskstatus, claim_token uuid, attempt integer, run integer,
               title text, topic text, story_direction text, artifacts jsonb)
LANGUAGE plpgsql SET lock_timeout = '{claim_task.LOCK_TIMEOUT}'
  SET plan_cache_mode = {claim_task.PLANS} AS $$
DECLARE
  got record;
  bk_ch uuid[];
  bk_q integer[];
  bk_st text[];
BEGIN
  IF p_carry THEN
    PERFORM 1 FROM channels c WHERE c.max_concurrent IS NOT NULL
      AND c.id IN (SELECT t.channel_id FROM tasks t WHERE t.id = ANY (p_tasks))
      ORDER BY c.id FOR NO KEY UPDATE;
    IF EXISTS (SELECT 1 FROM quotas) THEN
      SELECT coalesce(array_agg(k.channel_id ORDER BY k.channel_id, k.quota_id), '{{}}'),
             coalesce(array_agg(k.quota_id ORDER BY k.channel_id, k.quota_id), '{{}}'),
             coalesce(array_agg(k.stage ORDER BY k.channel_id, k.quota_id), '{{}}')
        INTO bk_ch, bk_q, bk_st
        FROM (SELECT DISTINCT CASE WHEN q.per_channel THEN t.channel_id
                                   ELSE '{shared}'::uuid END AS channel_id,
                     q.id AS quota_id, q.stage
              FROM unnest(p_tasks, p_statuses) x (id, status)
              JOIN tasks t ON t.id = x.id
              JOIN quotas q ON q.stage IN (CASE x.status::text {whens} END, '{every}')) k;
      INSERT INTO quota_usage (channel_id, quota_id, stage)
        SELECT k.ch, k.q, k.st FROM unnest(bk_ch, bk_q, bk_st) WITH ORDINALITY k (ch, q, st, o)
        ORDER BY k.o ON CONFLICT DO NOTHING;
      PERFORM 1 FROM quota_usage u
        WHERE (u.channel_id, u.quota_id) IN (SELECT k.ch, k.q FROM unnest(bk_ch, bk_q) k (ch, q))
        ORDER BY u.channel_id, u.quota_id FOR UPDATE;
    END IF;
  END IF;
  FOR i IN 1 .. cardinality(p_tasks) LOOP
    SELECT b.* INTO got FROM {BOUNDARY}(p_tasks[i], p_tokens[i], p_statuses[i], p_outputs[i],
                                        p_urls[i], p_worker, p_lease_s, p_now, p_auto,
                                        p_carry) b;
    n := i;
    IF FOUND THEN
      rest := got.rest; task_id := got.task_id; from_status := got.from_status;
      to_status := got.to_status; claim_token := got.claim_token; attempt := got.attempt;
      run := got.run; title := got.title; topic := got.topic;
      story_direction := got.story_direction; artifacts := got.artifacts;
    ELSE
      rest := NULL; task_id := NULL; from_status := NULL; to_status := NULL;
      claim_token := NULL; attempt := NULL; run := NULL; title := NULL; topic := NULL;
      story_direction := NULL; artifacts := NULL;
    END IF;
    RETURN NEXT;
  END LOOP;
END
$$"""


def render_pick_up() -> str:
    """``pick_up``: the workers' pick-up in one round trip (``pick_channel``, committed, then
    ``claim_task`` in a transaction of its own), returning the stage's input with the claim. A
    procedure, called on its own (``CALL``, no transaction open)."""
    return f"""CREATE PROCEDURE {PICK_UP}(
  p_worker text, p_lease_s double precision, p_now timestamptz, p_start boolean,
  INOUT task_id uuid DEFAULT NULL, INOUT from_status taskstatus DEFAULT NULL,
  INOUT to_status taskstatus DEFAULT NULL, INOUT claim_token uuid DEFAULT NULL,
  INOUT attempt integer DEFAULT NULL, INOUT run integer DEFAULT NULL,
  INOUT title text DEFAULT NULL, INOUT topic text DEFAULT NULL,
  INOUT story_direction text DEFAULT NULL, INOUT artifacts jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  skip uuid[] := '{{}}';
  ch uuid;
  tk bigint;
  want uuid;
  got record;
BEGIN
  LOOP
    SELECT p.channel, p.ticket, p.task INTO ch, tk, want
      FROM {claim_task.PICK}(p_now, true, skip) p;
    EXIT WHEN NOT FOUND;
    COMMIT;
    SELECT c.* INTO got
      FROM {claim_task.FUNCTION}(p_worker, p_lease_s, p_now, want, p_start, ch, tk) c;
    IF FOUND THEN
      task_id := got.task_id; from_status := got.from_status; to_status := got.to_status;
      claim_token := got.claim_token; attempt := got.attempt; run := got.run;
      SELECT t.title, t.topic, t.story_direction, t.artifacts
        INTO title, topic, story_direction, artifacts FROM tasks t WHERE t.id = got.task_id;
      RETURN;
    END IF;
    -- Nothing to take there (its pick given back): pick again without that channel.
    COMMIT;
    skip := skip || ch;
  END LOOP;
END
$$"""


def drop() -> list[str]:
    return [f"DROP FUNCTION IF EXISTS {BOUNDARIES}(uuid[], uuid[], taskstatus[], jsonb[], text[],"
            " text, double precision, timestamptz, text[], boolean)",
            f"DROP FUNCTION IF EXISTS {BOUNDARY}(uuid, uuid, taskstatus, jsonb, text, text,"
            " double precision, timestamptz, text[], boolean)",
            f"DROP PROCEDURE IF EXISTS {PICK_UP}(text, double precision, timestamptz, boolean,"
            " uuid, taskstatus, taskstatus, uuid, integer, integer, text, text, text, jsonb)"]
