"""An in-memory broker and transport with the same interface as MqttTransport, for unit tests.

It keeps retained messages, delivers to matching subscriptions through the same decoding
dispatcher, and publishes a client's will when the test ``kill``s it.
"""

from __future__ import annotations

import asyncio
import uuid
from types import TracebackType

from deepedge.broker_schemas import encode
from deepedge.compat import Self
from deepedge.transport._api import Subscription, TransportError, Will
from deepedge.transport._base import TransportBase
from deepedge.transport._matching import topic_matches

__all__ = ["FakeBroker", "FakeTransport"]


class FakeBroker:
    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self.clients: dict[str, FakeTransport] = {}
        self.log: list[tuple[str, bytes, int, bool]] = []  # every publish, for assertions

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.log.append((topic, payload, qos, retain))
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        for client in list(self.clients.values()):
            client.deliver(topic, payload, False)

    def kill(self, client_id: str) -> None:
        """The client vanishes without a disconnect: its will is published."""
        client = self.clients.pop(client_id)
        client.drop_connection()
        if client.will is not None:
            w = client.will
            self.publish(w.topic, encode(w.message), w.qos, w.retain)

    def connect(self, client: FakeTransport) -> None:
        if client.client_id in self.clients:
            raise TransportError(f"client id {client.client_id!r} already connected")
        self.clients[client.client_id] = client

    def disconnect(self, client: FakeTransport) -> None:
        self.clients.pop(client.client_id, None)

    def send_retained(self, client: FakeTransport, topic_filter: str) -> None:
        for topic, payload in list(self.retained.items()):
            if topic_matches(topic_filter, topic):
                client.deliver(topic, payload, True, only_filter=topic_filter)


class FakeTransport(TransportBase):
    def __init__(self, broker: FakeBroker, *, client_id: str | None = None, will: Will | None = None) -> None:
        super().__init__(client_id or f"fake-{uuid.uuid4().hex[:8]}")
        self.will = will
        self._broker = broker

    async def __aenter__(self) -> Self:
        self._broker.connect(self)
        self._connected.set()
        for hook in self._hooks:
            await hook()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._broker.disconnect(self)
        self._connected.clear()

    def drop_connection(self) -> None:
        self._connected.clear()

    def _no_connection(self, timeout: float | None) -> str:
        return "fake broker: not connected"

    async def publish_raw(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        if not self.connected:
            raise TransportError("fake broker: not connected")
        self._broker.publish(topic, payload, qos, retain)
        await asyncio.sleep(0)

    async def subscribe(
        self, topic_filter: str, *, qos: int = 1, maxsize: int = 10_000, include_refused: bool = False
    ) -> Subscription:
        sub = self._open(topic_filter, qos, maxsize, include_refused)
        self._broker.send_retained(self, topic_filter)
        return sub

    def deliver(self, topic: str, payload: bytes, retain: bool, only_filter: str | None = None) -> None:
        if self.connected:
            self._dispatcher.dispatch(topic, payload, retain, only_filter)
