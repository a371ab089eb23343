"""cancel_and_wait: tasks that swallow a cancellation are cancelled again; none is waited for
beyond the bound."""

from __future__ import annotations

import asyncio
import contextlib

from deepedge.tasks import cancel_and_wait


async def _swallows_once(ticks: list[int]) -> None:
    with contextlib.suppress(asyncio.CancelledError):  # as 3.11's wait_for can do, by accident
        await asyncio.sleep(60)
    while True:
        ticks.append(1)
        await asyncio.sleep(0.01)


async def _ignores_cancel_until(released: asyncio.Event) -> None:
    while not released.is_set():
        try:
            await released.wait()
        except asyncio.CancelledError:
            continue


async def test_a_task_that_swallowed_a_cancellation_is_cancelled_again() -> None:
    ticks: list[int] = []
    plain = asyncio.create_task(asyncio.sleep(60))
    swallowing = asyncio.create_task(_swallows_once(ticks))
    await asyncio.sleep(0)
    assert await cancel_and_wait([plain, swallowing], timeout=2) == set()
    assert plain.cancelled() and swallowing.cancelled()
    assert ticks  # it did run on after the first cancellation


async def test_a_task_that_ignores_cancellation_is_given_back_after_the_bound() -> None:
    released = asyncio.Event()
    stubborn = asyncio.create_task(_ignores_cancel_until(released))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await cancel_and_wait([stubborn], timeout=0.5) == {stubborn}
    assert loop.time() - t0 < 1.0
    released.set()
    await stubborn
