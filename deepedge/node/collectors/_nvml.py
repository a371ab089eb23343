"""NVIDIA GPUs through NVML (the nvidia-ml-py package provides ``pynvml``)."""

from __future__ import annotations

import contextlib
from typing import Any

from deepedge.broker_schemas import Accelerator, GpuStats
from deepedge.node.collectors._base import CollectorUnavailable, TelemetryDraft

__all__ = ["NvmlCollector"]


def _pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
        raise CollectorUnavailable(f"nvidia-ml-py is not installed: {exc}") from None
    return pynvml


class NvmlCollector:
    name = "nvml"

    def __init__(self) -> None:
        nv = _pynvml()
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise CollectorUnavailable(f"NVML: {exc}") from None
        self._nv = nv
        count = nv.nvmlDeviceGetCount()
        if count == 0:
            nv.nvmlShutdown()
            raise CollectorUnavailable("NVML: no NVIDIA GPU")
        self._handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._names = [str(nv.nvmlDeviceGetName(h)) for h in self._handles]

    def accelerators(self) -> list[Accelerator]:
        out = []
        for i, h in enumerate(self._handles):
            mem = self._nv.nvmlDeviceGetMemoryInfo(h)
            out.append(Accelerator(kind="cuda", index=i, name=self._names[i][:256], memory_bytes=int(mem.total)))
        return out

    def _read(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nv.NVMLError:  # not supported on this GPU (e.g. power on some boards)
            return None

    def collect(self, draft: TelemetryDraft, now: float) -> None:
        nv = self._nv
        for i, h in enumerate(self._handles):
            util = self._read(nv.nvmlDeviceGetUtilizationRates, h)
            mem = self._read(nv.nvmlDeviceGetMemoryInfo, h)
            power_mw = self._read(nv.nvmlDeviceGetPowerUsage, h)
            temp = self._read(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
            draft.gpus.append(
                GpuStats(
                    index=i,
                    name=self._names[i][:256],
                    util_percent=float(util.gpu) if util is not None else None,
                    mem_used_bytes=int(mem.used) if mem is not None else None,
                    mem_total_bytes=int(mem.total) if mem is not None else None,
                    power_w=power_mw / 1000.0 if power_mw is not None else None,
                    temp_c=float(temp) if temp is not None else None,
                )
            )

    def close(self) -> None:
        with contextlib.suppress(self._nv.NVMLError):
            self._nv.nvmlShutdown()
