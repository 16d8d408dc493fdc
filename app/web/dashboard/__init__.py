"""The web dashboard: server-rendered pages (the board, review queue, tasks, workers, charts),
live by server-sent events, behind a login when ``API_TOKEN`` is set, every form CSRF-checked.

``lifespan`` (merged into the app's) builds the dashboard's state once the app's database is
open, and stops the live board's poller at shutdown.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from app.web.dashboard import (
    actions,
    assets,
    charts,
    login,
    pages,
    render,
    sessions,
    stream,
)
from app.web.dashboard.context import Dashboard
from app.web.dashboard.live import SharedRead
from app.web.state import WebState

#: How often the live board is read while anyone watches it.
POLL_INTERVAL_S = 0.5


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    web: WebState = app.state.web
    templates = render.templates()
    poller = stream.board_poller(web, templates, interval_s=POLL_INTERVAL_S)
    app.state.dashboard = Dashboard(sessions.signing_key(web.settings, secrets.token_bytes(32)),
                                    templates, poller, SharedRead(charts.reader(web.sessions)))
    try:
        yield
    finally:
        await poller.stop()


router = APIRouter(lifespan=lifespan)
for part in (pages, actions, login, stream, assets):
    router.include_router(part.router)
