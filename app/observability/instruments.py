"""The counters and histograms a worker process keeps as it claims, runs and reaps stages, and
the Notion sync's rounds and errors.

They live in ``prometheus_client``'s default registry, one set per process, which is what
``endpoint.serve`` exposes on ``METRICS_PORT``. Every label takes a value from a closed set (a
stage name, an outcome, a status, an error kind), so no label grows with the number of tasks.
Counting never fails the work: these calls touch memory only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

from prometheus_client import Counter, Histogram

from app.errors import NotionConfigError, NotionUnavailable
from app.lifecycle import ERROR, STAGE_BY_ACTIVE, TaskStatus
from app.moves import Claim

#: How a stage run ended: recorded (done state), failed (attempt spent, including a stage
#: cancelled by its job's timeout), handed back (worker stopping, task put on hold), rate
#: limited (the provider said wait: handed back to wait, its quotas paused) or lost (its lease
#: was reaped or could not be renewed; the outcome was discarded).
SUCCESS, FAILURE, HANDED_BACK, RATE_LIMITED, LOST = (
    "success", "failure", "handed_back", "rate_limited", "lost")

#: From a simulated 0.2 s stage to a half-hour render.
STAGE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

STAGE_DURATION = Histogram(
    "pipeline_stage_duration_seconds", "Time a stage ran in this worker, by how it ended.",
    ["stage", "outcome"], buckets=STAGE_BUCKETS_S)
CLAIMS = Counter("pipeline_claims_total",
                 "Stages this worker claimed (a pick-up, a continuation or a retry).", ["stage"])
RETRIES = Counter("pipeline_retries_total",
                  "Claims that resume a failed stage from its error state.", ["stage"])
HAND_BACKS = Counter("pipeline_hand_backs_total",
                     "Stages handed back unfinished (no attempt spent): a stop, a hold, a"
                     " provider's rate limit.", ["stage"])
REAPS = Counter("pipeline_reaps_total",
                "Tasks this worker's sweep took back after their lease expired, by the status"
                " they were reaped from.", ["status"])
SYNC_ROUNDS = Counter("pipeline_sync_rounds_total", "Notion sync rounds, by how they ended.",
                      ["outcome"])
NOTION_ERRORS = Counter(
    "pipeline_notion_errors_total",
    "Notion sync problems: bad pages, refused status edits, failed pushes, outages.", ["kind"])


M = TypeVar("M", Counter, Histogram)


@functools.cache
def _child(metric: M, *values: str) -> M:
    """``metric.labels(*values)``, looked up once: a worker counts every stage, and the
    look-up (label checks under the metric's lock) cost more than the count."""
    return metric.labels(*values)


def stage_ended(stage: str, outcome: str, seconds: float) -> None:
    _child(STAGE_DURATION, stage, outcome).observe(seconds)


def stage_stopped(stage: str, seconds: float, *, lost: bool, handed_back: bool) -> None:
    """A stage cancelled while it ran: its lease lost, handed back, or (a job timeout, an
    abort) counted as a failure, as the runner records it."""
    outcome = LOST if lost else HANDED_BACK if handed_back else FAILURE
    stage_ended(stage, outcome, seconds)


def claimed(claim: Claim | None) -> Claim | None:
    """Count a claim (None: nothing was claimed) and pass it through."""
    if claim is not None and claim.status in STAGE_BY_ACTIVE:
        stage = STAGE_BY_ACTIVE[claim.status].name
        _child(CLAIMS, stage).inc()
        if claim.from_status in ERROR:
            _child(RETRIES, stage).inc()
    return claim


def handed_back(status: TaskStatus) -> None:
    if status in STAGE_BY_ACTIVE:
        HAND_BACKS.labels(STAGE_BY_ACTIVE[status].name).inc()


class _Reaped(Protocol):
    @property
    def status(self) -> TaskStatus: ...


def reaped(tasks: Iterable[_Reaped]) -> None:
    for task in tasks:
        REAPS.labels(task.status.value).inc()


def notion_error(kind: str) -> None:
    NOTION_ERRORS.labels(kind).inc()


@contextmanager
def sync_round() -> Iterator[None]:
    """Count the round the block runs by how it ends: ``ok``, ``unavailable`` (an outage,
    also a Notion error), ``misconfigured``, or ``failed``."""
    try:
        yield
    except NotionUnavailable:
        SYNC_ROUNDS.labels("unavailable").inc()
        notion_error("unavailable")
        raise
    except NotionConfigError:
        SYNC_ROUNDS.labels("misconfigured").inc()
        raise
    except Exception:
        SYNC_ROUNDS.labels("failed").inc()
        raise
    SYNC_ROUNDS.labels("ok").inc()
