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
    artifacts: Mapping[str, Any]


Handler = Callable[[StageInput], Awaitable[dict[str, Any]]]
Registry = Mapping[str, Handler]


class StageFailed(Exception):
    """A handler's way to fail a stage with a clean message."""


_FAIL = re.compile(r"\[fail:(?P<stage>[a-z]+)(?::(?P<times>\d+))?\]")


def simulated_failures(title: str, stage: str) -> int | None:
    """How many first attempts of ``stage`` fail per the title's ``[fail:STAGE[:N]]`` markers
    (None: none; a marker without N fails every attempt)."""
    for match in _FAIL.finditer(title):
        if match["stage"] == stage:
            return int(match["times"]) if match["times"] else 1_000_000
    return None


def simulated(seconds: float) -> Registry:
    """Handlers that take ``seconds`` and write a deterministic artefact record per stage."""

    def make(stage: str) -> Handler:
        async def handler(task: StageInput) -> dict[str, Any]:
            await asyncio.sleep(seconds)
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
