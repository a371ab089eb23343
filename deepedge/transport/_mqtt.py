"""The one MQTT client of deepedge, on aiomqtt: last will, QoS/retain, subscriptions that
survive reconnects, reconnect with exponential backoff and full jitter."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from types import TracebackType
from typing import Self

import aiomqtt
import structlog

from deepedge.broker_schemas import Message, encode
from deepedge.clock import Clock, RealClock
from deepedge.config import BrokerConfig, ConfigError
from deepedge.tasks import cancel_and_wait
from deepedge.transport._api import ConnectHook, Subscription, TransportError, Will
from deepedge.transport._backoff import Backoff
from deepedge.transport._dispatch import Dispatcher
from deepedge.transport._matching import validate_filter

__all__ = ["MqttTransport"]

log = structlog.get_logger("deepedge.transport")


def _tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    """The TLS context for ``mqtts://``; a missing or bad certificate file is a ConfigError."""
    if not broker.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=broker.ca_file or None)
        if broker.cert_file:
            ctx.load_cert_chain(broker.cert_file, broker.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"broker TLS files: {exc}") from None
    return ctx


def _dispatching_queue(dispatcher: Dispatcher) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's incoming-message queue, replaced by one that hands each message to the
    dispatcher at once, in paho's callback on the event loop. aiomqtt's own iterator creates a
    task per message; this removes that cost (see docs/benchmarks/ingest.md)."""

    class DispatchingQueue(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            payload = item.payload if isinstance(item.payload, bytes | bytearray) else b""
            dispatcher.dispatch(item.topic.value, bytes(payload), bool(item.retain))

    return DispatchingQueue


class MqttTransport:
    """``async with MqttTransport(broker, client_id=...) as t:`` connects (waiting up to the
    broker's ``connect_timeout_s`` for the first connection) and keeps reconnecting until the
    block exits. ``persistent=True`` asks the broker to keep the session (QoS 1 messages queued
    while away); it needs a stable ``client_id``."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        client_id: str | None = None,
        will: Will | None = None,
        persistent: bool = False,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        wait_first_connect: bool = True,
    ) -> None:
        self.client_id = client_id or f"deepedge-{uuid.uuid4().hex[:12]}"
        self._broker = broker
        self._will = will
        self._tls = _tls_context(broker)
        self._persistent = persistent
        self._clock = clock or RealClock()
        self._backoff = backoff or Backoff()
        self._wait_first = wait_first_connect
        self._dispatcher = Dispatcher(self._clock)
        self._hooks: list[ConnectHook] = []
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connects = 0

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def dispatcher(self) -> Dispatcher:
        return self._dispatcher

    def add_connect_hook(self, hook: ConnectHook) -> None:
        """Run ``hook`` after every (re)connect, before messages are read (e.g. republish a birth)."""
        self._hooks.append(hook)

    async def __aenter__(self) -> Self:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.client_id}")
        if self._wait_first:
            try:
                await self.wait_connected(self._broker.connect_timeout_s)
            except BaseException:
                await self._stop()
                raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        self._closing = True
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def wait_connected(self, timeout: float | None = None) -> None:
        try:
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancellation
                await self._connected.wait()
        except TimeoutError:
            raise TransportError(
                f"no connection to the MQTT broker at {self._broker.url} within {timeout:g} s"
            ) from None

    def _make_client(self) -> aiomqtt.Client:
        b = self._broker
        will = None
        if self._will is not None:
            will = aiomqtt.Will(self._will.topic, encode(self._will.message), self._will.qos, self._will.retain)
        return aiomqtt.Client(
            b.host,
            b.port,
            username=b.username or None,
            password=b.password or None,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            will=will,
            clean_session=not self._persistent,
            keepalive=b.keepalive_s,
            timeout=b.connect_timeout_s,
            tls_context=self._tls,
            queue_type=_dispatching_queue(self._dispatcher),
        )

    async def _run(self) -> None:
        while not self._closing:
            try:
                async with self._make_client() as client:
                    self._client = client
                    for topic_filter, qos in self._dispatcher.filters().items():
                        await client.subscribe(topic_filter, qos)
                    self.connects += 1
                    self._backoff.reset()
                    self._connected.set()
                    log.info("mqtt.connected", broker=self._broker.url, client=self.client_id, n=self.connects)
                    for hook in self._hooks:
                        try:
                            await hook()
                        except aiomqtt.MqttError:
                            raise
                        except Exception:  # a hook's bug must not kill the connection loop
                            log.exception("mqtt.connect_hook_failed", client=self.client_id)
                    async for _ in client.messages:  # messages go to the dispatcher directly;
                        pass  # this only waits for the disconnect (raised as MqttError)
            except aiomqtt.MqttError as exc:
                if self._closing:
                    break
                log.warning("mqtt.disconnected", broker=self._broker.url, client=self.client_id, error=str(exc))
            finally:
                self._connected.clear()
                self._client = None
            if not self._closing:
                delay = self._backoff.next_delay()
                log.info("mqtt.reconnecting", client=self.client_id, in_s=round(delay, 3))
                await self._clock.sleep(delay)

    # ---- publish / subscribe ------------------------------------------------------------------

    async def publish(self, topic: str, message: Message | None, *, qos: int = 0, retain: bool = False) -> None:
        """Publish ``message`` (None publishes an empty payload: clears a retained message).
        Waits for a connection up to the broker's connect timeout, then raises TransportError."""
        await self.publish_raw(topic, b"" if message is None else encode(message), qos=qos, retain=retain)

    async def publish_raw(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        deadline = self._clock.monotonic() + self._broker.connect_timeout_s
        while True:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise TransportError(f"could not publish to {topic}: broker {self._broker.url} unreachable")
            if not self._connected.is_set():  # (no wait_for when connected: cheaper, and on Python
                await self.wait_connected(remaining)  # 3.11 wait_for can swallow a cancellation)
            client = self._client
            if client is None:
                continue
            try:
                await client.publish(topic, payload, qos, retain, timeout=remaining)
                return
            except aiomqtt.MqttError as exc:
                log.debug("mqtt.publish_retry", topic=topic, error=str(exc))
                await asyncio.sleep(0.05)

    async def subscribe(
        self, topic_filter: str, *, qos: int = 1, maxsize: int = 10_000, include_refused: bool = False
    ) -> Subscription:
        """Open a subscription; it is renewed on every reconnect until closed."""
        sub = Subscription(validate_filter(topic_filter), qos, maxsize, include_refused, self._unsubscribe)
        self._dispatcher.add(sub)
        client = self._client
        if client is not None:
            try:
                await client.subscribe(topic_filter, qos)
            except aiomqtt.MqttError as exc:  # the reconnect loop subscribes it again
                log.debug("mqtt.subscribe_deferred", filter=topic_filter, error=str(exc))
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        last = self._dispatcher.remove(sub)
        client = self._client
        if last and client is not None and not self._closing:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(sub.topic_filter)
