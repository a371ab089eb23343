"""Rate-limited logging of dropped input: once per sender per interval, with a count of what
was suppressed in between, so a flood of garbage cannot flood the journal."""

from __future__ import annotations

import structlog

from deepedge.broker_schemas import SchemaError
from deepedge.clock import Clock, RealClock

__all__ = ["DropLog"]

log = structlog.get_logger("deepedge.transport")


class DropLog:
    def __init__(self, clock: Clock | None = None, interval_s: float = 60.0, max_senders: int = 10_000) -> None:
        self._clock = clock or RealClock()
        self._interval = interval_s
        self._max_senders = max_senders
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.total = 0

    def drop(self, sender: str, error: SchemaError | str, topic: str) -> None:
        self.total += 1
        now = self._clock.monotonic()
        last = self._last.get(sender)
        if last is not None and now - last < self._interval:
            self._suppressed[sender] = self._suppressed.get(sender, 0) + 1
            return
        if len(self._last) >= self._max_senders:  # forget the oldest sender
            oldest = min(self._last, key=self._last.__getitem__)
            self._last.pop(oldest)
            self._suppressed.pop(oldest, None)
        self._last[sender] = now
        suppressed = self._suppressed.pop(sender, 0)
        if isinstance(error, SchemaError):
            reason, detail = error.reason.value, error.detail
        else:
            reason, detail = "dropped", error
        log.warning(
            "message.dropped",
            sender=sender,
            topic=topic[:200],
            reason=reason,
            detail=detail[:300],
            suppressed_since_last=suppressed,
        )
