"""``/events``: the live board as server-sent events. Every browser subscribes to the
process's one ``Poller``; each change of the board arrives as one ``board`` event holding the
board's HTML, rendered once for all of them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.templating import Jinja2Templates
from sse_starlette import EventSourceResponse, ServerSentEvent

from app import moves
from app.db import session_scope
from app.web.dashboard import board
from app.web.dashboard.context import Viewer, reader
from app.web.dashboard.live import Fetch
from app.web.state import WebState

router = APIRouter(include_in_schema=False)
#: Keep-alive comments on an idle stream, so proxies do not close it.
PING_S = 15


def board_fetch(web: WebState, templates: Jinja2Templates) -> Fetch:
    """One poll of the board: its facts (equal while nothing moved) and their rendering."""
    fragment = templates.env.get_template("_board.html")

    async def fetch() -> tuple[object, Callable[[], str]]:
        async with session_scope(web.sessions) as session:
            view = await board.collect(session, now=moves.utcnow(), lease_s=web.settings.lease_s)
        summary = view.summary
        facts = (summary.stages, summary.channels, summary.gates, summary.found, view.channels,
                 view.attention)
        return facts, lambda: fragment.render(view=view, now=summary.at)

    return fetch


@router.get("/events")
async def events(viewer: Annotated[Viewer, Depends(reader)]) -> EventSourceResponse:
    poller = viewer.dashboard.poller

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async with poller.subscribe() as updates:
            while True:
                yield ServerSentEvent(data=await updates.get(), event="board")

    return EventSourceResponse(stream(), ping=PING_S, headers={"Cache-Control": "no-store"})
