"""Waiting for a matching message on a subscription, in integration tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deepedge.transport import Subscription


async def wait_for(sub: Subscription, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    """``sub.first``, failing the test (AssertionError) rather than erroring on a timeout."""
    try:
        return await sub.first(pred, timeout)
    except TimeoutError as exc:
        raise AssertionError(f"expected message did not arrive: {exc}") from None
