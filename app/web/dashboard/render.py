"""The dashboard's Jinja environment: templates from the package, autoescape on for every
template (titles, notes and error logs are always text), and the filters the pages share."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from fastapi.templating import Jinja2Templates

from app import moves

#: Channels drawn on the board (in channel id order); the totals count every channel.
CHANNELS_SHOWN = 50


def age(then: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``then`` was, in the two largest units (``3m 12s``, ``2h 05m``)."""
    if then is None:
        return "-"
    seconds = max(0, int(((now or moves.utcnow()) - then).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}h"


def when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def iso(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def as_json(value: Any) -> str:
    """An artefact's value as readable JSON (escaped by autoescape where it is shown)."""
    return value if isinstance(value, str) else json.dumps(value, indent=1, default=str)


def templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.PackageLoader("app.web.dashboard", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(age=age, when=when, iso=iso, as_json=as_json)
    env.globals["label"] = lambda text: str(text).replace("_", " ")
    env.globals["channels_shown"] = CHANNELS_SHOWN
    return Jinja2Templates(env=env)
