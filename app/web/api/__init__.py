"""The REST API under ``/api``: reads open to the token (or to all with ``API_PUBLIC_READ``),
writes to the token only; every write goes through the service layer as the CLI's do."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.web import auth
from app.web.api import actions, channels, reads, tasks
from app.web.errors import RESPONSES

router = APIRouter(responses=RESPONSES)
router.include_router(reads.router, dependencies=[Depends(auth.require_read)])
router.include_router(tasks.reads, dependencies=[Depends(auth.require_read)])
router.include_router(tasks.writes, dependencies=[Depends(auth.require_write)])
router.include_router(actions.router, dependencies=[Depends(auth.require_write)])
router.include_router(channels.router, dependencies=[Depends(auth.require_write)])
