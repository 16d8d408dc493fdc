"""The batcher behind pick-ups and stage boundaries: calls that arrive together go out together,
and no call is ever left queued with no sender to take it."""

from __future__ import annotations

import asyncio

import pytest

from app.execution.batching import Batcher


async def _echo(items: list[int]) -> list[int | BaseException]:
    await asyncio.sleep(0)          # a round trip: the sender yields while it waits
    return list(items)


async def test_a_call_made_by_a_caller_woken_by_the_last_results_is_sent() -> None:
    """Two calls share one send. The first caller, woken by its result, calls again at once,
    in the step before the finished sender's done callback would run: that call must still be
    sent (it waited for ever when the sender left the count only in its done callback)."""
    batcher: Batcher[int, int] = Batcher(_echo, in_flight=1)

    async def twice() -> tuple[int, int]:
        return await batcher.submit(1), await batcher.submit(3)

    first = asyncio.create_task(twice())
    second = asyncio.create_task(batcher.submit(2))
    assert await asyncio.wait_for(asyncio.gather(first, second), timeout=5) == [(1, 3), 2]


async def test_calls_that_queue_during_a_send_go_out_together() -> None:
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int | BaseException]:
        sent.append(list(items))
        await asyncio.sleep(0)
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(send, in_flight=1, most=3)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert sent == [[0, 1, 2], [3, 4]]        # at most three per send, no wait added


async def test_a_failed_send_fails_each_of_its_calls_and_the_next_ones_go_on() -> None:
    calls = 0

    async def send(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise ConnectionError("gone")
        return list(items)

    batcher: Batcher[int, int] = Batcher(send, in_flight=1)
    outcomes = await asyncio.gather(batcher.submit(1), batcher.submit(2),
                                    return_exceptions=True)
    assert [type(o) for o in outcomes] == [ConnectionError, ConnectionError]
    assert await batcher.submit(3) == 3


async def test_callers_woken_together_call_again_together() -> None:
    """Two claim loops: every send after the first carries both calls (each caller, woken by
    the results, calls again in the same step)."""
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int | BaseException]:
        sent.append(list(items))
        await asyncio.sleep(0)
        return list(items)

    batcher: Batcher[int, int] = Batcher(send, in_flight=1, most=8)

    async def loop(me: int) -> None:
        for _ in range(5):
            await batcher.submit(me)

    await asyncio.gather(loop(1), loop(2))
    assert sent == [[1, 2]] * 5


async def test_a_caller_sending_alone_that_fails_or_is_cancelled_leaves_no_call_queued() -> None:
    """One call per send: a call sent by its caller (nothing under way) fails with its send's
    error; if that caller is cancelled mid-send, the calls that queued meanwhile are still
    sent."""
    gate = asyncio.Event()

    async def send(items: list[int]) -> list[int | BaseException]:
        if items == [0]:
            await gate.wait()            # the lone send hangs until its caller is cancelled
        if items == [9]:
            raise ConnectionError("gone")
        await asyncio.sleep(0)
        return list(items)

    batcher: Batcher[int, int] = Batcher(send, in_flight=1, most=1)
    alone = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    queued = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    alone.cancel()
    assert await asyncio.wait_for(queued, timeout=5) == 1
    assert alone.cancelled()
    with pytest.raises(ConnectionError):
        await batcher.submit(9)
    assert await batcher.submit(2) == 2
