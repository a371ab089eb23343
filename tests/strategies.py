"""Hypothesis strategies for every wire message, derived from the structs' own type info
(msgspec.inspect), constraints included, so a new field is covered without touching tests."""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from deepedge.broker_schemas import (
    MESSAGE_TYPES,
    CommandReply,
    CommandRequest,
    Event,
    Heartbeat,
    LatencyReport,
    Message,
    NodeBirth,
    NodeDeath,
    Plan,
    Progress,
    Telemetry,
    Topics,
)

ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
ids = st.text(ID_ALPHABET, min_size=1, max_size=64)


def _for(t: mi.Type) -> st.SearchStrategy[Any]:
    match t:
        case mi.StrType(pattern=p) if p is not None:
            return ids
        case mi.StrType(max_length=m):
            return st.text(max_size=min(m or 40, 40))
        case mi.BoolType():
            return st.booleans()
        case mi.IntType(ge=ge, le=le, gt=gt):
            low = ge if ge is not None else (gt + 1 if gt is not None else -(2**40))
            return st.integers(low, le if le is not None else 2**40)
        case mi.FloatType(ge=ge, le=le, gt=gt):
            return st.floats(
                min_value=ge if ge is not None else gt,
                max_value=le,
                exclude_min=gt is not None and ge is None,
                allow_nan=False,
                allow_infinity=False,
                width=64,
            )
        case mi.NoneType():
            return st.none()
        case mi.UnionType(types=ts):
            return st.one_of([_for(x) for x in ts])
        case mi.LiteralType(values=vs):
            return st.sampled_from(vs)
        case mi.EnumType(cls=enum):
            return st.sampled_from(list(enum))
        case mi.VarTupleType(item_type=it, max_length=m) | mi.ListType(item_type=it, max_length=m):
            return st.lists(_for(it), max_size=min(4, m if m is not None else 4)).map(tuple)
        case mi.DictType(key_type=kt, value_type=vt):
            return st.dictionaries(_for(kt), _for(vt), max_size=3)
        case mi.AnyType():
            return st.dictionaries(st.text(max_size=8), st.integers(-(2**53), 2**53) | st.text(max_size=8), max_size=3)
        case mi.StructType(cls=cls, fields=fields):
            kwargs = {f.encode_name: _for(f.type) for f in fields if f.name != "v"}
            return st.fixed_dictionaries(kwargs).map(lambda kw: _consistent(cls(**kw)))
    raise NotImplementedError(f"no strategy for {t!r}")


def _consistent(msg: Any) -> Any:
    """An event speaks for a source its topic can name (see topic_for)."""
    if isinstance(msg, Event):
        return msgspec.structs.replace(msg, source="coordinator")
    return msg


def message_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    return _for(mi.type_info(cls))


messages: st.SearchStrategy[Any] = st.one_of([message_strategy(c) for c in MESSAGE_TYPES])


def topic_for(topics: Topics, msg: Message, node: str = "n1") -> str:
    """A topic that may carry ``msg`` (its ids agree with the payload)."""
    match msg:
        case NodeBirth(node=n) | NodeDeath(node=n):
            return topics.node_status(n)
        case Telemetry(node=n):
            return topics.node_telemetry(n)
        case LatencyReport(node=n):
            return topics.node_latency(n)
        case Heartbeat(node=n):
            return topics.node_heartbeat(n)
        case Plan(job=j):
            return topics.job_plan(j)
        case Progress(job=j):
            return topics.job_progress(j)
        case CommandRequest():
            return topics.node_command(node, "status")
        case CommandReply(request_id=r):
            return topics.reply("cli-1", r)
        case Event():
            return topics.events()
        case _:
            return topics.coordinator_status()


def sample(cls: type[msgspec.Struct], rng: Any) -> Any:
    """A deterministic valid instance of ``cls`` drawn with ``rng`` (a random.Random)."""

    def build(t: mi.Type) -> Any:
        match t:
            case mi.StrType(pattern=p) if p is not None:
                return "".join(rng.choice(ID_ALPHABET) for _ in range(rng.randint(1, 12)))
            case mi.StrType():
                return rng.choice(["", "jetson-orin", "xavier nx", "µs"])
            case mi.BoolType():
                return rng.random() < 0.5
            case mi.IntType(ge=ge, le=le, gt=gt):
                low = ge if ge is not None else (gt + 1 if gt is not None else -100)
                return rng.randint(low, le if le is not None else low + 10_000)
            case mi.FloatType(ge=ge, le=le, gt=gt):
                low = ge if ge is not None else (gt if gt is not None else -100.0)
                return (
                    low
                    + rng.random() * ((le if le is not None else low + 1000.0) - low)
                    + (1e-3 if gt is not None else 0)
                )
            case mi.NoneType():
                return None
            case mi.UnionType(types=ts):
                return build(rng.choice(ts))
            case mi.LiteralType(values=vs):
                return rng.choice(vs)
            case mi.EnumType(cls=enum):
                return rng.choice(list(enum))
            case mi.VarTupleType(item_type=it, max_length=m) | mi.ListType(item_type=it, max_length=m):
                return tuple(build(it) for _ in range(rng.randint(0, min(3, m if m is not None else 3))))
            case mi.DictType(key_type=kt, value_type=vt):
                return {build(kt): build(vt) for _ in range(rng.randint(0, 3))}
            case mi.AnyType():
                return {"x": rng.randint(0, 9), "y": "z"}
            case mi.StructType(cls=c, fields=fields):
                return _consistent(c(**{f.encode_name: build(f.type) for f in fields if f.name != "v"}))
        raise NotImplementedError(f"no sample for {t!r}")

    return build(mi.type_info(cls))
