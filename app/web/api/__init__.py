"""The REST API under ``/api``: reads open to the token (or to all with ``API_PUBLIC_READ``),
writes to the token only; every write goes through the service layer as the CLI's do."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.web import auth
from app.web.api.actions import router as actions
from app.web.api.channels import router as channels
from app.web.api.quotas import reads as quota_reads
from app.web.api.quotas import writes as quota_writes
from app.web.api.reads import router as reads
from app.web.api.tasks import reads as task_reads
from app.web.api.tasks import writes as task_writes
from app.web.errors import RESPONSES

router = APIRouter(responses=RESPONSES)
router.include_router(reads, dependencies=[Depends(auth.require_read)])
router.include_router(task_reads, dependencies=[Depends(auth.require_read)])
router.include_router(task_writes, dependencies=[Depends(auth.require_write)])
router.include_router(actions, dependencies=[Depends(auth.require_write)])
router.include_router(channels, dependencies=[Depends(auth.require_write)])
router.include_router(quota_reads, dependencies=[Depends(auth.require_read)])
router.include_router(quota_writes, dependencies=[Depends(auth.require_write)])
