"""The one MQTT client of deepedge, on aiomqtt: last will, QoS/retain, subscriptions that
survive reconnects, reconnect with exponential backoff and full jitter; refuses an insecure
remote broker, and says in one line why a first connection failed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import structlog
from aiomqtt.exceptions import MqttConnectError  # (not re-exported by aiomqtt)
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from deepedge.backoff import Backoff
from deepedge.broker_schemas import encode
from deepedge.clock import Clock, RealClock
from deepedge.compat import Self
from deepedge.config import BrokerConfig, ConfigError
from deepedge.tasks import cancel_and_wait
from deepedge.transport._api import Subscription, TransportError, Will
from deepedge.transport._base import TransportBase
from deepedge.transport._dispatch import Dispatcher

__all__ = ["MqttTransport"]

log = structlog.get_logger("deepedge.transport")

# Every client id deepedge sends starts with this. The secure broker config (deepedge.deploy)
# admits only such ids (``clientid_prefixes``), so an operator can never take a daemon's id
# (a daemon's id is its username, which never starts with it).
CLIENT_ID_PREFIX = "deepedge-"


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails: paho leaves such a socket to the garbage
    collector (a ResourceWarning each failed attempt)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class _PahoSocketErrors(logging.Filter):
    """paho logs a reset socket at ERROR; the transport reports the same failure in its own
    words (``_explain``), so a CLI error stays one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("failed to receive on socket")


_paho_log = logging.getLogger("deepedge.transport.paho")
_paho_log.addFilter(_PahoSocketErrors())


def _tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    """The TLS context for ``mqtts://``; a missing or bad certificate file is a ConfigError."""
    if not broker.tls:
        return None
    files = {"ca_file": broker.ca_file, "cert_file": broker.cert_file, "key_file": broker.key_file}
    for key, path in files.items():  # each named (a new operator's review: "[Errno 2] No such file")
        if path and not Path(path).is_file():
            raise ConfigError(f"broker.{key} {path}: {'not a file' if Path(path).exists() else 'does not exist'}")
    try:
        ctx = ssl.create_default_context(cafile=broker.ca_file or None)
        ctx.sslsocket_class = _ClosingSSLSocket
        if broker.cert_file:
            ctx.load_cert_chain(broker.cert_file, broker.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        named = ", ".join(f"broker.{k} {v}" for k, v in files.items() if v)
        raise ConfigError(f"broker TLS files ({named or 'the system CA store'}): {exc}") from None
    return ctx


class _HandshakeClosed(aiomqtt.MqttError):
    """The broker closed the connection before its CONNACK."""


class _Client(aiomqtt.Client):
    """aiomqtt's client, but a connection that the broker closes before its CONNACK fails the
    connect at once (aiomqtt ignores that disconnect and waits for its timeout). A TLS port does
    that to a plaintext client."""

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if not self._connected.done():
            self._connected.set_exception(_HandshakeClosed(str(reason_code)))
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)


_REFUSED_CREDENTIALS = {4, 5, 134, 135}  # MQTT 3.1.1 / 5 CONNACK: bad username or password, not authorised
_REFUSED_ID = {2, 133}
# What a TLS client meets on a plaintext MQTT port (Mosquitto resets the connection).
_TLS_PLAINTEXT_PEER = (
    "WRONG_VERSION_NUMBER",
    "record layer failure",
    "packet length too long",
    "UNEXPECTED_EOF",
    "Connection reset by peer",
)


def _explain(exc: aiomqtt.MqttError, broker: BrokerConfig, client_id: str) -> tuple[str, bool]:
    """One line on why a connection failed, and whether it is a configuration error that
    retrying will not fix (the port, the TLS trust, the credentials)."""
    url = broker.url
    if isinstance(exc, _HandshakeClosed):
        if not broker.tls:
            return (
                f"the broker at {url} closed the connection during the MQTT handshake: is it a TLS port? use mqtts://",
                True,
            )
        return (
            f"the broker at {url} closed the connection during the MQTT handshake "
            "(does it require a client certificate? broker.cert_file / broker.key_file)",
            True,
        )
    if isinstance(exc, MqttConnectError):
        rc = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
        if rc in _REFUSED_CREDENTIALS:
            if not broker.username:
                return f"the broker at {url} requires credentials: set broker.username and broker.password", True
            if not client_id.startswith(CLIENT_ID_PREFIX):  # (Mosquitto's clientid_prefixes says "not authorised")
                return (
                    f"the broker at {url} refused user {broker.username!r} with client id {client_id!r} ({exc}): "
                    f"a deepedge broker admits only client ids that start with {CLIENT_ID_PREFIX!r}",
                    True,
                )
            return (
                f"the broker at {url} refused user {broker.username!r} ({exc}): check broker.username and "
                "broker.password, and that this port's password file has the user",
                True,
            )
        if rc in _REFUSED_ID:
            return f"the broker at {url} refused the client id {client_id!r} ({exc})", True
        return f"the broker at {url} refused the connection: {exc}", False
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        trust = f"broker.ca_file {broker.ca_file}" if broker.ca_file else "the system's CA store (broker.ca_file)"
        return f"the TLS certificate of {url} is not trusted by {trust}: {text}", True
    if broker.tls and any(marker in text for marker in _TLS_PLAINTEXT_PEER):
        return f"the TLS handshake with {url} failed ({text}): is it a plaintext port? use the broker's TLS port", True
    if "[SSL" in text:
        return f"the TLS handshake with {url} failed: {text}", True
    if "Connection refused" in text:
        return f"{broker.host}:{broker.port} refused the connection: is the broker running, on this port?", False
    return text, False


