"""Rate-limited logging of dropped input: once per sender per interval, with a count of what
was suppressed in between, and at most ``global_per_s`` lines a second over all senders, so a
flood of garbage — from one sender or from ten thousand forged ones — cannot flood the journal."""

from __future__ import annotations

import structlog

from deepedge.broker_schemas import SchemaError
from deepedge.clock import Clock, RealClock
from deepedge.transport._ratelimit import RateLimiter

__all__ = ["DropLog"]

log = structlog.get_logger("deepedge.transport")


class DropLog:
    def __init__(
        self,
        clock: Clock | None = None,
        interval_s: float = 60.0,
        max_senders: int = 10_000,
        global_per_s: float = 5.0,
    ) -> None:
        self._clock = clock or RealClock()
        self._limit = RateLimiter(
            1.0 / interval_s, 1.0, max_keys=max_senders, global_rate=global_per_s, global_burst=2 * global_per_s
        )
        self.total = 0

    @property
    def senders(self) -> int:
        """Senders remembered (bounded by ``max_senders``)."""
        return len(self._limit)

    def drop(self, sender: str, error: SchemaError | str, topic: str) -> None:
        self.total += 1
        if not self._limit.allow(sender, self._clock.monotonic()):
            return
        if isinstance(error, SchemaError):
            reason, detail = error.reason.value, error.detail
        else:
            reason, detail = "dropped", error
        log.warning(
            "message.dropped",
            sender=sender[:200],
            topic=topic[:200],
            reason=reason,
            detail=detail[:300],
            suppressed_since_last=self._limit.take_suppressed(sender),
        )
