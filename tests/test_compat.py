"""The Python 3.10 replacements of deepedge.compat, run on whichever Python runs the tests."""

from __future__ import annotations

import asyncio

import pytest

from deepedge.compat import StrEnum310, timeout310


class Colour(StrEnum310):
    RED = "red"


def test_the_str_enum_is_a_string_that_prints_as_its_value() -> None:
    assert Colour.RED == "red" and str(Colour.RED) == "red" and f"{Colour.RED}" == "red"
    assert Colour("red") is Colour.RED


async def test_the_timeout_raises_the_builtin_timeout_error_and_lets_a_fast_body_through() -> None:
    with pytest.raises(TimeoutError):
        async with timeout310(0.05):
            await asyncio.sleep(5)
    async with timeout310(5):
        await asyncio.sleep(0)
    async with timeout310(None):
        await asyncio.sleep(0)


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    started = asyncio.Event()

    async def body() -> None:
        async with timeout310(10):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
