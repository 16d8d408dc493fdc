"""The ``pipeline`` command (also ``python -m app``).

Each command is a composition root: it reads settings, finds the database (``DATABASE_URL`` or
the embedded default), opens one engine, runs one service call per transaction and disposes.
Expected errors print one line to stderr and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from app import demo, servers
from app.config import get_settings
from app.db import make_engine, make_sessionmaker
from app.embedded import EmbeddedError
from app.errors import PipelineError

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


async def _demo(args: argparse.Namespace) -> int:
    settings = get_settings()
    url = await servers.database_url(settings)
    redis = servers.redis_url(settings)
    engine = make_engine(settings, url)
    try:
        return await demo.run(make_sessionmaker(engine), url=url, redis_url=redis,
                              workers=args.workers, tasks=args.tasks)
    finally:
        await engine.dispose()


async def _worker(args: argparse.Namespace) -> int:
    from app import worker

    return await worker.run(get_settings(), burst=args.burst)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_cmd = sub.add_parser("demo", help="run the pipeline on the embedded default")
    demo_cmd.add_argument("--workers", type=int, default=3, help="worker processes (3)")
    demo_cmd.add_argument("--tasks", type=int, default=36, help="tasks to enqueue (36)")
    demo_cmd.set_defaults(run=_demo)
    worker_cmd = sub.add_parser("worker", help="run an arq worker (same as the Procfile's)")
    worker_cmd.add_argument("--burst", action="store_true",
                            help="exit once nothing is runnable")
    worker_cmd.set_defaults(run=_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.command == "worker" else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    command: Command = args.run
    try:
        return asyncio.run(command(args))
    except (PipelineError, EmbeddedError) as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
