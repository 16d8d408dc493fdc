"""Quotas through the HTTP API of a real ``pipeline serve``: set, list, dry runs, remove, and
the refusals (401, 404, 422) with the CLI's messages."""

from __future__ import annotations

import httpx

from tests.webserver import Web, web
from tests.workerprocs import db, queue

__all__ = ["db", "queue", "web"]


async def test_quotas_through_the_api(web: Web) -> None:
    server = await web.start()
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers()) as api:
        dry = await api.put("/api/quotas/upload/per-channel",
                            json={"rate": "6/24h", "dry_run": True})
        assert dry.status_code == 200 and dry.json()["dry_run"] is True
        assert (await api.get("/api/quotas")).json() == []
        made = await api.put("/api/quotas/upload/per-channel", json={"rate": "6/24h"})
        assert made.json()["message"] == "quota set: upload: 6 starts per 24h per channel"
        again = await api.put("/api/quotas/all/shared", json={"rate": "30/1h"})
        assert again.json()["quota"]["stage"] == "all"
        listed = (await api.get("/api/quotas")).json()
        assert [(q["stage"], q["scope"], q["limit"], q["window"]) for q in listed] == [
            ("all", "shared", 30, "1h"), ("upload", "per-channel", 6, "24h")]

        bad = await api.put("/api/quotas/uploads/shared", json={"rate": "6/24h"})
        assert bad.status_code == 422 and bad.json()["error"].startswith("stage 'uploads'")
        bad = await api.put("/api/quotas/upload/shared", json={"rate": "six"})
        assert bad.status_code == 422 and "expected LIMIT/WINDOW" in bad.json()["error"]
        missing = await api.delete("/api/quotas/video/shared")
        assert missing.status_code == 404
        assert missing.json() == {"error": "no shared quota on video"}

        kept = await api.delete("/api/quotas/upload/per-channel", params={"dry_run": "true"})
        assert kept.status_code == 200 and len((await api.get("/api/quotas")).json()) == 2
        gone = await api.delete("/api/quotas/upload/per-channel")
        assert gone.json()["message"] == "removed the per-channel quota on upload"
        assert len((await api.get("/api/quotas")).json()) == 1
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        assert (await anonymous.put("/api/quotas/video/shared",
                                    json={"rate": "1/1h"})).status_code == 401
