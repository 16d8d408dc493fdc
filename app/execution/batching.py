"""Calls of one worker process that arrive together, sent together, with no added wait.

A call is sent at once while fewer than ``in_flight`` sends are under way; otherwise it waits
and goes out with everything that queued meanwhile (at most ``most`` calls) in the next send.
Alone, a call goes out as it comes; under load the batches grow by themselves, so the round
trips and commits per call fall as concurrency rises. Used for stage boundaries
(``app.execution.boundaries``) and pick-ups (``Runner.next_lease``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
#: Sends a batch; one result (or the exception for that call) per item, in order. An exception
#: raised by the send itself fails every call of the batch.
Send = Callable[[list[Item]], Awaitable[list[Result | BaseException]]]


@dataclass
class Batcher(Generic[Item, Result]):
    """A queue of calls of one kind and the sends under way."""

    send: Send[Item, Result]
    in_flight: int = 2
    most: int = 32
    _queue: list[tuple[Item, asyncio.Future[Result]]] = field(default_factory=list, init=False)
    _senders: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    async def submit(self, item: Item) -> Result:
        """Send ``item`` (alone, or with the calls that queue with it); its result."""
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if len(self._senders) < self.in_flight:
            sender = asyncio.create_task(self._drain())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await done

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:self.most], self._queue[self.most:]
            try:
                results = await self.send([item for item, _ in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for (_, done), result in zip(batch, results, strict=True):
                if done.done():
                    continue
                if isinstance(result, BaseException):
                    done.set_exception(result)
                else:
                    done.set_result(result)
