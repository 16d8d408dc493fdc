"""Calls of one worker process that arrive together, sent together, with no added wait.

A call is sent at once while fewer than ``in_flight`` sends are under way (by its caller when
none is and ``most`` is one); otherwise it waits and goes out with everything that queued
meanwhile (at most ``most`` calls) in the next send.
Alone, a call goes out as it comes; under load the batches grow by themselves, so the round
trips and commits per call fall as concurrency rises. Used for stage boundaries
(``app.execution.boundaries``) and pick-ups (``Runner.next_lease``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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
    #: The sends under way: sender tasks, and callers sending alone (``_send_alone``).
    _senders: set[asyncio.Task[Any]] = field(default_factory=set, init=False)

    async def submit(self, item: Item) -> Result:
        """Send ``item`` (alone, or with the calls that queue with it); its result."""
        if self.most == 1 and not self._senders and self.in_flight > 0:
            return await self._send_alone(item)
        return await self.put(item)

    def put(self, item: Item) -> asyncio.Future[Result]:
        """Queue ``item`` to be sent with the calls that queue with it; the future of its
        result. The send goes on whatever becomes of the caller: one cancelled while it waits
        (behind ``asyncio.shield``) can still read what the call did."""
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if len(self._senders) < self.in_flight:
            self._senders.add(asyncio.create_task(self._drain()))
        return done

    async def _send_alone(self, item: Item) -> Result:
        """A batcher of one call per send with nothing under way: the caller sends its call
        itself, without a task and a future (about 10 µs a call, a hundredth of a pick-up).
        Calls that queue meanwhile get a sender when this send ends. Where calls can share a
        send, a sender task sends them: callers its results wake call again in one step, and
        their calls then go out together (sent alone, the first of them would go by itself,
        and pick-ups of two claim loops went out one by one: a third fewer per second)."""
        me = asyncio.current_task()
        assert me is not None
        self._senders.add(me)
        try:
            result = (await self.send([item]))[0]
        finally:
            self._senders.discard(me)
            if self._queue and len(self._senders) < self.in_flight:
                self._senders.add(asyncio.create_task(self._drain()))
        if isinstance(result, BaseException):
            raise result
        return result

    async def _drain(self) -> None:
        """Send what is queued until nothing is. A sender leaves ``_senders`` in the same step
        as it finds the queue empty: a call queued after that starts a sender of its own. (Left
        to the task's done callback, which runs a step later, a call queued by a caller woken by
        this sender's last results found the sender still counted and waited for ever.)"""
        me = asyncio.current_task()
        try:
            while self._queue:
                batch, self._queue = self._queue[:self.most], self._queue[self.most:]
                try:
                    results = await self.send([item for item, _ in batch])
                except Exception as exc:
                    results = [exc] * len(batch)
                except BaseException:
                    _cancel(batch)              # cancelled mid-send: its callers are too
                    raise
                _settle(batch, results)
        finally:
            if me is not None:
                self._senders.discard(me)
            if self._queue and not self._senders:   # cancelled with calls still queued
                _cancel(self._queue)
                self._queue = []


def _settle(batch: list[tuple[Item, asyncio.Future[Result]]],
            results: list[Result | BaseException]) -> None:
    """Give each call of ``batch`` its result or its exception."""
    for (_, done), result in zip(batch, results, strict=True):
        if done.done():
            continue
        if isinstance(result, BaseException):
            done.set_exception(result)
        else:
            done.set_result(result)


def _cancel(calls: list[tuple[Item, asyncio.Future[Result]]]) -> None:
    for _, done in calls:
        done.cancel()
