"""The transition table as a graph: checked without a database."""

from __future__ import annotations

from collections import deque

from app import lifecycle
from app.lifecycle import (
    ACTIVE,
    ERROR,
    GATE_STATES,
    RUNNABLE,
    STAGES,
    TERMINAL,
    TRANSITIONS,
    PriorityLevel,
    TaskStatus,
)


def test_statuses_in_contract_order() -> None:
    assert [s.value for s in TaskStatus] == [
        "draft", "queued", "claimed", "generating_assets", "assets_ready", "assets_approved",
        "generating_composites", "composites_ready", "generating_video", "video_ready",
        "video_approved", "generating_audio", "audio_ready", "audio_approved", "generating_sfx",
        "sfx_ready", "assembling", "assembly_ready", "final_review", "approved", "uploading",
        "published", "asset_error", "video_error", "audio_error", "upload_error"]
    assert [p.value for p in PriorityLevel] == ["high", "normal", "low"]


def test_table_covers_every_status_and_has_37_edges() -> None:
    assert set(TRANSITIONS) == set(TaskStatus)
    assert len(lifecycle.allowed_pairs()) == 37


def test_one_initial_one_terminal_everything_reachable() -> None:
    seen, todo = {lifecycle.INITIAL}, deque([lifecycle.INITIAL])
    while todo:
        for nxt in TRANSITIONS[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(TaskStatus)
    assert {TaskStatus.published} == TERMINAL


def test_no_traps_published_reachable_from_everywhere() -> None:
    reverse: dict[TaskStatus, set[TaskStatus]] = {s: set() for s in TaskStatus}
    for src, dsts in TRANSITIONS.items():
        for dst in dsts:
            reverse[dst].add(src)
    seen, todo = {TaskStatus.published}, deque([TaskStatus.published])
    while todo:
        for prev in reverse[todo.popleft()]:
            if prev not in seen:
                seen.add(prev)
                todo.append(prev)
    assert seen == set(TaskStatus)


def test_stages_chain_and_every_retry_edge_is_a_stage_restart() -> None:
    for stage in STAGES:
        assert lifecycle.is_allowed(stage.start, stage.active)
        assert lifecycle.is_allowed(stage.active, stage.done)
        assert lifecycle.is_allowed(stage.active, stage.error)
        assert lifecycle.is_allowed(stage.error, stage.active)  # the retry edge
    for error in ERROR:
        assert set(TRANSITIONS[error]) == set(lifecycle.RETRY_EDGES[error].values())


def test_named_sets() -> None:
    assert len(ACTIVE) == 8 and TaskStatus.claimed in ACTIVE
    assert {TaskStatus.asset_error, TaskStatus.video_error, TaskStatus.audio_error,
                     TaskStatus.upload_error} == ERROR
    assert {TaskStatus.assets_ready, TaskStatus.video_ready,
                           TaskStatus.audio_ready, TaskStatus.final_review} == GATE_STATES
    assert {TaskStatus.queued, TaskStatus.assets_approved,
                        TaskStatus.composites_ready, TaskStatus.video_approved,
                        TaskStatus.audio_approved, TaskStatus.sfx_ready,
                        TaskStatus.assembly_ready, TaskStatus.approved} == RUNNABLE
    # Only workers enter active states: no gate, wait or error leads into one except retries.
    for src, dsts in TRANSITIONS.items():
        if dsts & ACTIVE:
            assert src in RUNNABLE | ERROR | {TaskStatus.claimed}, src