def _dispatching_queue(dispatcher: Dispatcher) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's incoming-message queue, replaced by one that hands each message to the
    dispatcher at once, in paho's callback on the event loop. aiomqtt's own iterator creates a
    task per message; this removes that cost (see docs/benchmarks/ingest.md)."""

    class DispatchingQueue(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            payload = item.payload if isinstance(item.payload, bytes | bytearray) else b""
            dispatcher.dispatch(item.topic.value, bytes(payload), bool(item.retain))

    return DispatchingQueue


class MqttTransport(TransportBase):
    """``async with MqttTransport(broker, client_id=...) as t:`` connects (waiting up to the
    broker's ``connect_timeout_s`` for the first connection) and keeps reconnecting until the
    block exits. ``persistent=True`` asks the broker to keep the session (QoS 1 messages queued
    while away); it needs a stable ``client_id``.

    ``identity_client_id=True`` (the daemons): when ``broker.username`` is set, the client id is
    the username, as the secure broker config makes it (``use_username_as_clientid``), so
    ``client_id`` (and every reply topic built from it) is the id the broker knows. The id sent
    in CONNECT is ``deepedge-<username>``, which the broker replaces. Without a username,
    ``client_id`` is used as usual.

    A broker that is not on this machine must be reached over TLS and with credentials
    (``BrokerConfig.insecure_reason``): else ConfigError. When the first connection fails for
    a reason that retrying will not fix (a plaintext client on a TLS port, an untrusted
    certificate, refused credentials), entering the block raises ConfigError at once with that
    reason, instead of waiting for the timeout."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        client_id: str | None = None,
        identity_client_id: bool = False,
        will: Will | None = None,
        persistent: bool = False,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        wait_first_connect: bool = True,
        exit_on_config_error: bool = False,
    ) -> None:
        insecure = broker.insecure_reason()
        if insecure is not None:
            raise ConfigError(insecure)
        if identity_client_id and broker.username:
            super().__init__(broker.username, clock)
            self._connect_id = CLIENT_ID_PREFIX + broker.username
        else:
            super().__init__(client_id or f"{CLIENT_ID_PREFIX}{uuid.uuid4().hex[:12]}", clock)
            self._connect_id = self.client_id
        self._broker = broker
        self._will = will
        self._tls = _tls_context(broker)
        self._persistent = persistent
        self._clock = clock or RealClock()
        self._backoff = backoff or Backoff()
        self._wait_first = wait_first_connect
        self._exit_on_config_error = exit_on_config_error
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_error = ""
        self.connects = 0

    # ---- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.client_id}")
        if self._wait_first:
            try:
                await self._wait_first_connect(self._broker.connect_timeout_s)
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

    async def _wait_first_connect(self, timeout: float) -> None:
        """Wait for the first connection, or for the connection loop to give up on a
        configuration error (it raises ConfigError then)."""
        task = self._task
        assert task is not None
        waiter = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait({waiter, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            raise exc
        if not self._connected.is_set():
            raise TransportError(self._no_connection(timeout))

    def _no_connection(self, timeout: float | None) -> str:
        text = f"no connection to the MQTT broker at {self._broker.url} within {timeout:g} s"
        return f"{text}: {self._last_error}" if self._last_error else text

    def _make_client(self) -> aiomqtt.Client:
        b = self._broker
        will = None
        if self._will is not None:
            will = aiomqtt.Will(self._will.topic, encode(self._will.message), self._will.qos, self._will.retain)
        return _Client(
            b.host,
            b.port,
            username=b.username or None,
            password=b.password or None,
            identifier=self._connect_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            will=will,
            clean_session=not self._persistent,
            keepalive=b.keepalive_s,
            timeout=b.connect_timeout_s,
            tls_context=self._tls,
            logger=_paho_log,
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
                reason, config_error = _explain(exc, self._broker, self._connect_id)
                self._last_error = reason
                if config_error and self.connects == 0 and (self._wait_first or self._exit_on_config_error):
                    raise ConfigError(reason) from None  # __aenter__ (or wait_closed) reports it
                if self._wait_first and self.connects == 0:
                    # a one-shot command waiting for its first connection: its error says it all
                    log.debug("mqtt.connect_failed", broker=self._broker.url, error=reason)
                elif config_error:
                    log.error("mqtt.connect_refused", broker=self._broker.url, client=self.client_id, error=reason)
                else:
                    log.warning("mqtt.disconnected", broker=self._broker.url, client=self.client_id, error=reason)
            finally:
                self._connected.clear()
                self._client = None
            if not self._closing:
                delay = self._backoff.next_delay()
                quiet = self._wait_first and self.connects == 0
                (log.debug if quiet else log.info)(
                    "mqtt.reconnecting",
                    broker=self._broker.url,
                    client=self.client_id,
                    in_s=round(delay, 3),
                    error=self._last_error,
                )
                await self._clock.sleep(delay)

    async def wait_closed(self) -> None:
        """Until the connection loop ends: never while it keeps reconnecting, unless it gave up
        on a configuration error at start (``exit_on_config_error``), which this raises."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    # ---- publish / subscribe ------------------------------------------------------------------

    async def publish_raw(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        """Waits for a connection up to the broker's connect timeout, then raises TransportError."""
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
        sub = self._open(topic_filter, qos, maxsize, include_refused)
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
