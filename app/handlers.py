"""Stage handlers: the work each stage does, behind one small interface.

A handler is ``async def handler(task: StageInput) -> dict`` returning the stage's artefacts
(stored under ``tasks.artifacts[stage]``); raising means the stage failed (the message goes to
``error_log``). A registry maps every stage name to its handler; ``STAGE_HANDLERS`` picks one:
``simulated`` or a dotted path ``package.module:REGISTRY`` (or ``package.module.REGISTRY``).
Handlers run with no database transaction open and must keep the event loop free (run media
tools in subprocesses or executors).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.lifecycle import STAGE_BY_NAME


@dataclass(frozen=True)
class StageInput:
    """What a handler sees of its task."""

    task_id: uuid.UUID
    stage: str
    title: str
    topic: str | None
    story_direction: str | None
    #: 1 for the stage's first run on this task, counting every retry and requeue.
    attempt: int
    #: The earlier stages' outputs by stage name: read-only, decoded when first read
    #: (``dict(...)`` for a copy to change or serialise).
    artifacts: Mapping[str, Any]


Handler = Callable[[StageInput], Awaitable[dict[str, Any]]]
Registry = Mapping[str, Handler]


class StageFailed(Exception):
    """A handler's way to fail a stage with a clean message."""


class RateLimited(Exception):
    """A handler's provider refused for now (HTTP 429, a quota): the stage is handed back
    without an error and without spending its attempt, the task waits ``retry_after_s``, and
    every quota its stage counts against pauses as long, for every task that shares it."""

    def __init__(self, retry_after_s: float, message: str = "rate limited") -> None:
        if not retry_after_s >= 0:
            raise ValueError(f"retry_after_s must be a number of seconds >= 0, not {retry_after_s}")
        self.retry_after_s = float(retry_after_s)
        super().__init__(f"{message} (retry after {self.retry_after_s:g} s)")


_FAIL = re.compile(r"\[fail:(?P<stage>[a-z]+)(?::(?P<times>\d+))?\]")


def simulated_failures(title: str, stage: str) -> int | None:
    """How many first attempts of ``stage`` fail per the title's ``[fail:STAGE[:N]]`` markers
    (None: none; a marker without N fails every attempt)."""
    for match in _FAIL.finditer(title):
        if match["stage"] == stage:
            return int(match["times"]) if match["times"] else 1_000_000
    return None


_LIMIT = re.compile(r"\[ratelimit:(?P<stage>[a-z]+):(?P<seconds>\d+(?:\.\d+)?)\]")


def simulated_rate_limit(title: str, stage: str) -> float | None:
    """The pause a title's ``[ratelimit:STAGE:SECONDS]`` marker asks of the stage's first run."""
    for match in _LIMIT.finditer(title):
        if match["stage"] == stage:
            return float(match["seconds"])
    return None


def simulated(seconds: float) -> Registry:
    """Handlers that take ``seconds`` and write a deterministic artefact record per stage.

    Titles steer them: ``[fail:STAGE[:N]]`` fails the first N runs of a stage;
    ``[ratelimit:STAGE:SECONDS]`` has this process's first run of it raise ``RateLimited``."""
    refused: set[tuple[uuid.UUID, str]] = set()

    def make(stage: str) -> Handler:
        async def handler(task: StageInput) -> dict[str, Any]:
            await asyncio.sleep(seconds)
            limited = simulated_rate_limit(task.title, stage)
            if limited is not None and (task.task_id, stage) not in refused:
                refused.add((task.task_id, stage))      # a hand-back spends no run: remember
                raise RateLimited(limited, f"simulated {stage} rate limit")
            failures = simulated_failures(task.title, stage)
            if failures is not None and task.attempt <= failures:
                raise StageFailed(f"simulated {stage} failure on attempt {task.attempt}")
            digest = hashlib.sha256(f"{task.task_id}:{stage}".encode()).hexdigest()[:16]
            artefact: dict[str, Any] = {"uri": f"sim://{task.task_id}/{stage}/{digest}",
                                        "attempt": task.attempt, "seconds": seconds}
            if stage == "upload":
                artefact["youtube_url"] = f"https://youtu.be/{digest[:11]}"
            return artefact

        return handler

    return {name: make(name) for name in STAGE_BY_NAME}


def load_registry(spec: str, *, simulated_s: float) -> Registry:
    """The registry named by ``STAGE_HANDLERS``; every stage must have a handler."""
    if spec == "simulated":
        return simulated(simulated_s)
    module_name, _, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    registry = getattr(importlib.import_module(module_name), attr)
    missing = set(STAGE_BY_NAME) - set(registry)
    if missing:
        raise ValueError(f"STAGE_HANDLERS={spec}: no handler for {', '.join(sorted(missing))}")
    return dict(registry)
