"""``/static/…``: the dashboard's own CSS and JavaScript, served from the package (nothing
from a CDN). Only files shipped in ``static/`` are served, by exact name."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".svg": "image/svg+xml"}


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    kind = TYPES.get(name[name.rfind("."):]) if "." in name else None
    folder = resources.files("app.web.dashboard") / "static"
    shipped = {entry.name for entry in folder.iterdir() if entry.is_file()}
    if kind is None or name not in shipped:
        raise HTTPException(404, "no such asset")
    return Response((folder / name).read_bytes(), media_type=kind,
                    headers={"Cache-Control": "public, max-age=300",
                             "X-Content-Type-Options": "nosniff"})
