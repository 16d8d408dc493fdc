"""Who is looking at the dashboard: a signed session cookie, the login that sets it, and the
CSRF token every form posts back.

The cookie holds a random session id and whether it logged in, signed with a key derived from
``API_TOKEN`` (never the token itself), so a changed token ends every session. Without a token
the key is the process's own random secret: nothing needs a login, but forms still carry a
CSRF token bound to the cookie. The CSRF token is an HMAC of the session id (a synchronizer
token with no server-side store), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response

from app.config import Settings
from app.errors import PipelineError

COOKIE = "pipeline_session"
#: A login lasts a working day; the cookie is dropped by the browser after it.
MAX_AGE_S = 12 * 3600
_SESSION_LABEL = b"pipeline dashboard session"


class CsrfRefused(PipelineError):
    """The form's CSRF token is missing or does not match this session (reload the page)."""


class LoginRequired(PipelineError):
    """Log in with the API token first."""


@dataclass(frozen=True)
class Session:
    sid: str
    logged_in: bool


def signing_key(settings: Settings, process_secret: bytes) -> bytes:
    """The key cookies and CSRF tokens are signed with: derived from ``API_TOKEN`` when set
    (sessions survive a restart, end when the token changes), else the process's secret."""
    base = settings.api_token.encode() if settings.api_token else process_secret
    return hmac.new(base, _SESSION_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def encode(key: bytes, session: Session) -> str:
    body = f"{session.sid}.{int(session.logged_in)}"
    return f"{body}.{_mac(key, 'cookie:' + body)}"


def decode(key: bytes, value: str | None) -> Session | None:
    """The session a cookie names, or None when it is absent, malformed or forged."""
    if not value or value.count(".") != 2:
        return None
    sid, flag, mac = value.split(".")
    if flag not in ("0", "1") or not hmac.compare_digest(mac, _mac(key, f"cookie:{sid}.{flag}")):
        return None
    return Session(sid, flag == "1")


def new_session(*, logged_in: bool) -> Session:
    return Session(secrets.token_urlsafe(18), logged_in)


def csrf_token(key: bytes, session: Session) -> str:
    return _mac(key, "csrf:" + session.sid)


def csrf_matches(key: bytes, session: Session | None, presented: str | None) -> bool:
    if session is None or not presented:
        return False
    return hmac.compare_digest(presented, csrf_token(key, session))


def set_cookie(response: Response, request: Request, key: bytes, session: Session) -> None:
    response.set_cookie(COOKIE, encode(key, session), max_age=MAX_AGE_S, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")


def may_read(settings: Settings, session: Session | None) -> bool:
    """Pages are open without a token or with public reads; otherwise they need a login."""
    if not settings.api_token or settings.api_public_read:
        return True
    return session is not None and session.logged_in


def may_write(settings: Settings, session: Session | None) -> bool:
    """Actions need a login whenever a token is set."""
    return not settings.api_token or (session is not None and session.logged_in)
