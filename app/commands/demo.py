"""``pipeline demo``: the whole pipeline with real worker processes, on data of its own.

Creates three channels (one capped at two active tasks), enqueues tasks of mixed priority (two
of them fail their video stage until an operator requeues them) and starts real ``pipeline
worker`` processes that pass every review gate but the final one. It draws the live view of
``pipeline stats --watch`` (``app.commands.watch``) with the latest errors and retries, requeues
the tasks out of attempts, and once every task waits at the final gate prints the command a
person would run and runs that approval through the service layer. It ends with a summary when
every task is published.

Where its data lives is ``app.commands.demo_data``: servers of its own under a data directory
of its own, or, with ``DATABASE_URL``, its own channels in that database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from rich.console import Group
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import lifecycle, moves
from app.commands import batches, demo_data, operations, tables, watch
from app.commands.demo_data import CHANNELS, Place
from app.config import Settings, get_settings
from app.db import migrate, session_scope
from app.db.models import Task, TaskEvent
from app.errors import ChannelExists, PipelineError
from app.execution import wakeups
from app.lifecycle import ERROR, GATE_BY_NAME, GATES, STAGE_BY_ACTIVE, PriorityLevel, TaskStatus
from app.schemas import TaskCreate
from app.services import channels, tasks, transitions
from app.services.transitions import ApprovalPlan

Sessions = async_sessionmaker[AsyncSession]
Statuses = Counter[TaskStatus]

#: The one review gate a person passes in the demo; the workers pass the others themselves.
GATE = GATE_BY_NAME["final"]
AUTO_APPROVED = tuple(gate.name for gate in GATES if gate is not GATE)
#: The demo's worker environment: simulated stages, fast, two attempts a stage.
WORKER_ENV = {"STAGE_HANDLERS": "simulated", "AUTO_APPROVE_GATES": ",".join(AUTO_APPROVED),
              "SIMULATED_STAGE_SECONDS": "0.05", "STAGE_MAX_ATTEMPTS": "2",
              "RETRY_BACKOFF_SECONDS": "0.2", "SWEEP_INTERVAL_SECONDS": "1",
              "LEASE_SECONDS": "10", "WORKER_CONCURRENCY": "4"}
FAILING = 2   # tasks whose video stage fails both automatic attempts
DEADLINE_S = 300
TICK_S = 0.25
EVENTS = 3    # the latest errors and retries the view keeps
GATE_PAUSE_S = 1.5
ACTOR = "demo-operator"


class DemoFailed(PipelineError):
    """The demo could not finish."""


def count(value: str) -> int:
    """An argparse type: a whole number of at least one."""
    number = int(value) if value.isdigit() else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return number


@dataclass
class Run:
    """What the demo follows: its tasks, its workers, and what it showed so far."""

    task_ids: list[uuid.UUID]
    procs: list[subprocess.Popen[bytes]]
    redis_url: str
    place: Place
    began: float = field(default_factory=time.monotonic)
    phase: str = f"stops at the {GATE.name} gate"
    requeued: set[uuid.UUID] = field(default_factory=set)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=EVENTS))
    last_event: int = 0


async def prepare(settings: Settings, *, reset: bool) -> tuple[Place, str, str]:
    """The demo's place, wiped first with ``reset``, and its database and Redis URLs."""
    place = Place.of(settings)
    if reset:
        demo_data.wipe(place)
    url, redis_url = await demo_data.open_servers(place, settings)
    return place, url, redis_url


async def run(sessions: Sessions, place: Place, *, url: str, redis_url: str, workers: int,
              tasks: int, reset: bool) -> int:
    screen = watch.Screen(watch.console())
    task_ids = await _set_up(sessions, place, screen, url=url, tasks=tasks, reset=reset)
    await wakeups.wake_url(redis_url, len(task_ids), queue_name=get_settings().queue_name)
    follow = Run(task_ids, _start_workers(workers, place, url, redis_url, screen), redis_url,
                 place)
    try:
        elapsed = await _drive(sessions, follow, screen)
    finally:
        stop_workers(follow.procs)
    await _summary(sessions, task_ids, elapsed)
    return 0


