"""The board's one reader per server process: it reads the board every ``interval_s`` while
anyone watches it live, hands each change to every subscriber, and lends its latest reading to
page views. A thousand open boards cost the database what one does; an idle server (nobody
watching, no page views) costs it nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("pipeline.web")
V = TypeVar("V")


class SharedRead(Generic[V]):
    """A read shared by every caller: its last result is lent while it is fresh enough, and
    callers arriving during a read wait for that one (one read at a time)."""

    def __init__(self, read: Callable[[], Awaitable[V]]) -> None:
        self._read = read
        self._lock = asyncio.Lock()
        self._value: tuple[float, V] | None = None
        #: Reads made so far.
        self.reads = 0

    async def latest(self, *, max_age_s: float) -> V:
        """The value read at most ``max_age_s`` ago, reading it again when it is older."""
        fresh = self._fresh(max_age_s)
        if fresh is not None:
            return fresh
        async with self._lock:
            fresh = self._fresh(max_age_s)
            if fresh is not None:
                return fresh
            self.reads += 1
            value = await self._read()
            self._value = (time.monotonic(), value)
            return value

    def _fresh(self, max_age_s: float) -> V | None:
        if self._value is None or time.monotonic() - self._value[0] > max_age_s:
            return None
        return self._value[1]


class Poller(Generic[V]):
    """``read`` gives the board; ``facts`` what must differ for it to count as changed (not
    its clock); ``render`` its HTML, made once per change for every subscriber."""

    def __init__(self, read: Callable[[], Awaitable[V]], *, facts: Callable[[V], object],
                 render: Callable[[V], str], interval_s: float) -> None:
        self._board = SharedRead(read)
        self._facts = facts
        self._render = render
        self.interval_s = interval_s
        self._subscribers: set[asyncio.Queue[str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._key: object = None
        self._latest: str | None = None
        self._failing = False

    @property
    def watching(self) -> int:
        return len(self._subscribers)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def polls(self) -> int:
        """Reads of the board so far (what the server spends on boards)."""
        return self._board.reads

    async def latest(self, *, max_age_s: float) -> V:
        """The board read at most ``max_age_s`` ago (``SharedRead.latest``)."""
        return await self._board.latest(max_age_s=max_age_s)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue that always holds the newest board not yet taken (older ones are dropped:
        a slow browser skips states, never falls behind). The poller runs while any exist."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        if self._latest is not None:
            queue.put_nowait(self._latest)
        self._subscribers.add(queue)
        if not self.running:
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
        loop = asyncio.get_running_loop()
        while self._subscribers:
            began = loop.time()
            await self._poll_once()
            # A steady cadence: a change waits at most one interval plus one read.
            await asyncio.sleep(max(0.0, began + self.interval_s - loop.time()))
        # Nobody watches: the next subscriber starts a fresh poller with a fresh first view.
        self._key, self._latest = None, None

    async def _poll_once(self) -> None:
        try:
            view = await self.latest(max_age_s=self.interval_s / 2)
        except Exception:       # the database away for a moment: the board waits for it
            if not self._failing:           # once per outage, not twice a second
                log.warning("live board: read failed", exc_info=True)
            self._failing = True
            return
        if self._failing:
            log.info("live board: reading again")
        self._failing = False
        key = self._facts(view)
        if key == self._key and self._latest is not None:
            return
        self._key, self._latest = key, self._render(view)
        for queue in list(self._subscribers):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(self._latest)
