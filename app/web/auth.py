"""Who may call the API: ``Authorization: Bearer <API_TOKEN>``, compared in constant time.

Writes always need the token; reads too unless ``API_PUBLIC_READ``. Without ``API_TOKEN``
everything is open: ``pipeline serve`` then binds loopback only. The token is never logged.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings
from app.errors import PipelineError
from app.web.state import WebState, web_state


class Unauthorized(PipelineError):
    """A valid bearer token is required (Authorization: Bearer <API_TOKEN>)."""


def token_matches(settings: Settings, presented: str | None) -> bool:
    """True when no token is configured, or ``presented`` equals it (constant-time compare)."""
    expected = settings.api_token
    if not expected:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, if that is what it holds."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


#: Reads the header and documents the scheme in OpenAPI; a missing header is ours to refuse.
_BEARER = HTTPBearer(auto_error=False, description="API_TOKEN")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


def require_write(state: Annotated[WebState, Depends(web_state)],
                  credentials: Credentials) -> None:
    """A dependency: refuses (401) a write without the right token."""
    if not token_matches(state.settings, credentials.credentials if credentials else None):
        raise Unauthorized()


def require_read(state: Annotated[WebState, Depends(web_state)],
                 credentials: Credentials) -> None:
    """A dependency: refuses (401) a read without the right token unless reads are public."""
    if state.settings.api_public_read:
        return
    if not token_matches(state.settings, credentials.credentials if credentials else None):
        raise Unauthorized()
