"""What every request shares: settings, the database's sessions and the actor's name."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings


@dataclass
class WebState:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    #: The database URL the app runs on (for statements outside the ORM).
    database_url: str


def web_state(request: Request) -> WebState:
    """The app's shared state (a FastAPI dependency)."""
    state: WebState = request.app.state.web
    return state
