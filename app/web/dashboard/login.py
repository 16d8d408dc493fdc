"""``/login`` and ``/logout``: the API token, typed once, turns the session into a logged-in
one (under a new session id, so a session planted before the login is worth nothing)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form
from fastapi.responses import RedirectResponse, Response

from app.web import auth
from app.web.dashboard import sessions
from app.web.dashboard.context import Viewer, poster, visitor

router = APIRouter(include_in_schema=False)


def safe_next(target: str | None) -> str:
    """Only a path of this site is followed after the login (never ``//host`` or a URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/login")
async def login_form(viewer: Annotated[Viewer, Depends(visitor)],
                     next: str | None = None) -> Response:
    return viewer.page("login.html", next=safe_next(next), failed=False, nav="")


@router.post("/login")
async def login(viewer: Annotated[Viewer, Depends(poster)],
                token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/",
                ) -> Response:
    """The right token: a new logged-in session and back to ``next``; a wrong one: the form
    again (401), with the same session."""
    if not viewer.web.settings.api_token or not auth.token_matches(viewer.web.settings, token):
        return viewer.page("login.html", 401, next=safe_next(next), failed=True, nav="")
    response = RedirectResponse(safe_next(next), status_code=303)
    sessions.set_cookie(response, viewer.request, viewer.dashboard.key,
                        sessions.new_session(logged_in=True))
    return response


@router.post("/logout")
async def logout(viewer: Annotated[Viewer, Depends(poster)]) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/")
    return response
