"""The ASGI app: one engine for the app's life, the API, the dashboard and the metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.commands.context import ready_database
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.web import api, dashboard, errors, metrics
from app.web.state import WebState


def create_app(settings: Settings) -> FastAPI:
    """The app on ``settings``' database (the embedded default joined or started)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = await ready_database(settings)
        engine = make_engine(settings, url)
        app.state.web = WebState(settings, make_sessionmaker(engine), url)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(title="pipeline", lifespan=lifespan, docs_url="/api/docs",
                  openapi_url="/api/openapi.json", redoc_url=None)
    errors.install(app)
    app.include_router(api.router, prefix="/api")
    app.include_router(metrics.router)
    metrics.instrument(app)
    app.include_router(dashboard.router)
    return app
