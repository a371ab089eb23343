"""What a telemetry collector is, and the draft they fill together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from deepedge.broker_schemas import GpuStats, Telemetry

__all__ = ["Collector", "CollectorUnavailable", "TelemetryDraft"]


class CollectorUnavailable(Exception):
    """Raised by a collector's constructor when its source is not on this board."""


@dataclass
class TelemetryDraft:
    cpu_percent: float = 0.0
    cpu_per_core: tuple[float, ...] = ()
    load_avg: tuple[float, ...] = ()
    mem_total_bytes: int = 0
    mem_used_bytes: int = 0
    mem_percent: float = 0.0
    swap_percent: float = 0.0
    net_rx_bps: float = 0.0
    net_tx_bps: float = 0.0
    disk_read_bps: float = 0.0
    disk_write_bps: float = 0.0
    temperatures_c: dict[str, float] = field(default_factory=dict)
    gpus: list[GpuStats] = field(default_factory=list)

    def emulate_memory(self, total_bytes: int) -> None:
        """An emulated board with ``total_bytes`` of memory, as loaded as this machine is."""
        if total_bytes > 0:
            fraction = self.mem_used_bytes / self.mem_total_bytes if self.mem_total_bytes else 0.0
            self.mem_total_bytes, self.mem_used_bytes = total_bytes, int(fraction * total_bytes)

    def freeze(self, node: str, ts: float) -> Telemetry:
        return Telemetry(
            node=node,
            ts=ts,
            cpu_percent=clamp(self.cpu_percent),
            cpu_per_core=tuple(clamp(c) for c in self.cpu_per_core),
            load_avg=self.load_avg,
            mem_total_bytes=self.mem_total_bytes,
            mem_used_bytes=self.mem_used_bytes,
            mem_percent=clamp(self.mem_percent),
            swap_percent=clamp(self.swap_percent),
            net_rx_bps=max(0.0, self.net_rx_bps),
            net_tx_bps=max(0.0, self.net_tx_bps),
            disk_read_bps=max(0.0, self.disk_read_bps),
            disk_write_bps=max(0.0, self.disk_write_bps),
            temperatures_c=dict(list(self.temperatures_c.items())[:64]),
            gpus=tuple(self.gpus[:16]),
        )


def clamp(v: float) -> float:
    """Percentages in [0, 100]: sensors overshoot by rounding."""
    return min(100.0, max(0.0, v))


class Collector(Protocol):
    name: str

    def collect(self, draft: TelemetryDraft, now: float) -> None:
        """Fill in what this collector knows. Must not block for long; may raise OSError."""

    def close(self) -> None: ...
