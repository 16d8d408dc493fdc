"""Refusals as HTTP: ``{"error": "<the CLI's one line>"}`` with the status that says why.

404 for what does not exist, 409 for a move the lifecycle refuses now, 422 for bad input
(FastAPI's validation errors reshaped to name the field), 401 without the right token, 503
when the database or the worker registry cannot be reached; any other refusal of the service
layer is 400. The status is decided here, from the error's type, never by a route.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import errors
from app.commands import channels, holds, operations, rows, workers
from app.commands.batches import ItemRefused
from app.db import describe, is_unavailable
from app.errors import PipelineError
from app.web.auth import Unauthorized
from app.web.models import ErrorBody

log = logging.getLogger("pipeline.web")

#: The first match in this order decides (subclasses before their bases).
STATUS: tuple[tuple[type[PipelineError], int], ...] = (
    (Unauthorized, 401),
    (errors.TaskNotFound, 404),
    (errors.ChannelNotFound, 404),
    (errors.QuotaNotFound, 404),
    (errors.BadQuota, 422),
    (errors.BadTaskRef, 422),
    (errors.AmbiguousTask, 422),
    (rows.BadFile, 422),
    (channels.BadChannel, 422),
    (errors.InvalidTransition, 409),
    (errors.CannotHold, 409),
    (errors.ChannelInactive, 409),
    (errors.ChannelExists, 409),
    (errors.ChannelHasTasks, 409),
    (operations.RequeueRefused, 409),
    (operations.ApprovalRefused, 409),
    (holds.HoldRefused, 409),
    (ItemRefused, 409),
    (workers.RegistryUnavailable, 503),
)
#: The responses every API route may give, for the OpenAPI schema.
RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": why} for code, why in (
        (401, "No token, or not the right one (Authorization: Bearer <API_TOKEN>)"),
        (404, "No such task, channel or quota"),
        (409, "The lifecycle refuses the move now"),
        (422, "Bad input: the field and why"))}


class Refused(PipelineError):
    """Some of the tasks named cannot be acted on; nothing was changed."""

    def __init__(self, message: str, refused: list[str], *, status: int = 409) -> None:
        self.refused, self.status = refused, status
        super().__init__(message)


class BadInput(PipelineError):
    """The request's input is invalid."""


def status_of(exc: PipelineError) -> int:
    if isinstance(exc, Refused):
        return exc.status
    if isinstance(exc, BadInput):
        return 422
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 400)


async def _refusal(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PipelineError)
    status = status_of(exc)
    body = ErrorBody(error=str(exc), refused=getattr(exc, "refused", None))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


async def _invalid(request: Request, exc: Exception) -> Response:
    """FastAPI's validation errors as one line per field, the first one as ``error``."""
    assert isinstance(exc, RequestValidationError)
    found = [_line(error, request) for error in exc.errors()] or ["invalid request"]
    body = ErrorBody(error=found[0], refused=found if len(found) > 1 else None)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=422)


def _line(error: dict[str, object], request: Request) -> str:
    """``field: why``; a body that is not a JSON object says what to send instead."""
    loc = error.get("loc")
    where = [str(part) for part in (loc if isinstance(loc, tuple | list) else ())]
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    kind = request.headers.get("content-type", "")
    if where == ["body"] and "json" not in kind:
        return f"body: send a JSON object with Content-Type: application/json (not {kind!r})"
    field = ".".join(p for p in where if p not in ("body", "query", "path", "header"))
    return f"{field}: {message}" if field else message


async def _http(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (an unknown path, a wrong method) as JSON under ``/api``."""
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith("/api/"):
        return await http_exception_handler(request, exc)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A failure under ``/api`` as JSON: 503 when the database cannot be reached (a retry
    may succeed), else 500. The details go to the server's log, never to the client."""
    if not request.url.path.startswith("/api/"):
        return PlainTextResponse("Internal Server Error", status_code=500)
    if is_unavailable(exc):
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path,
                    describe(exc))
        return JSONResponse({"error": "the database is unavailable; try again shortly"},
                            status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"error": "internal error (the server's log has the details)"},
                        status_code=500)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(PipelineError, _refusal)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
