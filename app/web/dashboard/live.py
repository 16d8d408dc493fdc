"""The live board's one poller per server process: it reads the board every ``interval_s``
while anyone watches, and hands each change to every subscriber. A thousand open boards cost
the database what one does; an idle server (nobody watching) costs it nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger("pipeline.web")

#: What one poll returns: a value equal between polls when nothing changed, and the rendering
#: of the board (called only when it did).
Fetch = Callable[[], Awaitable[tuple[object, Callable[[], str]]]]


class Poller:
    def __init__(self, fetch: Fetch, *, interval_s: float) -> None:
        self._fetch = fetch
        self.interval_s = interval_s
        self._subscribers: set[asyncio.Queue[str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._key: object = None
        self._latest: str | None = None
        #: Polls made so far (what the server spends on live boards).
        self.polls = 0

    @property
    def watching(self) -> int:
        return len(self._subscribers)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue that always holds the newest board not yet taken (older ones are dropped:
        a slow browser skips states, never falls behind). The poller runs while any exist."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        if self._latest is not None:
            queue.put_nowait(self._latest)
        self._subscribers.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="dashboard-poller")
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    async def stop(self) -> None:
        """Stop polling (at shutdown); open subscriptions get nothing more."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while self._subscribers:
            await self._poll_once()
            await asyncio.sleep(self.interval_s)
        # Nobody watches: the next subscriber starts a fresh poller with a fresh first view.
        self._key, self._latest = None, None

    async def _poll_once(self) -> None:
        self.polls += 1
        try:
            key, render = await self._fetch()
        except Exception:       # the database away for a moment: the board waits for it
            log.warning("live board: poll failed", exc_info=True)
            return
        if key == self._key and self._latest is not None:
            return
        self._key, self._latest = key, render()
        for queue in list(self._subscribers):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(self._latest)
