"""Stopping asyncio tasks for sure.

A task that is cancelled at the moment an ``asyncio.wait_for`` inside it completes can swallow
the cancellation on Python 3.11 (fixed in 3.12; aiomqtt's publish uses wait_for): a daemon that
cancels its loops once and awaits them then waits forever. ``cancel_and_wait`` cancels again
until every task has ended, within a bound."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout: float = 5.0) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait for them to end, cancelling again every 0.2 s those that have
    not; returns the ones still running after ``timeout`` seconds (none, unless one ignores
    cancellation on purpose)."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            break
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(0.2, left))
    return pending
