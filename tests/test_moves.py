"""The rules of a move (``app.moves``), pure: what each move writes, where a retry resumes,
when attempts run out. No database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app import lifecycle, moves
from app.lifecycle import GATES, STAGES, TaskStatus
from app.moves import AppendLine, Claim, MergeArtifact

S = TaskStatus
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _held(status: TaskStatus, *, attempt: int = 1, run: int = 1) -> Claim:
    return Claim(uuid.uuid4(), status, status, uuid.uuid4(), attempt, run)


@pytest.mark.parametrize("stage", STAGES, ids=lambda st: st.name)
def test_resume_stage_is_the_recorded_one_or_the_earliest_of_its_kind(
        stage: lifecycle.Stage) -> None:
    assert moves.resume_stage(stage.error, stage.name) is stage
    earliest = next(st for st in STAGES if st.error is stage.error)
    assert moves.resume_stage(stage.error, None) is earliest
    assert moves.resume_stage(stage.error, "no-such-stage") is earliest
    other = next(st for st in STAGES if st.error is not stage.error)
    assert moves.resume_stage(stage.error, other.name) is earliest   # not of this error kind


@pytest.mark.parametrize("stage", STAGES, ids=lambda st: st.name)
def test_a_failure_records_its_stage_and_spends_the_attempt(stage: lifecycle.Stage) -> None:
    move = moves.fail(_held(stage.active, attempt=1), message="boom", max_attempts=3,
                      backoff_s=5, now=NOW)
    assert (move.current, move.target) == (stage.active, stage.error)
    assert move.changes["failed_stage"] == stage.name
    assert move.changes["attempts"] == 1
    assert move.changes["retry_at"] == NOW + timedelta(seconds=5)
    assert move.changes["claim_token"] is None and move.changes["claimed_by"] is None
    assert move.note == "boom (attempt 1/3; retry in 5s)"
    line = move.changes["error_log"]
    assert isinstance(line, AppendLine) and "boom (attempt 1/3" in line.line
    # the claim resumes exactly there
    assert moves.claim_target(stage.error, stage.name, start=True) is stage.active


def test_backoff_doubles_and_the_last_attempt_waits_for_an_operator() -> None:
    delays = [moves.fail(_held(S.generating_video, attempt=n), message="x", max_attempts=4,
                         backoff_s=5, now=NOW).changes["retry_at"] for n in (1, 2, 3, 4)]
    assert delays[:3] == [NOW + timedelta(seconds=s) for s in (5, 10, 20)]
    assert delays[3] is None
    last = moves.fail(_held(S.generating_video, attempt=4), message="x", max_attempts=4,
                      backoff_s=5, now=NOW)
    assert last.note == "x (attempt 4/4; no attempts left)"


def test_a_reaped_stage_spends_its_attempt_and_is_due_at_once() -> None:
    move = moves.fail(_held(S.uploading, attempt=2), message="lease expired", max_attempts=3,
                      backoff_s=60, now=NOW, due_now=True)
    assert move.changes["attempts"] == 2 and move.changes["retry_at"] == NOW
    assert move.note == "lease expired (attempt 2/3; retry now)"
    spent = moves.fail(_held(S.uploading, attempt=3), message="lease expired",
                       max_attempts=3, backoff_s=60, now=NOW, due_now=True)
    assert spent.changes["retry_at"] is None          # a task that kills its worker stops


@pytest.mark.parametrize("stage", STAGES, ids=lambda st: st.name)
def test_a_hand_back_keeps_the_status_and_spends_nothing(stage: lifecycle.Stage) -> None:
    move = moves.hand_back(_held(stage.active, attempt=2, run=5), reason="worker stopping",
                           now=NOW)
    assert move.current is move.target is stage.active
    assert move.changes["attempts"] == 1 and move.changes["stage_runs"] == 4
    assert move.changes["claim_token"] is None and move.changes["lease_expires_at"] is None
    assert "error_log" not in move.changes and "failed_stage" not in move.changes
    assert move.note == "handed back: worker stopping"
    assert moves.claim_target(stage.active, None, start=True) is stage.active   # taken over


def test_a_claimed_task_handed_back_is_queued_again() -> None:
    move = moves.hand_back(_held(S.claimed, attempt=2, run=4), reason="stop", now=NOW)
    assert move.target is S.queued
    assert "attempts" not in move.changes and "stage_runs" not in move.changes


@pytest.mark.parametrize("stage", STAGES, ids=lambda st: st.name)
def test_a_success_stores_the_output_and_starts_a_fresh_budget(stage: lifecycle.Stage) -> None:
    move = moves.finish(_held(stage.active, attempt=3, run=7),
                        artefacts={"youtube_url": "https://youtu.be/x"}, now=NOW)
    assert move.target is stage.done
    assert (move.changes["attempts"], move.changes["stage_runs"]) == (0, 0)
    assert move.changes["artifacts"] == MergeArtifact(stage.name,
                                                      {"youtube_url": "https://youtu.be/x"})
    if stage.done is S.published:
        assert move.changes["youtube_url"] == "https://youtu.be/x"
        assert move.changes["published_at"] == NOW
    else:
        assert "youtube_url" not in move.changes and "published_at" not in move.changes


def test_a_requeue_gives_a_fresh_budget_due_now() -> None:
    assert moves.requeue(NOW) == {"retry_at": NOW, "attempts": 0, "updated_at": NOW}


def test_claim_targets_cover_every_claimable_status() -> None:
    table = moves.claim_targets()
    claimable = {S.queued, *moves.STARTS, *lifecycle.ERROR, *lifecycle.ACTIVE}
    assert {status for status, _, _ in table} == claimable
    for (status, failed, _start), target in table.items():
        assert target in lifecycle.ACTIVE
        if status is not target and (status, target) not in lifecycle.CLAIM_STARTS:
            assert lifecycle.is_allowed(status, target), (status, target)
        if status in lifecycle.ERROR:
            assert target is moves.resume_stage(status, failed).active
    assert table[(S.queued, None, True)] is S.generating_assets
    assert table[(S.queued, None, False)] is S.claimed


def test_automatic_steps_follow_the_table_and_the_auto_approved_gates() -> None:
    assert moves.automatic_step(S.assembly_ready, frozenset()) == moves.Step(
        S.final_review, None, False)
    assert moves.automatic_step(S.video_ready, frozenset()) is None
    step = moves.automatic_step(S.video_ready, frozenset({"video"}))
    assert step == moves.Step(S.video_approved, "video auto-approved", True)


@pytest.mark.parametrize(("status", "failed", "passed"), [
    (S.queued, None, set()),
    (S.generating_assets, None, set()),
    (S.assets_ready, None, set()),
    (S.asset_error, "assets", set()),
    (S.assets_approved, None, {"assets"}),
    (S.asset_error, "composites", {"assets"}),
    (S.generating_composites, None, {"assets"}),
    (S.video_ready, None, {"assets"}),
    (S.video_error, "video", {"assets"}),
    (S.video_approved, None, {"assets", "video"}),
    (S.audio_ready, None, {"assets", "video"}),
    (S.audio_error, "sfx", {"assets", "video", "audio"}),
    (S.assembly_ready, None, {"assets", "video", "audio"}),
    (S.video_error, "assembly", {"assets", "video", "audio"}),
    (S.final_review, None, {"assets", "video", "audio"}),
    (S.approved, None, {"assets", "video", "audio", "final"}),
    (S.upload_error, "upload", {"assets", "video", "audio", "final"}),
    (S.published, None, {"assets", "video", "audio", "final"}),
])
def test_which_gates_a_task_has_passed(status: TaskStatus, failed: str | None,
                                       passed: set[str]) -> None:
    assert {g.name for g in GATES if moves.past_gate(status, failed, g)} == passed
