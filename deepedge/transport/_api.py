"""The transport's interface, shared by the aiomqtt client and the in-memory fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from deepedge import compat
from deepedge.broker_schemas import Cleared, Message, ParsedTopic, SchemaError
from deepedge.compat import Self
from deepedge.errors import DeepEdgeError, ExitCode

__all__ = [
    "ConnectHook",
    "Received",
    "Refused",
    "Subscription",
    "Transport",
    "TransportError",
    "Will",
]

ConnectHook = Callable[[], Awaitable[None]]


class TransportError(DeepEdgeError):
    """The broker could not be reached in time, or a request got no reply."""

    exit_code = ExitCode.TEMPFAIL


@dataclass(frozen=True, slots=True)
class Will:
    """The last will: published by the broker if this client vanishes without disconnecting."""

    topic: str
    message: Message
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Received:
    topic: ParsedTopic
    message: Message | Cleared
    retain: bool
    raw_topic: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A message the codec refused; only delivered to subscriptions opened with
    ``include_refused=True`` (a command server answers them with a typed error)."""

    raw_topic: str
    payload: bytes
    error: SchemaError


class Subscription:
    """An async iterator of decoded messages on one topic filter. Bounded: when the consumer
    falls behind by ``maxsize`` messages, new ones are dropped and counted in ``overflowed``."""

    def __init__(
        self,
        topic_filter: str,
        qos: int,
        maxsize: int,
        include_refused: bool,
        on_close: Callable[[Subscription], Awaitable[None]],
    ) -> None:
        self.topic_filter = topic_filter
        self.qos = qos
        self.include_refused = include_refused
        self.overflowed = 0
        self._queue: asyncio.Queue[Received | Refused] = asyncio.Queue(maxsize)
        self._on_close = on_close
        self._closed = False

    def offer(self, item: Received | Refused) -> bool:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed += 1
            return False
        return True

    async def get(self, timeout: float | None = None) -> Received | Refused:
        async with compat.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancellation
            return await self._queue.get()

    async def first(self, pred: Callable[[Message | Cleared], bool], timeout: float) -> Message | Cleared:
        """The first decoded message for which ``pred`` holds; TimeoutError after ``timeout`` s."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no matching message on {self.topic_filter} within {timeout:g} s")
            item = await self.get(remaining)
            if isinstance(item, Received) and pred(item.message):
                return item.message

    def __aiter__(self) -> AsyncIterator[Received | Refused]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Received | Refused]:
        while True:
            yield await self._queue.get()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._on_close(self)


class Transport(Protocol):
    """What every part of deepedge uses to talk MQTT."""

    client_id: str

    @property
    def connected(self) -> bool: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def wait_connected(self, timeout: float | None = None) -> None: ...

    async def publish(self, topic: str, message: Message | None, *, qos: int = 0, retain: bool = False) -> None: ...

    async def publish_raw(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None: ...

    async def subscribe(
        self, topic_filter: str, *, qos: int = 1, maxsize: int = 10_000, include_refused: bool = False
    ) -> Subscription: ...

    def add_connect_hook(self, hook: ConnectHook) -> None: ...
