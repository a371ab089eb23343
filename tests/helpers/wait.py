"""Waiting for a matching message on a subscription, in integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from deepedge.transport import Received, Subscription


async def wait_for(sub: Subscription, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    """The first decoded message for which ``pred`` holds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("expected message did not arrive")
        try:
            item = await sub.get(remaining)
        except TimeoutError:
            raise AssertionError("expected message did not arrive") from None
        if isinstance(item, Received) and pred(item.message):
            return item.message
