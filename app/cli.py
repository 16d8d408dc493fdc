"""The ``pipeline`` command (also ``python -m app``).

Each command is a composition root: it reads settings, finds the database (``DATABASE_URL`` or
the embedded default), opens one engine, runs each service call in its own transaction and
disposes. Expected errors print one line to stderr and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib import metadata
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from app import logs
from app.commands import channels, demo, enqueue, holds, operations, quotas, retention, tasks
from app.commands import workers as live_workers
from app.commands.context import Context, open_context
from app.config import get_settings
from app.db import make_engine, make_sessionmaker
from app.embedded import EmbeddedError
from app.errors import PipelineError
from app.lifecycle import ERROR, GATE_BY_NAME, STAGE_BY_NAME, TERMINAL, TaskStatus
from app.schemas import field_errors

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
AdminCommand = Callable[[Context, argparse.Namespace], Coroutine[Any, Any, int]]


TASK_HELP = "a task id, a unique prefix of it (8+ hex digits) or the task's Notion page id"


def admin(command: AdminCommand,
          first: Callable[[argparse.Namespace], None] | None = None) -> Command:
    """Run ``command`` with the database context open; ``first`` checks its arguments before
    (a bad value is named as such, not hidden behind the database's state)."""
    async def run(args: argparse.Namespace) -> int:
        if first is not None:
            first(args)
        async with open_context(get_settings(), as_json=args.json) as ctx:
            return await command(ctx, args)
    return run


async def _demo(args: argparse.Namespace) -> int:
    settings = get_settings()
    place, url, redis = await demo.prepare(settings, reset=args.reset)
    engine = make_engine(settings, url)
    try:
        return await demo.run(make_sessionmaker(engine), place, url=url, redis_url=redis,
                              workers=args.workers, tasks=args.tasks, reset=args.reset)
    finally:
        await engine.dispose()


async def _worker(args: argparse.Namespace) -> int:
    from workers import supervisor

    return await supervisor.run(get_settings(), burst=args.burst)


async def _serve(args: argparse.Namespace) -> int:
    from app.commands import serve

    return await serve.run(get_settings(), host=args.host, port=args.port)


async def _sync(args: argparse.Namespace) -> int:
    from app.notion import command

    return await command.run(get_settings(), loop=args.loop, as_json=args.json)


def _version() -> str:
    try:
        return metadata.version("pipeline-queue")
    except metadata.PackageNotFoundError:      # run from a source tree, not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pipeline {_version()}")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    channel = sub.add_parser("channel", help="add, list, change or remove YouTube channels")
    channel_sub = channel.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = channel_sub.add_parser("add", parents=[data], help="add a channel")
    add.add_argument("--channel-id", required=True, help="the YouTube channel id")
    add.add_argument("--name", required=True, help="display name")
    add.add_argument("--max-concurrent", type=int, metavar="N",
                     help="at most N of its tasks in active states at once (default: no limit)")
    add.set_defaults(run=admin(channels.add))
    listing = channel_sub.add_parser("list", parents=[data], help="list channels")
    listing.set_defaults(run=admin(channels.list_))
    for verb, helped, run in (
            ("deactivate", "stop claiming a channel's tasks", channels.deactivate),
            ("activate", "claim a deactivated channel's tasks again", channels.activate),
            ("remove", "delete a channel that has no tasks", channels.remove)):
        one = channel_sub.add_parser(verb, parents=[data], help=helped)
        one.add_argument("channel_id", metavar="ID", help="the YouTube channel id")
        one.set_defaults(run=admin(run))
    change = channel_sub.add_parser("update", parents=[data],
                                    help="rename a channel or change its cap")
    change.add_argument("channel_id", metavar="ID", help="the YouTube channel id")
    change.add_argument("--name", help="new display name")
    cap = change.add_mutually_exclusive_group()
    cap.add_argument("--max-concurrent", type=int, metavar="N",
                     help="at most N of its tasks in active states at once")
    cap.add_argument("--no-limit", action="store_true", help="no cap")
    change.set_defaults(run=admin(channels.update))

    quota = sub.add_parser("quota", help="rate limits on stage starts (per channel or shared)")
    quota_sub = quota.add_subparsers(dest="action", required=True, metavar="ACTION")
    stages = ", ".join([*STAGE_BY_NAME, "all"])
    qset = quota_sub.add_parser("set", parents=[data],
                                help="at most LIMIT starts of STAGE in any rolling WINDOW")
    qset.add_argument("stage", metavar="STAGE", help=f"{stages}")
    qset.add_argument("rate", metavar="LIMIT/WINDOW",
                      help="starts per window: 6/24h, 30/1h, 100/10m, 2/30s, 500/7d")
    # A LIMIT/WINDOW such as -1/1h is a value (refused by name), not an unknown option.
    qset._negative_number_matcher = re.compile(r"^-\d")
    qremove = quota_sub.add_parser("remove", parents=[data], help="remove a quota")
    qremove.add_argument("stage", metavar="STAGE", help=f"{stages}")
    for one in (qset, qremove):
        scope = one.add_mutually_exclusive_group(required=True)
        scope.add_argument("--per-channel", dest="per_channel", action="store_true",
                           help="counted for each channel on its own")
        scope.add_argument("--shared", dest="per_channel", action="store_false",
                           help="counted across every channel (one provider account)")
    qset.set_defaults(run=admin(quotas.set_, quotas.check))
    qremove.set_defaults(run=admin(quotas.remove, quotas.check))
    qlist = quota_sub.add_parser("list", parents=[data],
                                 help="quotas, with the starts in their window now")
    qlist.set_defaults(run=admin(quotas.list_))

    imp = sub.add_parser("enqueue", parents=[data], help="import tasks from a JSON or CSV file")
    imp.add_argument("file", metavar="FILE",
                     help="JSON array of objects, or CSV with a header; - reads standard input")
    imp.add_argument("--ignore-extra-columns", action="store_true",
                     help="drop columns (or JSON keys) that are not task fields, with a warning")
    imp.set_defaults(run=admin(enqueue.run))

    sync = sub.add_parser("sync-notion", parents=[data],
                          help="pull tasks from Notion, push their status back")
    mode = sync.add_mutually_exclusive_group()
    mode.add_argument("--once", dest="loop", action="store_false", help="one round (default)")
    mode.add_argument("--loop", dest="loop", action="store_true",
                      help="repeat every NOTION_SYNC_INTERVAL_SECONDS until stopped")
    sync.set_defaults(run=_sync, loop=False)

    approve = sub.add_parser("approve", parents=[data],
                             help="pass the gate tasks wait at (named, or all at --gate)")
    approve.add_argument("task_ids", nargs="*", metavar="TASK", help=TASK_HELP)
    approve.add_argument("--gate", choices=list(GATE_BY_NAME),
                         help="this gate only; without TASKs: every task waiting there")
    approve.add_argument("--channel", metavar="C",
                         help="with --gate and no TASKs: only this channel's tasks")
    approve.add_argument("--note", help="recorded in each task's history")
    approve.add_argument("--dry-run", action="store_true",
                         help="print what would be approved and change nothing")
    approve.set_defaults(run=admin(operations.approve), usage=approve)

    errors = [s.value for s in TaskStatus if s in ERROR]
    requeue = sub.add_parser("requeue", parents=[data],
                             help="retry errored tasks at the stage that failed")
    requeue.add_argument("task_ids", nargs="*", metavar="TASK", help=TASK_HELP)
    requeue.add_argument("--status", nargs="+", choices=errors, metavar="S",
                         help=f"every task in these error states ({', '.join(errors)})")
    requeue.add_argument("--channel", metavar="C", help="with --status: only this channel")
    requeue.add_argument("--reason", help="recorded with you as actor in each task's history")
    requeue.add_argument("--dry-run", action="store_true",
                         help="print the plan and change nothing")
    requeue.set_defaults(run=admin(operations.requeue), usage=requeue)

    for verb, helped, run, statuses in (
            ("hold", "stop tasks from being claimed (a running stage stops at its next"
             " heartbeat)", holds.hold, [s for s in TaskStatus if s not in TERMINAL]),
            ("release", "make held tasks claimable again", holds.release, list(TaskStatus))):
        names = [s.value for s in statuses]
        one = sub.add_parser(verb, parents=[data], help=helped)
        one.add_argument("task_ids", nargs="*", metavar="TASK", help=TASK_HELP)
        one.add_argument("--status", nargs="+", choices=names, metavar="S",
                         help="every task in these states")
        one.add_argument("--channel", metavar="C", help="with --status: only this channel")
        one.add_argument("--reason", help="recorded with you as actor in each task's history")
        one.add_argument("--dry-run", action="store_true",
                         help=f"print what would be {'held' if verb == 'hold' else 'released'}"
                         " and change nothing")
        one.set_defaults(run=admin(run), usage=one)

    lst = sub.add_parser("list", parents=[data], help="list tasks, oldest first")
    lst.add_argument("--status", nargs="+", choices=[s.value for s in TaskStatus], metavar="S")
    lst.add_argument("--channel", metavar="C", help="YouTube channel id")
    lst.add_argument("--search", metavar="TEXT", help="titles containing TEXT (any case)")
    lst.add_argument("--page-id", metavar="ID", help="the task of this Notion page")
    lst.add_argument("--held", action="store_true", help="only tasks on hold")
    lst.add_argument("--sort", choices=["oldest", "newest"], default="oldest",
                     help="by creation time (oldest)")
    lst.add_argument("--limit", type=int, default=100, metavar="N",
                     help="show at most N tasks (100)")
    lst.add_argument("--offset", type=int, default=0, metavar="N",
                     help="skip the first N tasks (for pages)")
    lst.set_defaults(run=admin(tasks.list_), usage=lst)
    show = sub.add_parser("show", parents=[data], help="one task with its event history")
    show.add_argument("task_id", metavar="TASK", help=TASK_HELP)
    show.set_defaults(run=admin(tasks.show))
    stats = sub.add_parser("stats", parents=[data],
                           help="counts by status and channel, queue depth, oldest queued age")
    stats.add_argument("--watch", action="store_true",
                       help="one screen redrawn in place: stages, channels, errors")
    stats.add_argument("--interval", type=float, default=1.0, metavar="S",
                       help="with --watch: seconds between redraws (1)")
    stats.set_defaults(run=admin(tasks.stats_), usage=stats)

    live = sub.add_parser("workers", parents=[data],
                          help="live worker processes and the tasks each holds now")
    live.set_defaults(run=admin(live_workers.list_))
    prune = sub.add_parser("prune", parents=[data],
                           help="remove published tasks and history older than a horizon")
    prune.add_argument("--older-than", required=True, metavar="DURATION",
                       help="the horizon: 30s, 10m, 1h, 24h, 7d or 2w")
    prune.add_argument("--published-only", action="store_true",
                       help="only published tasks (with their history), no other history")
    prune.add_argument("--dry-run", action="store_true",
                       help="count what would go and change nothing")
    prune.set_defaults(run=admin(retention.prune))

    serve_cmd = sub.add_parser("serve", help="HTTP API under /api, web dashboard, /metrics")
    serve_cmd.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (127.0.0.1; others need API_TOKEN)")
    serve_cmd.add_argument("--port", type=int, default=8000, help="port (8000)")
    serve_cmd.set_defaults(run=_serve)

    worker_cmd = sub.add_parser("worker", help="run an arq worker (same as the Procfile's)")
    worker_cmd.add_argument("--burst", action="store_true",
                            help="exit once nothing is runnable")
    worker_cmd.set_defaults(run=_worker)
    demo_cmd = sub.add_parser(
        "demo", help="run the pipeline with real workers on data of its own (.data-demo/)")
    demo_cmd.add_argument("--workers", type=demo.count, default=3, metavar="N",
                          help="worker processes (3)")
    demo_cmd.add_argument("--tasks", type=demo.count, default=36, metavar="N",
                          help="tasks to enqueue (36)")
    demo_cmd.add_argument("--reset", action="store_true",
                          help="first wipe the demo's data (with DATABASE_URL: its channels "
                          "and their tasks only)")
    demo_cmd.set_defaults(run=_demo)
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument rules argparse cannot express; a broken one shows the subcommand's usage."""
    sub: argparse.ArgumentParser = getattr(args, "usage", parser)
    if args.command in ("requeue", "hold", "release"):
        if bool(args.task_ids) == bool(args.status):
            sub.error("give TASKs or --status S…, not both and not neither")
        if args.channel and not args.status:
            sub.error("--channel goes with --status")
    if args.command == "approve":
        if not args.task_ids and not args.gate:
            sub.error("give TASKs, or --gate G for every task waiting there")
        if args.channel and (args.task_ids or not args.gate):
            sub.error("--channel goes with --gate and no TASKs")
    if args.command == "stats" and args.interval <= 0:
        sub.error("--interval must be positive")
    if args.command == "list" and args.limit < 1:
        sub.error("--limit must be at least 1")
    if args.command == "list" and args.offset < 0:
        sub.error("--offset must not be negative")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    command: Command = args.run
    try:
        settings = get_settings()
    except ValidationError as exc:      # settings from the environment
        problems = "; ".join(f"{field.upper()}: {message}"
                             for field, message in field_errors(exc))
        print(f"pipeline: configuration: {problems}", file=sys.stderr)
        return 2
    logs.configure(level=settings.log_level, fmt=settings.log_format,
                   default=logging.INFO if args.command in ("worker", "sync-notion", "serve")
                   else logging.WARNING)
    try:
        code = asyncio.run(command(args))
        sys.stdout.flush()              # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:             # `pipeline list | head`: the reader has what it wants
        _quiet_stdout()
        return 128 + signal.SIGPIPE
    except (PipelineError, EmbeddedError) as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    except (OSError, DBAPIError) as exc:    # a server that is down or refuses us
        print(f"pipeline: {_unreachable(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises nothing more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _unreachable(exc: BaseException) -> str:
    """One line about a connection failure (never the URL, which may hold a password)."""
    if isinstance(exc, DBAPIError):
        cause: BaseException = exc.orig if exc.orig is not None else exc
        return f"database error: {(str(cause).strip().splitlines() or ['?'])[0]}"
    return f"connection failed: {exc}"


if __name__ == "__main__":
    sys.exit(main())
