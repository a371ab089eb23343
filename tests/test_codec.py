"""The codec: every message round-trips; everything else is one typed error."""

from __future__ import annotations

import contextlib
import random

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepedge.broker_schemas import (
    MAX_PAYLOAD_BYTES,
    MESSAGE_TYPES,
    Cleared,
    CommandReply,
    CommandRequest,
    Event,
    NodeBirth,
    NodeDeath,
    SchemaError,
    SchemaErrorReason,
    Telemetry,
    TopicKind,
    Topics,
    decode,
    encode,
    encode_json,
)
from tests.strategies import message_strategy, messages, sample, topic_for

T = Topics("lab")


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_type_round_trips(cls: type, data: st.DataObject) -> None:
    msg = data.draw(message_strategy(cls))
    try:
        payload = encode(msg)
    except SchemaError as exc:  # a drawn message may be too big; that is the only refusal
        assert exc.reason is SchemaErrorReason.TOO_LARGE
        return
    decoded = decode(topic_for(T, msg), payload)
    assert decoded.message == msg
    assert type(decoded.message) is cls


@settings(max_examples=200)
@given(msg=messages)
def test_messages_are_frozen(msg: msgspec.Struct) -> None:
    with pytest.raises(AttributeError):
        msg.v = 2  # type: ignore[misc]


def test_command_typed_by_hand_as_json_decodes_to_the_same_type() -> None:
    req = CommandRequest(request_id="r1", reply_to="cli", args={"deadline_ms": 40.0, "app": "det"})
    topic = T.node_command("n1", "set-deadline")
    assert decode(topic, encode_json(req)).message == req
    assert decode(topic, b'  {"kind":"command","request_id":"r1","reply_to":"cli"}').message == CommandRequest(
        request_id="r1", reply_to="cli"
    )


def test_json_is_only_for_commands() -> None:
    birth = NodeBirth(node="n1", session="s", ts=1.0)
    with pytest.raises(SchemaError) as err:
        decode(T.node_status("n1"), encode_json(birth))
    assert err.value.reason in (SchemaErrorReason.MALFORMED, SchemaErrorReason.WRONG_TYPE)


def test_oversized_payload_refused_before_decoding() -> None:
    with pytest.raises(SchemaError) as err:
        decode(T.node_telemetry("n1"), b"\x80" * (MAX_PAYLOAD_BYTES + 1))
    assert err.value.reason is SchemaErrorReason.TOO_LARGE


def test_encode_refuses_oversized_message() -> None:
    big = Event(ts=1.0, source="x", event="e", fields={f"k{i}": "x" * 200 for i in range(400)})
    with pytest.raises(SchemaError) as err:
        encode(big)
    assert err.value.reason is SchemaErrorReason.TOO_LARGE


def test_encode_refuses_values_msgpack_cannot_carry() -> None:
    event = Event(ts=1.0, source="x", event="e", fields={"n": object()})  # type: ignore[dict-item]
    with pytest.raises(SchemaError) as err:
        encode(event)
    assert err.value.reason is SchemaErrorReason.WRONG_TYPE


DEEP: list[object] = [1]
for _ in range(16):
    DEEP = [DEEP]


@pytest.mark.parametrize(
    "result",
    [{"ok": float("nan")}, {"x": [float("inf")]}, {"reason": 2**64 - 1}, {"n": -(2**53) - 1}, {"deep": DEEP}],
)
def test_a_replys_free_form_result_is_bounded_like_every_typed_field(result: dict[str, object]) -> None:
    """(attacker review, 2026-12-06) A node's reply carrying NaN, inf or 2**64 - 1 in its
    free-form result decoded, and the coordinator's pre-flight took an ``ok`` of NaN for true.
    Now it is refused on decode, and a reply with such a value cannot be built."""
    payload = msgspec.msgpack.encode({"kind": "reply", "request_id": "r", "ok": True, "result": result})
    with pytest.raises(SchemaError) as err:
        decode(T.reply("cli-1", "r"), payload)
    assert err.value.reason is SchemaErrorReason.WRONG_TYPE
    with pytest.raises(ValueError):
        CommandReply(request_id="r", ok=True, result=result)
    fine = CommandReply(request_id="r", ok=True, result={"ok": True, "x": [1.5, -(2**53), None, {"s": "t"}]})
    assert decode(T.reply("cli-1", "r"), encode(fine)).message == fine


def test_unknown_version_refused() -> None:
    birth = msgspec.to_builtins(NodeBirth(node="n1", session="s", ts=1.0))
    for v, extra in ((2, {}), (99, {"cpu_cores": "many"})):  # also when its fields no longer fit
        payload = msgspec.msgpack.encode({**birth, "v": v, **extra})
        with pytest.raises(SchemaError) as err:
            decode(T.node_status("n1"), payload)
        assert err.value.reason is SchemaErrorReason.UNKNOWN_VERSION


