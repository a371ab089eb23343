"""Request/response over ``cmd/...`` and ``reply/...``: the coordinator answers on
``reply/<client>/coordinator/<request_id>``, a node on its one reply topic ``reply/node/<node>``
(read by every requester that asked that node, each keeping the replies to its own requests:
a node's writable topics stay a fixed handful, see ``deepedge.broker_schemas._topics``).

The requester keeps a table of pending futures keyed by request id, cleaned up in ``finally``;
every wait has a timeout. The server answers every command, including malformed ones whose
reply address can still be read, with a typed reply; a handler's bug becomes an ``internal``
error reply, never a crash.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import msgspec
import structlog

from deepedge import compat
from deepedge.broker_schemas import (
    ArgValue,
    CommandReply,
    CommandRequest,
    ErrorCode,
    ErrorInfo,
    Id,
    ParsedTopic,
    SchemaError,
    SchemaErrorReason,
    TopicKind,
    Topics,
    parse_topic,
)
from deepedge.compat import Self
from deepedge.errors import DeepEdgeError
from deepedge.transport._api import Received, Refused, Transport, TransportError
from deepedge.transport._droplog import DropLog
from deepedge.transport._ratelimit import RateLimiter

__all__ = ["CommandFailed", "Handler", "Requester", "error_reply", "ok_reply", "serve_commands"]

log = structlog.get_logger("deepedge.transport")


class CommandFailed(DeepEdgeError):
    """Raised by a command handler to answer with a typed error."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code: ErrorCode = code
        self.message = message
        super().__init__(f"{code}: {message}")


def ok_reply(request: CommandRequest, **result: Any) -> CommandReply:
    return CommandReply(request_id=request.request_id, ok=True, result=result, ts=time.time())


def error_reply(request_id: str, code: ErrorCode, message: str) -> CommandReply:
    return CommandReply(
        request_id=request_id, ok=False, error=ErrorInfo(code=code, message=message[:4000]), ts=time.time()
    )


class Requester:
    """``async with Requester(transport, topics) as rpc: reply = await rpc.request(topic, args)``.

    It reads the coordinator's replies to its client id from the start, and a node's reply
    topic (``reply/node/<node>``, every requester's) from its first request to that node on:
    a node flooding its reply topic reaches the requesters that asked it, not every session."""

    def __init__(self, transport: Transport, topics: Topics, *, timeout_s: float = 5.0, sender: str = "") -> None:
        self._transport = transport
        self._topics = topics
        self._timeout = timeout_s
        self._sender = sender or transport.client_id
        # request id -> (its future, who must answer: a node id, or None for the coordinator)
        self._pending: dict[str, tuple[asyncio.Future[CommandReply], str | None]] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._nodes: set[str] = set()  # the nodes whose reply topic it reads (those it asked: the fleet)
        self._subscribing: dict[str, asyncio.Lock] = {}  # per node: a pre-flight asks many at once

    async def __aenter__(self) -> Self:
        await self._listen(self._topics.replies(self._transport.client_id))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers.clear()

    async def _listen(self, topic_filter: str) -> None:
        sub = await self._transport.subscribe(topic_filter, qos=1)
        self._readers.append(asyncio.create_task(self._read(sub), name=f"rpc-replies:{topic_filter[-80:]}"))

    async def _listen_to(self, node: str) -> None:
        """Read ``node``'s reply topic from now on (subscribed before the request is sent)."""
        async with self._subscribing.setdefault(node, asyncio.Lock()):
            if node not in self._nodes:
                await self._listen(self._topics.node_reply(node))
                self._nodes.add(node)

    async def _read(self, sub: Any) -> None:
        async with sub:
            async for item in sub:
                if isinstance(item, Received) and isinstance(item.message, CommandReply):
                    # another requester's (a node's replies reach every requester that asked it),
                    # one delivered twice, a retained one: not ours, or answered already
                    fut, responder = self._pending.get(item.message.request_id, (None, None))
                    if fut is None or fut.done():
                        continue
                    if not _from(item.topic, responder):  # an answer from someone not asked
                        log.warning("command.reply_from_other", topic=item.raw_topic[:200], expected=responder)
                        continue
                    fut.set_result(item.message)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def request(
        self, topic: str, args: Mapping[str, ArgValue] | None = None, *, timeout_s: float | None = None
    ) -> CommandReply:
        """Send a command and wait for its reply; TransportError if none comes in time."""
        timeout = self._timeout if timeout_s is None else timeout_s
        request_id = uuid.uuid4().hex[:16]
        fut: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        target = _target(topic)
        if target is not None:
            await self._listen_to(target)
        self._pending[request_id] = (fut, target)
        try:
            request = CommandRequest(
                request_id=request_id,
                reply_to=self._transport.client_id,
                args=dict(args or {}),
                sender=self._sender,
                ts=time.time(),
            )
            await self._transport.publish(topic, request, qos=1)
            async with compat.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancellation
                return await fut
        except TimeoutError:
            raise TransportError(f"no reply to {topic} within {timeout:g} s") from None
        finally:
            self._pending.pop(request_id, None)


Handler = Callable[[str, CommandRequest], Awaitable[CommandReply]]


