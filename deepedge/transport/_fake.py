"""An in-memory broker and transport with the same interface as MqttTransport, for unit tests.

It keeps retained messages, delivers to matching subscriptions through the same decoding
dispatcher, and publishes a client's will when the test ``kill``s it.
"""

from __future__ import annotations

import asyncio
import uuid
from types import TracebackType
from typing import Self

from deepedge.broker_schemas import Message, encode
from deepedge.transport._api import ConnectHook, Subscription, TransportError, Will
from deepedge.transport._dispatch import Dispatcher
from deepedge.transport._matching import topic_matches, validate_filter

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


class FakeTransport:
    def __init__(self, broker: FakeBroker, *, client_id: str | None = None, will: Will | None = None) -> None:
        self.client_id = client_id or f"fake-{uuid.uuid4().hex[:8]}"
        self.will = will
        self._broker = broker
        self._dispatcher = Dispatcher()
        self._hooks: list[ConnectHook] = []
        self._connected = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def dispatcher(self) -> Dispatcher:
        return self._dispatcher

    def add_connect_hook(self, hook: ConnectHook) -> None:
        self._hooks.append(hook)

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

    async def wait_connected(self, timeout: float | None = None) -> None:
        try:
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancellation
                await self._connected.wait()
        except TimeoutError:
            raise TransportError("fake broker: not connected") from None

    async def publish(self, topic: str, message: Message | None, *, qos: int = 0, retain: bool = False) -> None:
        await self.publish_raw(topic, b"" if message is None else encode(message), qos=qos, retain=retain)

    async def publish_raw(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        if not self.connected:
            raise TransportError("fake broker: not connected")
        self._broker.publish(topic, payload, qos, retain)
        await asyncio.sleep(0)

    async def subscribe(
        self, topic_filter: str, *, qos: int = 1, maxsize: int = 10_000, include_refused: bool = False
    ) -> Subscription:
        sub = Subscription(validate_filter(topic_filter), qos, maxsize, include_refused, self._unsubscribe)
        self._dispatcher.add(sub)
        self._broker.send_retained(self, topic_filter)
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        self._dispatcher.remove(sub)

    def deliver(self, topic: str, payload: bytes, retain: bool, only_filter: str | None = None) -> None:
        if self.connected:
            self._dispatcher.dispatch(topic, payload, retain, only_filter)
