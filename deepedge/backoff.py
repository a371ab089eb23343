"""Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
Jitter"): the n-th delay is uniform in [floor, min(cap, base * factor**n)]."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    base: float = 0.2
    cap: float = 30.0
    factor: float = 2.0
    floor: float = 0.05
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.floor <= self.base <= self.cap or self.factor < 1:
            raise ValueError("need 0 <= floor <= base <= cap and factor >= 1")

    def ceiling(self) -> float:
        return min(self.cap, self.base * self.factor**self.attempt)

    def next_delay(self) -> float:
        high = self.ceiling()
        self.attempt = min(self.attempt + 1, 64)
        return self.rng.uniform(self.floor, max(self.floor, high))

    def reset(self) -> None:
        self.attempt = 0
