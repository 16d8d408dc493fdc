"""What a worker does on SIGINT/SIGTERM, under ``pipeline worker`` and under the arq CLI alike.

The first signal stops claiming: the runner takes no next stage, arq picks no more jobs, and
the running stages get the grace period to finish; the worker says what it waits for. Then (or
at once, at a second signal) arq cancels them and the runner hands them back: each task keeps
its status with no holder, its attempt not spent.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from typing import Any

from arq.worker import Worker

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install(worker: Worker, *, grace_s: float) -> None:
    """Put our handlers in front of arq's on ``worker``'s loop."""
    loop = asyncio.get_running_loop()
    arq_handler = worker.handle_sig_wait_for_completion if grace_s else worker.handle_sig
    seen: list[signal.Signals] = []
    said: set[asyncio.Task[None]] = set()       # the message's task, kept until it is done

    def handle(signum: signal.Signals) -> None:
        seen.append(signum)
        if len(seen) > 1:
            log.warning("%s again: handing the running stages back now", signum.name)
            worker.handle_sig(signum)
            return
        runner = stop_claiming(worker)
        if runner is not None:
            saying = loop.create_task(_say_stopping(runner, signum, grace_s))
            said.add(saying)
            saying.add_done_callback(said.discard)
        arq_handler(signum)

    for signum in SIGNALS:
        loop.add_signal_handler(signum, handle, signum)


async def _say_stopping(runner: Any, signum: signal.Signals, grace_s: float) -> None:
    """What the stopping worker waits for, once a pick-up under way has returned (its claims
    are committed by then, and their stages run: the message names them)."""
    await runner.claims_settled()
    log.warning("%s: stopping; %s", signum.name, waiting_for(runner.running, grace_s))


def install_over_arq(ctx: dict[str, Any], *, grace_s: float) -> None:
    """From a Worker's ``on_startup``: the arq CLI (the Procfile's worker) has installed arq's
    own handlers, bound to its Worker; put ours in front of them, and keep the Worker in
    ``ctx["worker"]``. ``pipeline worker`` has done both already, and then nothing changes."""
    loop = asyncio.get_running_loop()
    handlers = getattr(loop, "_signal_handlers", {})     # asyncio keeps them there
    handle = handlers.get(signal.SIGTERM)
    callback = getattr(getattr(handle, "_callback", None), "func", None)
    worker = getattr(callback, "__self__", None)
    if isinstance(worker, Worker) and worker.ctx is ctx:
        ctx["worker"] = worker
        install(worker, grace_s=grace_s)


def stop_claiming(worker: Worker) -> Any:
    """Tell the worker's runner to take no further stage; the runner, if it has one."""
    runner = worker.ctx.get("runner")
    if runner is not None:
        runner.stopping.set()
    return runner


def waiting_for(running: dict[uuid.UUID, str], grace_s: float) -> str:
    """What a stopping worker waits for, in one line."""
    if not running:
        return "no stage is running"
    shown = ", ".join(f"task {task_id} ({stage})" for task_id, stage in
                      list(running.items())[:5])
    more = f" and {len(running) - 5} more" if len(running) > 5 else ""
    return (f"waiting up to {grace_s:g} s for {len(running)} running stage(s) to finish:"
            f" {shown}{more}; then they are handed back (press Ctrl-C again, or send the"
            " signal again, to hand them back now)")
