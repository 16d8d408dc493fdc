"""What an API request acts through: the CLI's ``Context`` with the actor ``api``.

The same object the admin commands use, so a write here wakes the workers, runs bulk steps in
chunked transactions and records its actor exactly as ``pipeline approve`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.commands.context import Context
from app.web.state import WebState, web_state

#: ``task_events.actor`` of every write made through the API.
ACTOR = "api"


def request_context(state: Annotated[WebState, Depends(web_state)]) -> Context:
    """A FastAPI dependency: the request's ``Context`` (it opens nothing itself)."""
    return Context(state.settings, state.sessions, as_json=True, actor=ACTOR)


Ctx = Annotated[Context, Depends(request_context)]


@contextlib.asynccontextmanager
async def rehearsal(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction that is always rolled back: a dry run does the real writes, reads what
    they would give, and keeps none of them."""
    async with sessions() as session:
        transaction = await session.begin()
        try:
            yield session
        finally:
            await transaction.rollback()
