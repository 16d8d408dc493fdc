"""Logging for every process: ``LOG_LEVEL`` and ``LOG_FORMAT`` (``text`` or ``json``).

Workers and the sync log at INFO by default, admin commands at WARNING (their output is the
result, not a log); ``LOG_LEVEL`` overrides both. ``json`` writes one object per line (time,
level, logger, message, and the exception when there is one) for log collectors.
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
    if level is None or level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)   # no chatter on every start
