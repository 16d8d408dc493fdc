"""``/events``: the live board as server-sent events. Every browser subscribes to the
process's one ``Poller``; each change of the board arrives as one ``board`` event holding the
board's HTML, rendered once for all of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.templating import Jinja2Templates
from sse_starlette import EventSourceResponse, ServerSentEvent

from app import moves
from app.db import session_scope
from app.web.dashboard import board
from app.web.dashboard.context import Viewer, reader
from app.web.dashboard.live import Poller
from app.web.state import WebState

router = APIRouter(include_in_schema=False)
#: Keep-alive comments on an idle stream, so proxies do not close it.
PING_S = 15


def board_poller(web: WebState, templates: Jinja2Templates, *,
                 interval_s: float) -> Poller[board.BoardView]:
    """The process's board reader: one snapshot of the board per read, rendered as the board
    page's live part."""
    fragment = templates.env.get_template("_board.html")

    async def read() -> board.BoardView:
        async with session_scope(web.sessions) as session:
            return await board.collect(session, now=moves.utcnow(),
                                       lease_s=web.settings.lease_s)

    def facts(view: board.BoardView) -> object:
        summary = view.summary
        return (summary.stages, summary.channels, summary.gates, summary.found, view.channels,
                view.attention)

    def render(view: board.BoardView) -> str:
        return fragment.render(view=view, now=view.summary.at)

    return Poller(read, facts=facts, render=render, interval_s=interval_s)


@router.get("/events")
async def events(viewer: Annotated[Viewer, Depends(reader)]) -> EventSourceResponse:
    poller = viewer.dashboard.poller

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async with poller.subscribe() as updates:
            while True:
                yield ServerSentEvent(data=await updates.get(), event="board")

    return EventSourceResponse(stream(), ping=PING_S, headers={"Cache-Control": "no-store"})
