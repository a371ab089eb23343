"""Decode each incoming message once and hand it to every local subscription that matches;
refused messages are logged (rate-limited) and dropped."""

from __future__ import annotations

import structlog

from deepedge.broker_schemas import SchemaError, decode
from deepedge.clock import Clock
from deepedge.transport._api import Received, Refused, Subscription
from deepedge.transport._droplog import DropLog
from deepedge.transport._matching import topic_matches

__all__ = ["Dispatcher", "sender_of"]

log = structlog.get_logger("deepedge.transport")


def sender_of(topic: str) -> str:
    """Who a message claims to come from, for rate-limiting: ``node/<id>`` if the topic names a
    node, else the topic itself (truncated)."""
    parts = topic.split("/")
    if len(parts) >= 4 and parts[2] == "node":
        return f"node/{parts[3][:64]}"
    if len(parts) >= 5 and parts[2] == "cmd" and parts[3] == "node":
        return f"cmd/node/{parts[4][:64]}"
    return topic[:128]


class Dispatcher:
    def __init__(self, clock: Clock | None = None) -> None:
        self.subscriptions: list[Subscription] = []
        self.drops = DropLog(clock)
        self.received = 0

    def add(self, sub: Subscription) -> None:
        self.subscriptions.append(sub)

    def remove(self, sub: Subscription) -> bool:
        """Remove ``sub``; True if no other subscription uses its filter any more."""
        if sub in self.subscriptions:
            self.subscriptions.remove(sub)
        return all(s.topic_filter != sub.topic_filter for s in self.subscriptions)

    def filters(self) -> dict[str, int]:
        """Each filter in use with the highest QoS asked for it."""
        out: dict[str, int] = {}
        for s in self.subscriptions:
            out[s.topic_filter] = max(out.get(s.topic_filter, 0), s.qos)
        return out

    def dispatch(self, topic: str, payload: bytes, retain: bool, only_filter: str | None = None) -> None:
        """``only_filter``: deliver to that filter's subscriptions only (a retained message sent
        for a new subscription)."""
        self.received += 1
        matching = [
            s
            for s in self.subscriptions
            if (only_filter is None or s.topic_filter == only_filter) and topic_matches(s.topic_filter, topic)
        ]
        if not matching:
            return
        try:
            decoded = decode(topic, payload)
        except SchemaError as exc:
            self.drops.drop(sender_of(topic), exc, topic)
            refused = Refused(topic, payload, exc)
            for sub in matching:
                if sub.include_refused:
                    sub.offer(refused)
            return
        item = Received(decoded.topic, decoded.message, retain, topic)
        for sub in matching:
            if not sub.offer(item):
                self.drops.drop(f"overflow:{sub.topic_filter}", "subscriber queue full", topic)