async def _set_up(sessions: Sessions, place: Place, screen: watch.Screen, *, url: str,
                  tasks: int, reset: bool) -> list[uuid.UUID]:
    """Say where the data lives, migrate, (on a shared database) reset and check, then create
    the channels and enqueue the tasks."""
    for line, wrap in place.describe():
        screen.note(line, wrap=wrap)
    await migrate.upgrade(url)
    if place.shared_database:
        if reset:
            screen.note(f"reset: deleted {await demo_data.delete_rows(sessions)} demo task(s)")
        await demo_data.refuse_other_work(sessions)
    await _ensure_channels(sessions, screen)
    task_ids = await _enqueue(sessions, tasks, screen)
    screen.note(f"review: every task stops at the {GATE.name} gate for a person to approve;")
    screen.note(f"the other gates ({', '.join(AUTO_APPROVED)}) are auto-approved for the demo")
    return task_ids


async def _drive(sessions: Sessions, follow: Run, screen: watch.Screen) -> float:
    """Follow the run to the gate, pass it, follow it to the end; the seconds it took."""
    try:
        with screen:
            await asyncio.wait_for(_follow(sessions, follow, screen, until=_all_at_gate),
                                   DEADLINE_S)
            await _approve(sessions, follow, screen)
            left_s = DEADLINE_S - (time.monotonic() - follow.began)
            await asyncio.wait_for(_follow(sessions, follow, screen, until=_all_published),
                                   max(left_s, 1))
    except TimeoutError:
        raise DemoFailed(f"not finished within {DEADLINE_S}s; worker output is in "
                         f"{follow.place.logs_dir}") from None
    return time.monotonic() - follow.began


async def _ensure_channels(sessions: Sessions, screen: watch.Screen) -> None:
    for data in CHANNELS:
        try:
            async with session_scope(sessions) as session:
                await channels.create_channel(session, data)
        except ChannelExists:
            pass
    screen.note("channels: " + ", ".join(
        f"{c.channel_id} (max {c.max_concurrent or '∞'})" for c in CHANNELS))


async def _enqueue(sessions: Sessions, total: int, screen: watch.Screen) -> list[uuid.UUID]:
    priorities = [PriorityLevel.normal, PriorityLevel.high, PriorityLevel.normal,
                  PriorityLevel.low]
    ids = []
    async with session_scope(sessions) as session:
        for i in range(total):
            marker = " [fail:video:2]" if i < FAILING else ""
            data = TaskCreate(notion_page_id=uuid.uuid4().hex, title=f"Video {i + 1}{marker}",
                              channel=CHANNELS[i % len(CHANNELS)].channel_id,
                              priority=priorities[i % len(priorities)])
            ids.append((await tasks.enqueue(session, data, actor="demo")).task_id)
    failing = min(FAILING, total)
    screen.note(f"enqueued {len(ids)} tasks ({failing} will fail their video stage twice)")
    return ids