def test_wrong_type_refused() -> None:
    tele = Telemetry(node="n1", ts=1.0)
    with pytest.raises(SchemaError) as err:  # a telemetry on a status topic
        decode(T.node_status("n1"), encode(tele))
    assert err.value.reason is SchemaErrorReason.WRONG_TYPE
    bad = {**msgspec.to_builtins(tele), "cpu_percent": "high"}
    with pytest.raises(SchemaError) as err:
        decode(T.node_telemetry("n1"), msgspec.msgpack.encode(bad))
    assert err.value.reason is SchemaErrorReason.WRONG_TYPE
    assert "cpu_percent" in err.value.detail


def test_out_of_range_values_refused() -> None:
    bad = {**msgspec.to_builtins(Telemetry(node="n1", ts=1.0)), "cpu_percent": 250.0}
    with pytest.raises(SchemaError) as err:
        decode(T.node_telemetry("n1"), msgspec.msgpack.encode(bad))
    assert err.value.reason is SchemaErrorReason.WRONG_TYPE


def test_payload_speaking_for_another_node_is_refused() -> None:
    with pytest.raises(SchemaError) as err:
        decode(T.node_status("n2"), encode(NodeDeath(node="n1", session="s")))
    assert err.value.reason is SchemaErrorReason.ID_MISMATCH


def test_empty_payload_clears_retained_topics_only() -> None:
    assert isinstance(decode(T.node_status("n1"), b"").message, Cleared)
    assert isinstance(decode(T.job_plan("j1"), b"").message, Cleared)
    with pytest.raises(SchemaError) as err:
        decode(T.node_telemetry("n1"), b"")
    assert err.value.reason is SchemaErrorReason.MALFORMED


def test_new_fields_from_newer_builds_are_ignored() -> None:
    payload = msgspec.msgpack.encode({**msgspec.to_builtins(Telemetry(node="n1", ts=1.0)), "npu_percent": 3.0})
    assert decode(T.node_telemetry("n1"), payload).message == Telemetry(node="n1", ts=1.0)


@settings(max_examples=2000, deadline=None)
@given(payload=st.binary(max_size=512), kind=st.sampled_from(list(TopicKind)))
def test_random_bytes_give_only_the_typed_error(payload: bytes, kind: TopicKind) -> None:
    topic = _topic_of_kind(kind)
    with contextlib.suppress(SchemaError):
        decode(topic, payload)


@settings(max_examples=300, deadline=None)
@given(
    value=st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=8)
        | st.binary(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
        max_leaves=20,
    ),
    kind=st.sampled_from(list(TopicKind)),
)
def test_random_msgpack_structures_give_only_the_typed_error(value: object, kind: TopicKind) -> None:
    with contextlib.suppress(SchemaError):
        decode(_topic_of_kind(kind), msgspec.msgpack.encode(value))


def _topic_of_kind(kind: TopicKind) -> str:
    return {
        TopicKind.NODE_STATUS: T.node_status("n1"),
        TopicKind.NODE_TELEMETRY: T.node_telemetry("n1"),
        TopicKind.NODE_LATENCY: T.node_latency("n1"),
        TopicKind.NODE_HEARTBEAT: T.node_heartbeat("n1"),
        TopicKind.COORDINATOR_STATUS: T.coordinator_status(),
        TopicKind.JOB_PLAN: T.job_plan("j1"),
        TopicKind.JOB_PROGRESS: T.job_progress("j1"),
        TopicKind.NODE_COMMAND: T.node_command("n1", "status"),
        TopicKind.COORDINATOR_COMMAND: T.coordinator_command("submit"),
        TopicKind.REPLY: T.reply("cli", "r1"),
        TopicKind.EVENTS: T.events(),
    }[kind]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1) if buf else 0
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # truncate
            del buf[pos:]
        elif op == 2:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:  # overwrite with a msgpack type marker
            buf[rng.randrange(len(buf))] = rng.choice(
                [0xC0, 0xC1, 0xC2, 0xCA, 0xCB, 0xD9, 0xDC, 0xDE, 0xDF, 0xC4, 0x7B]
            )
        elif op == 4:  # duplicate a slice
            j = rng.randrange(pos, len(buf) + 1)
            buf[pos:pos] = buf[pos:j]
        else:  # huge length prefix
            buf[pos:pos] = b"\xdd\xff\xff\xff\xff"
    return bytes(buf)


def test_ten_thousand_mutated_payloads_give_only_the_typed_error() -> None:
    rng = random.Random(20261123)
    seeds = []
    for cls in MESSAGE_TYPES:
        for _ in range(5):
            msg = sample(cls, rng)
            seeds.append((topic_for(T, msg), encode(msg)))
    seeds.append((T.node_command("n1", "status"), encode_json(CommandRequest(request_id="r", reply_to="c"))))
    refused = accepted = 0
    for _ in range(10_000):
        topic, payload = rng.choice(seeds)
        if rng.random() < 0.05:  # also point the payload at another topic kind
            topic = _topic_of_kind(rng.choice(list(TopicKind)))
        try:
            decode(topic, _mutate(rng, payload))
            accepted += 1
        except SchemaError:
            refused += 1
    assert refused + accepted == 10_000
    assert refused > 5_000  # mutations do break most payloads: the test really exercises refusal
