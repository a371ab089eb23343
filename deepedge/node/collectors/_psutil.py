"""CPU, memory, swap, load, network and disk rates, temperatures: psutil, on every board."""

from __future__ import annotations

import os

import psutil

from deepedge.node.collectors._base import TelemetryDraft

__all__ = ["PsutilCollector"]


class PsutilCollector:
    name = "psutil"

    def __init__(self) -> None:
        psutil.cpu_percent(percpu=True)  # prime: the next call measures since now
        self._last: tuple[float, int, int, int, int] | None = None
        self._temps = hasattr(psutil, "sensors_temperatures")

    def collect(self, draft: TelemetryDraft, now: float) -> None:
        per_core = psutil.cpu_percent(percpu=True)
        draft.cpu_per_core = tuple(float(c) for c in per_core)
        draft.cpu_percent = sum(per_core) / len(per_core) if per_core else 0.0
        draft.load_avg = tuple(float(x) for x in os.getloadavg())
        vm = psutil.virtual_memory()
        draft.mem_total_bytes, draft.mem_used_bytes = int(vm.total), int(vm.total - vm.available)
        draft.mem_percent = float(vm.percent)
        draft.swap_percent = float(psutil.swap_memory().percent)
        net = psutil.net_io_counters()
        disk = psutil.disk_io_counters()
        counters = (
            now,
            int(net.bytes_recv) if net else 0,
            int(net.bytes_sent) if net else 0,
            int(disk.read_bytes) if disk else 0,
            int(disk.write_bytes) if disk else 0,
        )
        if self._last is not None and now > self._last[0]:
            dt = now - self._last[0]
            draft.net_rx_bps, draft.net_tx_bps, draft.disk_read_bps, draft.disk_write_bps = (
                max(0.0, (c - p) / dt) for c, p in zip(counters[1:], self._last[1:], strict=True)
            )
        self._last = counters
        if self._temps:
            for chip, entries in psutil.sensors_temperatures().items():
                for i, entry in enumerate(entries):
                    label = entry.label or (f"{chip}{i}" if len(entries) > 1 else chip)
                    draft.temperatures_c[f"{chip}/{label}"[:64]] = float(entry.current)

    def close(self) -> None:
        pass
