"""The ASGI app: one engine for the app's life, the API, the dashboard and the metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.commands.context import ready_database
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.web import api, dashboard, docs, errors, metrics
from app.web.state import WebState

#: The front page of ``/api/docs``.
API_DESCRIPTION = (
    "The pipeline's task queue over HTTP: the reads of `pipeline list`, `show`, `stats`, "
    "`channel list` and `workers`, and the operator's verbs, each with a dry run "
    "(`\"dry_run\": true` returns the plan and changes nothing). Send `Authorization: Bearer "
    "<API_TOKEN>` on every write, and on reads unless `API_PUBLIC_READ` is set. Refusals are "
    "`{\"error\": \"…\"}` with the CLI's message: 401 without the token, 404 unknown task or "
    "channel, 409 a move the lifecycle refuses now, 422 bad input.")


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

    app = FastAPI(title="pipeline", description=API_DESCRIPTION, lifespan=lifespan,
                  docs_url=None,
                  openapi_url="/api/openapi.json", redoc_url=None)
    errors.install(app)
    docs.install(app)
    app.include_router(api.router, prefix="/api")
    app.include_router(metrics.router)
    metrics.instrument(app)
    app.include_router(dashboard.router)
    return app
