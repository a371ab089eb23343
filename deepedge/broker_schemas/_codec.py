"""One codec: MessagePack on the wire, JSON accepted for commands typed by hand.

``decode(topic, payload)`` parses the topic, checks the size, decodes with the one decoder built
for that topic's kind, checks the schema version and that the payload speaks for the ids in its
topic. Every refusal is a :class:`SchemaError`; nothing else escapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from deepedge.broker_schemas._errors import SchemaError, SchemaErrorReason
from deepedge.broker_schemas._messages import (
    SUPPORTED_VERSIONS,
    Cleared,
    CommandReply,
    CommandRequest,
    CoordinatorStatus,
    Event,
    Heartbeat,
    LatencyReport,
    Message,
    NodeBirth,
    NodeDeath,
    Plan,
    Progress,
    Telemetry,
)
from deepedge.broker_schemas._topics import ParsedTopic, TopicKind, parse_topic

__all__ = ["MAX_PAYLOAD_BYTES", "Decoded", "decode", "decode_payload", "encode", "encode_json", "to_builtins"]

MAX_PAYLOAD_BYTES = 64 * 1024

# What each topic kind may carry.
_EXPECTED: dict[TopicKind, Any] = {
    TopicKind.NODE_STATUS: NodeBirth | NodeDeath,
    TopicKind.NODE_TELEMETRY: Telemetry,
    TopicKind.NODE_LATENCY: LatencyReport,
    TopicKind.NODE_HEARTBEAT: Heartbeat,
    TopicKind.COORDINATOR_STATUS: CoordinatorStatus,
    TopicKind.JOB_PLAN: Plan,
    TopicKind.JOB_PROGRESS: Progress,
    TopicKind.NODE_COMMAND: CommandRequest,
    TopicKind.COORDINATOR_COMMAND: CommandRequest,
    TopicKind.REPLY: CommandReply,
    TopicKind.EVENTS: Event,
}
# Built once, reused for every message.
_MSGPACK: dict[TopicKind, msgspec.msgpack.Decoder[Any]] = {
    kind: msgspec.msgpack.Decoder(typ) for kind, typ in _EXPECTED.items()
}
_JSON_COMMAND = msgspec.json.Decoder(CommandRequest)
_RETAINED_KINDS = frozenset(
    {TopicKind.NODE_STATUS, TopicKind.COORDINATOR_STATUS, TopicKind.JOB_PLAN, TopicKind.JOB_PROGRESS}
)
_COMMAND_KINDS = frozenset({TopicKind.NODE_COMMAND, TopicKind.COORDINATOR_COMMAND})


class _VersionPeek(msgspec.Struct):
    v: int = 1


_PEEK_MSGPACK = msgspec.msgpack.Decoder(_VersionPeek)
_PEEK_JSON = msgspec.json.Decoder(_VersionPeek)
_ENCODER = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class Decoded:
    topic: ParsedTopic
    message: Message | Cleared


def encode(message: Message) -> bytes:
    """MessagePack bytes of ``message``; refuses to produce a payload over the size limit."""
    try:
        data = _ENCODER.encode(message)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. an int beyond 64 bits in a free-form result
        raise SchemaError(SchemaErrorReason.WRONG_TYPE, f"{type(message).__name__}: {exc}") from None
    if len(data) > MAX_PAYLOAD_BYTES:
        raise SchemaError(
            SchemaErrorReason.TOO_LARGE,
            f"{type(message).__name__} encodes to {len(data)} bytes, over {MAX_PAYLOAD_BYTES}",
        )
    return data


def encode_json(message: Message) -> bytes:
    """JSON of a message (for ``--json`` output and commands typed by hand)."""
    return msgspec.json.encode(message)


def to_builtins(message: Message) -> Any:
    """The message as plain dicts/lists, for display."""
    return msgspec.to_builtins(message)


def _looks_like_json(payload: bytes) -> bool:
    return payload.lstrip()[:1] == b"{"


def _version_of(payload: bytes, as_json: bool) -> int | None:
    try:
        peek = (_PEEK_JSON if as_json else _PEEK_MSGPACK).decode(payload)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return None
    return peek.v


def decode_payload(parsed: ParsedTopic, payload: bytes, topic: str | None = None) -> Message | Cleared:
    """Decode ``payload`` as the message ``parsed`` carries; raise SchemaError otherwise."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError(SchemaErrorReason.TOO_LARGE, f"{len(payload)} bytes, over {MAX_PAYLOAD_BYTES}", topic)
    if not payload:
        if parsed.kind in _RETAINED_KINDS:
            return Cleared()
        raise SchemaError(SchemaErrorReason.MALFORMED, "empty payload", topic)
    as_json = parsed.kind in _COMMAND_KINDS and _looks_like_json(payload)
    decoder: Any = _JSON_COMMAND if as_json else _MSGPACK[parsed.kind]
    try:
        message: Message = decoder.decode(payload)
    except msgspec.ValidationError as exc:
        version = _version_of(payload, as_json)
        if version is not None and version not in SUPPORTED_VERSIONS:
            raise SchemaError(SchemaErrorReason.UNKNOWN_VERSION, f"schema v{version}", topic) from None
        raise SchemaError(SchemaErrorReason.WRONG_TYPE, str(exc), topic) from None
    except (msgspec.DecodeError, ValueError, RecursionError, OverflowError) as exc:
        raise SchemaError(SchemaErrorReason.MALFORMED, str(exc) or type(exc).__name__, topic) from None
    if message.v not in SUPPORTED_VERSIONS:
        raise SchemaError(SchemaErrorReason.UNKNOWN_VERSION, f"schema v{message.v}", topic)
    _check_ids(parsed, message, topic)
    return message


def decode(topic: str, payload: bytes) -> Decoded:
    """Parse ``topic`` and decode ``payload`` for it. Raises only SchemaError."""
    parsed = parse_topic(topic)
    return Decoded(parsed, decode_payload(parsed, payload, topic))


def _check_ids(parsed: ParsedTopic, message: Message, topic: str | None) -> None:
    claimed: tuple[str, str | None, str | None] | None = None
    if isinstance(message, Event):  # an event speaks for the source its topic names
        source = "coordinator" if parsed.from_coordinator else f"node/{parsed.node}"
        if message.source != source or (parsed.node is not None and message.node not in (None, parsed.node)):
            raise SchemaError(
                SchemaErrorReason.ID_MISMATCH,
                f"event from {message.source!r} about node {message.node!r} on the topic of {source!r}",
                topic,
            )
        return
    match message:
        case NodeBirth(node=n) | NodeDeath(node=n) | Telemetry(node=n) | LatencyReport(node=n) | Heartbeat(node=n):
            claimed = ("node", parsed.node, n)
        case Plan(job=j) | Progress(job=j):
            claimed = ("job", parsed.job, j)
        case CommandReply(request_id=r) if parsed.request_id is not None:  # a node's reply topic has none
            claimed = ("request id", parsed.request_id, r)
        case _:
            return
    what, in_topic, in_payload = claimed
    if in_topic != in_payload:
        raise SchemaError(
            SchemaErrorReason.ID_MISMATCH, f"{what} {in_payload!r} in payload, {in_topic!r} in topic", topic
        )
