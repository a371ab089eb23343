"""What a telemetry collector is, and the draft they fill together."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import msgspec
import msgspec.inspect as mi

from deepedge.broker_schemas import Telemetry
from deepedge.devices import board_cpus

__all__ = ["Collector", "CollectorUnavailable", "TelemetryDraft"]


class CollectorUnavailable(Exception):
    """Raised by a collector's constructor when its source is not on this board."""


_INFO = {f.name: f for f in cast(mi.StructType, mi.type_info(Telemetry)).fields}
_FILLED = tuple(name for name in _INFO if name not in ("node", "ts", "v"))  # what collectors fill in


def _default(name: str) -> Any:
    f = _INFO[name]
    if f.default_factory is not msgspec.NODEFAULT:
        return f.default_factory()
    return list(f.default) if isinstance(f.default, tuple) else f.default


def _fit(value: Any, t: mi.Type) -> Any:
    """``value`` within the bounds the schema puts on it: numbers clamped (sensors overshoot
    by rounding; a rate computed over a counter reset is negative), NaN dropped to the bound,
    sequences and maps cut to their maximum length."""
    match t:
        case mi.FloatType(ge=ge, le=le) | mi.IntType(ge=ge, le=le) if isinstance(value, int | float):
            if value != value:  # NaN
                return ge if ge is not None else 0.0
            value = max(ge, value) if ge is not None else value
            return min(le, value) if le is not None else value
        case mi.UnionType(types=ts):
            inner = next((x for x in ts if not isinstance(x, mi.NoneType)), None)
            return value if value is None or inner is None else _fit(value, inner)
        case mi.VarTupleType(item_type=it, max_length=m) | mi.ListType(item_type=it, max_length=m):
            items = list(value)[: m if m is not None else None]
            return tuple(_fit(x, it) for x in items)
        case mi.DictType(value_type=vt, max_length=m):
            return {k: _fit(v, vt) for k, v in list(value.items())[: m if m is not None else None]}
    return value


class TelemetryDraft:
    """A ``Telemetry`` being filled in by the collectors. Its fields are exactly the wire
    message's (``Telemetry``, the one list: a new field is one edit there, and the collector
    that fills it); setting any other name is an error. ``freeze`` fits every value into the
    bounds the schema sets."""

    mem_total_bytes: int  # (those this class itself uses)
    mem_used_bytes: int
    cpu_per_core: tuple[float, ...]
    cpu_percent: float

    def __init__(self) -> None:
        for name in _FILLED:
            object.__setattr__(self, name, _default(name))

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _FILLED:
            raise AttributeError(f"telemetry has no field {name!r} (see deepedge.broker_schemas.Telemetry)")
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:  # only for names not set in __init__: none of Telemetry's
        raise AttributeError(f"telemetry has no field {name!r} (see deepedge.broker_schemas.Telemetry)")

    def emulate_memory(self, total_bytes: int) -> None:
        """An emulated board with ``total_bytes`` of memory, as loaded as this machine is."""
        if total_bytes > 0:
            fraction = self.mem_used_bytes / self.mem_total_bytes if self.mem_total_bytes else 0.0
            self.mem_total_bytes, self.mem_used_bytes = total_bytes, int(fraction * total_bytes)

    def emulate_cpus(self, cpus: Sequence[int]) -> None:
        """An emulated board made of this machine's CPUs ``cpus`` (``node.emulate_cpus``): the
        CPU figures over those only (empty: the whole machine, as collected)."""
        if not cpus or not self.cpu_per_core:
            return
        per_core = [self.cpu_per_core[c] for c in board_cpus(cpus, len(self.cpu_per_core))]
        self.cpu_per_core = tuple(per_core)
        self.cpu_percent = sum(per_core) / len(per_core)

    def freeze(self, node: str, ts: float) -> Telemetry:
        values = {name: _fit(getattr(self, name), _INFO[name].type) for name in _FILLED}
        return msgspec.convert({"node": node, "ts": ts, **values}, Telemetry)


class Collector(Protocol):
    name: str

    def collect(self, draft: TelemetryDraft, now: float) -> None:
        """Fill in what this collector knows. Must not block for long; may raise OSError."""

    def close(self) -> None: ...
