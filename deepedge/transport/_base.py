"""What the MQTT transport and the in-memory fake share: the connected flag and waiting for it
(the one place the cancellation-safe wait lives), connect hooks, the decoding dispatcher,
publishing a message as its payload, and opening a subscription."""

from __future__ import annotations

import asyncio

from deepedge import compat
from deepedge.broker_schemas import Message, encode
from deepedge.clock import Clock
from deepedge.transport._api import ConnectHook, Subscription, TransportError
from deepedge.transport._dispatch import Dispatcher
from deepedge.transport._matching import validate_filter

__all__ = ["TransportBase"]


class TransportBase:
    def __init__(self, client_id: str, clock: Clock | None = None) -> None:
        self.client_id = client_id
        self._dispatcher = Dispatcher(clock)
        self._hooks: list[ConnectHook] = []
        self._connected = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def dispatcher(self) -> Dispatcher:
        return self._dispatcher

    def add_connect_hook(self, hook: ConnectHook) -> None:
        """Run ``hook`` after every (re)connect, before messages are read (e.g. republish a birth)."""
        self._hooks.append(hook)

    def _no_connection(self, timeout: float | None) -> str:
        return "not connected to the broker"

    async def wait_connected(self, timeout: float | None = None) -> None:
        try:
            async with compat.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancellation
                await self._connected.wait()
        except TimeoutError:
            raise TransportError(self._no_connection(timeout)) from None

    async def publish(self, topic: str, message: Message | None, *, qos: int = 0, retain: bool = False) -> None:
        """Publish ``message`` (None publishes an empty payload: clears a retained message)."""
        await self.publish_raw(topic, b"" if message is None else encode(message), qos=qos, retain=retain)

    async def publish_raw(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        raise NotImplementedError

    def _open(self, topic_filter: str, qos: int, maxsize: int, include_refused: bool) -> Subscription:
        sub = Subscription(validate_filter(topic_filter), qos, maxsize, include_refused, self._unsubscribe)
        self._dispatcher.add(sub)
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        self._dispatcher.remove(sub)
