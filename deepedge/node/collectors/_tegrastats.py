"""Jetson boards: parse ``tegrastats`` lines (Nano, TX2, Xavier, Orin; JetPack 4 to 6).

tegrastats prints one line per interval, e.g. (AGX Orin)::

    RAM 4722/30536MB (lfb 6270x4MB) SWAP 0/15268MB (cached 0MB) CPU [2%@729,0%@729,off] ...
    GR3D_FREQ 0%@[0,0] ... CPU@44.968C GPU@-256C tj@45.125C VDD_GPU_SOC 2803mW/2803mW ...

Older boards print rails without units (``POM_5V_GPU 0/0``, milliwatts) and ``GR3D_FREQ 0%@921``.
A temperature of -256 C means the sensor is off and is left out.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field

from deepedge.broker_schemas import GpuStats
from deepedge.node.collectors._base import CollectorUnavailable, TelemetryDraft

__all__ = ["TegraSample", "TegrastatsCollector", "parse_tegrastats"]

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
_MB = 1024 * 1024


@dataclass
class TegraSample:
    ram_used_bytes: int | None = None
    ram_total_bytes: int | None = None
    swap_used_bytes: int | None = None
    swap_total_bytes: int | None = None
    cpu_per_core: list[float] = field(default_factory=list)  # offline cores are left out
    gpu_util_percent: float | None = None
    temperatures_c: dict[str, float] = field(default_factory=dict)
    rails_mw: dict[str, int] = field(default_factory=dict)  # instantaneous power per rail

    @property
    def gpu_power_w(self) -> float | None:
        gpu = [mw for name, mw in self.rails_mw.items() if "GPU" in name]
        return max(gpu) / 1000.0 if gpu else None

    @property
    def gpu_temp_c(self) -> float | None:
        for name, t in self.temperatures_c.items():
            if name.lower() == "gpu":
                return t
        return None


def parse_tegrastats(line: str) -> TegraSample:
    """Parse one tegrastats line; fields it does not find stay None/empty."""
    s = TegraSample()
    if m := _RAM.search(line):
        s.ram_used_bytes, s.ram_total_bytes = int(m.group(1)) * _MB, int(m.group(2)) * _MB
    if m := _SWAP.search(line):
        s.swap_used_bytes, s.swap_total_bytes = int(m.group(1)) * _MB, int(m.group(2)) * _MB
    if m := _CPU.search(line):
        for core in m.group(1).split(","):
            pct = core.strip().split("%")[0]
            if pct.isdigit():
                s.cpu_per_core.append(float(pct))
    if m := _GR3D.search(line):
        s.gpu_util_percent = float(m.group(1))
    for name, value in _TEMP.findall(line):
        t = float(value)
        if t > -200:  # -256 C: sensor off
            s.temperatures_c[name] = t
    for name, current, _avg in _RAIL.findall(line):
        if name not in ("RAM", "SWAP", "IRAM"):
            s.rails_mw[name] = int(current)
    return s


class TegrastatsCollector:
    """Runs ``tegrastats --interval MS`` and keeps its latest line."""

    name = "tegrastats"

    def __init__(self, interval_s: float = 1.0, executable: str | None = None) -> None:
        exe = executable or shutil.which("tegrastats") or shutil.which("tegrastats", path="/usr/bin:/usr/sbin")
        if exe is None:
            raise CollectorUnavailable("tegrastats not found (not a Jetson board)")
        try:
            self._proc = subprocess.Popen(
                [exe, "--interval", str(max(100, int(interval_s * 1000)))],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError as exc:
            raise CollectorUnavailable(f"tegrastats: {exc}") from None
        self._latest: TegraSample | None = None
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._latest = parse_tegrastats(line)

    def collect(self, draft: TelemetryDraft, now: float) -> None:
        s = self._latest
        if s is None:
            return
        draft.temperatures_c.update({f"tegra/{k}": v for k, v in s.temperatures_c.items()})
        draft.gpus.append(
            GpuStats(
                index=0,
                name="jetson-gpu",
                util_percent=s.gpu_util_percent,
                mem_used_bytes=s.ram_used_bytes,  # Jetson GPUs share the board's RAM
                mem_total_bytes=s.ram_total_bytes,
                power_w=s.gpu_power_w,
                temp_c=s.gpu_temp_c,
            )
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._proc.terminate()
            self._proc.wait(2)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
