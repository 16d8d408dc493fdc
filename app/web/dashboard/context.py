"""What every dashboard request shares: the dashboard's state on the app (signing key,
templates, the live poller), who is asking, and the checks a page or an action needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Form, HTTPException, Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from app.commands.context import Context
from app.web.dashboard import sessions
from app.web.dashboard.board import BoardView
from app.web.dashboard.charts import Charts
from app.web.dashboard.live import Poller, SharedRead
from app.web.dashboard.sessions import Session
from app.web.state import WebState, web_state

#: Recorded in ``task_events.actor`` for what the dashboard does.
ACTOR = "web"
#: Every page: its own scripts and styles only (no inline script could run even if markup
#: slipped through escaping), never framed, forms posted only back here.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


@dataclass
class Dashboard:
    key: bytes
    templates: Jinja2Templates
    poller: Poller[BoardView]
    charts: SharedRead[Charts]


@dataclass
class Viewer:
    """One request: the app's state, the dashboard's, and the caller's session (a fresh
    anonymous one is issued with the response when the request brought none)."""

    request: Request
    web: WebState
    dashboard: Dashboard
    session: Session
    fresh: bool

    @property
    def csrf(self) -> str:
        return sessions.csrf_token(self.dashboard.key, self.session)

    @property
    def commands(self) -> Context:
        """The CLI's context on this app's database (for waking workers after a write)."""
        return Context(self.web.settings, self.web.sessions, False, ACTOR)

    def page(self, template: str, status_code: int = 200, **values: Any) -> Response:
        """``template`` rendered with the viewer's CSRF token and login state."""
        settings = self.web.settings
        response = self.dashboard.templates.TemplateResponse(
            self.request, template, {"csrf": self.csrf, "login_used": bool(settings.api_token),
                                     "logged_in": self.session.logged_in, **values},
            status_code=status_code)
        response.headers.update(SECURITY_HEADERS)
        if self.fresh:
            sessions.set_cookie(response, self.request, self.dashboard.key, self.session)
        return response

    def error(self, message: str, status_code: int) -> Response:
        return self.page("error.html", status_code, message=message)


def dashboard_of(request: Request) -> Dashboard:
    found: Dashboard = request.app.state.dashboard
    return found


def _viewer(request: Request, web: WebState) -> Viewer:
    board = dashboard_of(request)
    found = sessions.decode(board.key, request.cookies.get(sessions.COOKIE))
    if found is not None:
        return Viewer(request, web, board, found, fresh=False)
    return Viewer(request, web, board, sessions.new_session(logged_in=False), fresh=True)


def _to_login(request: Request) -> HTTPException:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return HTTPException(303, "log in first",
                         headers={"Location": f"/login?next={quote(target, safe='')}"})


def reader(request: Request, web: Annotated[WebState, Depends(web_state)]) -> Viewer:
    """A page's viewer; without the right to read, a redirect to the login form."""
    viewer = _viewer(request, web)
    if not sessions.may_read(web.settings, viewer.session):
        raise _to_login(request)
    return viewer


def visitor(request: Request, web: Annotated[WebState, Depends(web_state)]) -> Viewer:
    """Anyone's viewer, logged in or not (the login form)."""
    return _viewer(request, web)


def poster(request: Request, web: Annotated[WebState, Depends(web_state)],
           csrf: Annotated[str | None, Form()] = None) -> Viewer:
    """A form's viewer: the form's CSRF token must match the session cookie (else 403)."""
    viewer = _viewer(request, web)
    if viewer.fresh or not sessions.csrf_matches(viewer.dashboard.key, viewer.session, csrf):
        raise HTTPException(403, str(sessions.CsrfRefused()))
    return viewer


def writer(viewer: Annotated[Viewer, Depends(poster)]) -> Viewer:
    """An action's viewer: a form with the right CSRF token, and with a token set, a session
    that has logged in (else 403)."""
    if not sessions.may_write(viewer.web.settings, viewer.session):
        raise HTTPException(403, str(sessions.LoginRequired()))
    return viewer