def _start_workers(count: int, place: Place, url: str, redis_url: str,
                   screen: watch.Screen) -> list[subprocess.Popen[bytes]]:
    env = os.environ | WORKER_ENV | {"DATABASE_URL": url, "REDIS_URL": redis_url,
                                     "PIPELINE_DATA_DIR": str(place.data_dir)}
    place.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    procs = []
    for i in range(count):
        with (place.logs_dir / f"worker-{i + 1}.log").open("wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "app", "worker"], env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
    screen.note(f"started {count} worker processes (pids {', '.join(str(p.pid) for p in procs)})")
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every live worker (they finish or hand back their stages), then wait; kill one
    that outlives arq's grace period."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- following the run --------------------------------------------------------------------


def _all_at_gate(statuses: Statuses) -> bool:
    return statuses[GATE.waiting] == statuses.total()


def _all_published(statuses: Statuses) -> bool:
    return statuses[TaskStatus.published] == statuses.total()


async def _follow(sessions: Sessions, follow: Run, screen: watch.Screen, *,
                  until: Callable[[Statuses], bool]) -> None:
    """Redraw every tick until ``until`` holds for the run's tasks; meanwhile requeue the
    tasks out of attempts, as an operator would."""
    while True:
        async with session_scope(sessions) as session:
            rows = (await session.execute(
                sa.select(Task.id, Task.status, Task.retry_at, Task.title)
                .where(Task.id.in_(follow.task_ids)))).all()
            board = await watch.collect(session, now=moves.utcnow())
            fresh = await _new_events(session, follow)
        statuses = Counter(row.status for row in rows)
        for line in fresh:
            follow.events.append(line)
            if not screen.redraws:
                screen.note(line)
        screen.draw(_view(follow, board, statuses), _plain(statuses),
                    stamp=f"{time.monotonic() - follow.began:5.1f}s  ")
        if until(statuses):
            return
        exhausted = [row for row in rows if row.status in ERROR and row.retry_at is None
                     and row.id not in follow.requeued]
        await _requeue(sessions, follow, exhausted, screen)
        _check_workers(follow)
        await asyncio.sleep(TICK_S)


async def _new_events(session: AsyncSession, follow: Run) -> list[str]:
    """The run's errors, retries and requeues recorded since the last look, one line each."""
    found = (await session.execute(
        sa.select(TaskEvent.id, TaskEvent.from_status, TaskEvent.to_status, TaskEvent.actor,
                  TaskEvent.note, TaskEvent.created_at, Task.title)
        .join(Task, Task.id == TaskEvent.task_id)
        .where(TaskEvent.task_id.in_(follow.task_ids), TaskEvent.id > follow.last_event,
               sa.or_(TaskEvent.to_status.in_(ERROR), TaskEvent.from_status.in_(ERROR)))
        .order_by(TaskEvent.id))).all()
    if found:
        follow.last_event = found[-1].id
    return [_event_line(*row[1:]) for row in found]


def _event_line(src: TaskStatus | None, dst: TaskStatus, actor: str, note: str | None,
                at: datetime, title: str) -> str:
    if src in STAGE_BY_ACTIVE:
        detail = (note or "").rpartition(" (")[2].rstrip(")") or note or dst.value
        what = f"{STAGE_BY_ACTIVE[src].name} failed ({detail})"
    elif dst in STAGE_BY_ACTIVE:
        what = f"{STAGE_BY_ACTIVE[dst].name} retried"
    else:
        what = f"requeued by {actor}"
    return f"{at:%H:%M:%S}  {title[:24]:<24}  {what}"


async def _requeue(sessions: Sessions, follow: Run, exhausted: Sequence[Any],
                   screen: watch.Screen) -> None:
    """Errored tasks with no automatic retry left: the operator's requeue (``pipeline
    requeue``'s service call)."""
    for row in exhausted:
        async with session_scope(sessions) as session:
            plan = await transitions.requeue(session, row.id, actor=ACTOR,
                                             reason="fixed the video renderer")
        follow.requeued.add(row.id)
        screen.note(f"{row.title} is out of attempts at {plan.stage.name}; requeued as a "
                    "person would:")
        screen.note(f"  $ {follow.place.command(f'requeue {str(row.id)[:8]}')}", wrap=False)
    if exhausted:
        await wakeups.wake_url(follow.redis_url, len(exhausted),
                               queue_name=get_settings().queue_name)


def _check_workers(follow: Run) -> None:
    codes = [proc.poll() for proc in follow.procs]
    if all(code is not None for code in codes):
        raise DemoFailed(f"every worker process exited (exit codes {codes}); their output is "
                         f"in {follow.place.logs_dir}")


def _view(follow: Run, board: watch.Board, statuses: Statuses) -> Group:
    """The demo's screen: a line about the run, the live view of ``pipeline stats --watch``
    (the demo's channels) and the latest errors and retries."""
    board = replace(board, channels=[c for c in board.channels if c[0] in demo_data.NAMES])
    head = (f"demo: {statuses[TaskStatus.published]}/{statuses.total()} published · "
            f"{follow.phase} · {time.monotonic() - follow.began:.0f}s")
    events = list(follow.events) or ["no errors yet: they show here, with their retries"]
    return Group(watch.one_line(head), watch.render(board), *map(watch.one_line, events))


def _plain(statuses: Statuses) -> str:
    running = sum(n for s, n in statuses.items() if s in lifecycle.ACTIVE)
    errors = sum(n for s, n in statuses.items() if s in ERROR)
    return (f"published {statuses[TaskStatus.published]}/{statuses.total()}  queued "
            f"{statuses[TaskStatus.queued]}  running {running}  at {GATE.name} gate "
            f"{statuses[GATE.waiting]}  errors {errors}")


# --- the review gate ----------------------------------------------------------------------


async def _approve(sessions: Sessions, follow: Run, screen: watch.Screen) -> None:
    """Pass the gate as ``pipeline approve --gate`` does (printed first): the tasks waiting
    there, planned with ``plan_approval`` and approved in chunked transactions, then wake the
    workers."""
    commands = follow.place.approvals(GATE.name)
    screen.note(f"all {len(follow.task_ids)} tasks wait at the {GATE.name} gate "
                f"({GATE.waiting.value}); a person approves them with:")
    for command, _ in commands:
        screen.note(f"  $ {command}", wrap=False)
    if screen.redraws:      # someone is watching: leave them a moment to read it
        await asyncio.sleep(GATE_PAUSE_S)
    plans = await _plans_at_gate(sessions, [channel for _, channel in commands])

    async def step(session: AsyncSession, plan: ApprovalPlan) -> ApprovalPlan:
        await transitions.approve(session, plan.task_id, actor=ACTOR, gate=plan.gate.name,
                                  note="passed the demo's review")
        return plan

    outcomes = await batches.run_in_chunks(sessions, [p for p in plans if not p.already],
                                           step, label="approve", chunk=operations.CHUNK)
    done = [plan for _, plan in outcomes if not isinstance(plan, PipelineError)]
    await wakeups.wake_url(follow.redis_url, len(done), queue_name=get_settings().queue_name)
    follow.phase = f"{GATE.name} gate approved"
    screen.note(f"ran it: {len(done)} task(s) approved by {ACTOR}, "
                f"{len(outcomes) - len(done)} refused; on to upload")


async def _plans_at_gate(sessions: Sessions, scopes: list[str | None]) -> list[ApprovalPlan]:
    """The approvals of the tasks waiting at the gate: in the whole database (scope None) or
    in the named channels."""
    plans = []
    async with session_scope(sessions) as session:
        for channel in scopes:
            scope = (await channels.get_channel(session, channel)).id if channel else None
            for task_id in await transitions.waiting_at_gate(session, GATE.name, scope):
                plans.append(await transitions.plan_approval(session, task_id, gate=GATE.name))
    return plans


# --- the end ------------------------------------------------------------------------------


async def _summary(sessions: Sessions, task_ids: list[uuid.UUID], elapsed: float) -> None:
    async with sessions() as session:
        statuses = Counter((await session.scalars(
            sa.select(Task.status).where(Task.id.in_(task_ids)))).all())
        events = (await session.execute(
            sa.select(TaskEvent.task_id, TaskEvent.from_status, TaskEvent.to_status,
                      TaskEvent.created_at)
            .where(TaskEvent.task_id.in_(task_ids)).order_by(TaskEvent.id))).all()
    print()
    print(tables.render(["status", "tasks"], [(s.value, n) for s, n in statuses.items()]))
    print()
    print(tables.render(["stage", "runs", "mean s", "max s"], _stage_times(events)))
    print()
    print(f"{len(task_ids)} tasks through {len(lifecycle.STAGES)} stages in {elapsed:.1f}s: "
          f"{len(task_ids) / elapsed:.1f} tasks/s")


def _stage_times(events: Sequence[Any]) -> list[tuple[str, int, float, float]]:
    """Per stage: time from entering its active state to leaving it, from the event history."""
    entered: dict[tuple[uuid.UUID, TaskStatus], datetime] = {}
    spans: dict[str, list[float]] = {st.name: [] for st in lifecycle.STAGES}
    for task_id, src, dst, at in events:
        if dst in STAGE_BY_ACTIVE:
            entered[(task_id, dst)] = at
        if src in STAGE_BY_ACTIVE and (task_id, src) in entered:
            span = (at - entered.pop((task_id, src))).total_seconds()
            spans[STAGE_BY_ACTIVE[src].name].append(span)
    return [(name, len(v), sum(v) / len(v) if v else 0.0, max(v, default=0.0))
            for name, v in spans.items()]