def _target(command_topic: str) -> str | None:
    """Who must answer a command sent on ``command_topic``: its node, or None (the coordinator)."""
    try:
        parsed = parse_topic(command_topic)
    except SchemaError:
        raise ValueError(f"{command_topic!r} is not a command topic") from None
    if parsed.kind not in (TopicKind.NODE_COMMAND, TopicKind.COORDINATOR_COMMAND):
        raise ValueError(f"{command_topic!r} is not a command topic")
    return parsed.node


def _from(reply_topic: ParsedTopic, responder: str | None) -> bool:
    if responder is None:
        return reply_topic.from_coordinator
    return not reply_topic.from_coordinator and reply_topic.node == responder


class _ReplyAddress(msgspec.Struct):
    request_id: Id
    reply_to: Id


_ADDRESS_MSGPACK = msgspec.msgpack.Decoder(_ReplyAddress)
_ADDRESS_JSON = msgspec.json.Decoder(_ReplyAddress)


def _reply_address(payload: bytes) -> _ReplyAddress | None:
    for decoder in (_ADDRESS_MSGPACK, _ADDRESS_JSON):
        try:
            return decoder.decode(payload)
        except (msgspec.DecodeError, ValueError, RecursionError):
            continue
    return None


ERROR_REPLIES_PER_S = 5.0  # per reply address, to requests that did not decode (a burst of 10 is allowed)
ERROR_REPLIES_GLOBAL_PER_S = 50.0  # over all reply addresses


def _reply_limiter() -> RateLimiter:
    """Error replies to undecodable requests: a flood of garbage must not make a daemon spend
    its time (and the broker's) answering it, queueing the real requests behind. Decoded
    requests are always answered."""
    return RateLimiter(ERROR_REPLIES_PER_S, 10.0, global_rate=ERROR_REPLIES_GLOBAL_PER_S)


MAX_CONCURRENT_COMMANDS = 16  # requests handled at once by one server; more wait their turn


class _Seen:
    """The request ids answered lately (bounded): a request delivered again is not run again."""

    def __init__(self, size: int = 10_000) -> None:
        self._ids: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._size = size

    def repeated(self, reply_to: str, request_id: str) -> bool:
        key = (reply_to, request_id)
        if key in self._ids:
            return True
        self._ids[key] = None
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return False


async def serve_commands(
    transport: Transport, topics: Topics, topic_filter: str, handler: Handler, *, responder: str | None = None
) -> None:
    """Answer commands on ``topic_filter`` until cancelled, as node ``responder`` (None: as the
    coordinator): replies go to ``reply/node/<responder>`` or
    ``reply/<requester>/coordinator/<id>``, the only reply topics the broker lets it write.
    Each request is handled in a task of its own (at most MAX_CONCURRENT_COMMANDS at once), so
    a slow one (a pre-flight, a submit waiting for it) does not hold up a quick ``status``."""
    limiter = _reply_limiter()
    drops = DropLog()
    seen = _Seen()
    slots = asyncio.Semaphore(MAX_CONCURRENT_COMMANDS)
    running: set[asyncio.Task[None]] = set()

    async def answer(address: _ReplyAddress, reply: CommandReply) -> None:
        try:
            await transport.publish(topics.reply(address.reply_to, address.request_id, responder), reply, qos=1)
        except DeepEdgeError as exc:
            log.warning("command.reply_failed", request_id=address.request_id, error=str(exc))

    async def handle(verb: str, req: CommandRequest) -> None:
        try:
            await answer(_ReplyAddress(req.request_id, req.reply_to), await _call(handler, verb, req))
        finally:
            slots.release()

    try:
        async with await transport.subscribe(topic_filter, qos=1, include_refused=True) as sub:
            async for item in sub:
                match item:
                    case Received(retain=True, raw_topic=topic):  # a command is never retained:
                        drops.drop(topic, "a retained command: not run (it would run again at every start)", topic)
                    case Received(message=CommandRequest() as req) if seen.repeated(req.reply_to, req.request_id):
                        continue  # a duplicate (QoS 1 may deliver twice) or a replay: answered once
                    case Received(topic=parsed, message=CommandRequest() as req):
                        await slots.acquire()
                        task = asyncio.create_task(handle(parsed.verb or "", req), name=f"command:{parsed.verb}")
                        running.add(task)
                        task.add_done_callback(running.discard)
                    case Refused(payload=payload, error=error):
                        address = _reply_address(payload) if error.reason != SchemaErrorReason.TOO_LARGE else None
                        if address is None or not limiter.allow(address.reply_to, time.monotonic()):
                            continue  # the refusal itself is in the drop log
                        code: ErrorCode = (
                            "unknown_verb" if error.reason == SchemaErrorReason.BAD_TOPIC else "bad_request"
                        )
                        await answer(address, error_reply(address.request_id, code, str(error)))
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def _call(handler: Handler, verb: str, req: CommandRequest) -> CommandReply:
    try:
        return await handler(verb, req)
    except CommandFailed as exc:
        return error_reply(req.request_id, exc.code, exc.message)
    except Exception as exc:
        log.exception("command.handler_failed", verb=verb, request_id=req.request_id)
        return error_reply(req.request_id, "internal", f"{type(exc).__name__}: {exc}")
