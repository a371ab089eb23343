"""One keyed rate limiter for everything a flood could make a daemon do too often (log a dropped
message, answer a garbage command): a token bucket per key, at most ``max_keys`` keys remembered
(the least recently used forgotten first, so forged keys cannot grow it), and a global bucket
over all keys, so a flood from many keys is bounded too."""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["RateLimiter"]


class _Bucket:
    __slots__ = ("last", "suppressed", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens, self.last, self.suppressed = tokens, last, 0


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 10_000,
        global_rate: float | None = None,
        global_burst: float | None = None,
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("need rate > 0, burst >= 1, max_keys >= 1")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._keys: OrderedDict[str, _Bucket] = OrderedDict()
        self._global: _Bucket | None = None
        self._global_rate = global_rate
        self._global_burst = global_burst if global_burst is not None else (global_rate or 0) * 2
        self.suppressed = 0  # refusals in all

    @staticmethod
    def _refill(bucket: _Bucket, rate: float, burst: float, now: float) -> None:
        bucket.tokens = min(burst, bucket.tokens + max(0.0, now - bucket.last) * rate)
        bucket.last = now

    def allow(self, key: str, now: float) -> bool:
        """Take a token for ``key``; False when its bucket (or the global one) is empty."""
        bucket = self._keys.pop(key, None) or _Bucket(self.burst, now)
        self._keys[key] = bucket  # most recently used last
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        self._refill(bucket, self.rate, self.burst, now)
        ok = bucket.tokens >= 1.0
        if ok and self._global_rate is not None:
            g = self._global = self._global or _Bucket(self._global_burst, now)
            self._refill(g, self._global_rate, self._global_burst, now)
            ok = g.tokens >= 1.0
            if ok:
                g.tokens -= 1.0
        if ok:
            bucket.tokens -= 1.0
            return True
        bucket.suppressed += 1
        self.suppressed += 1
        return False

    def take_suppressed(self, key: str) -> int:
        """How many times ``key`` was refused since this was last asked (and reset it)."""
        bucket = self._keys.get(key)
        if bucket is None:
            return 0
        count, bucket.suppressed = bucket.suppressed, 0
        return count

    def __len__(self) -> int:
        return len(self._keys)
