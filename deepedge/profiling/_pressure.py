"""CPU contention as the kernel shows it, machine-wide, over a window: the share of time some task
waited for a CPU (pressure stall information, ``/proc/pressure/cpu``, "some") and the mean number
of runnable tasks (``procs_running`` of ``/proc/stat``, sampled). Unlike the stressors' levels,
these do not name what runs, so a model fitted on them may carry to mixes it never saw (the
question ``deepedge bench interference`` asks of them). Either is 0 where the kernel does not
provide it (PSI needs Linux 4.20 with CONFIG_PSI; schedstats are not needed)."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pressure", "PressureSampler"]

PSI_CPU = Path("/proc/pressure/cpu")
PROC_STAT = Path("/proc/stat")
SAMPLE_S = 0.02  # procs_running is an instant: sampled every 20 ms


def _psi_some_us(path: Path = PSI_CPU) -> float | None:
    """The cumulative microseconds some task waited for a CPU, or None without PSI."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in path.read_text().splitlines():
            if line.startswith("some "):
                return float(dict(kv.split("=", 1) for kv in line.split()[1:])["total"])
    return None


def _procs_running(path: Path = PROC_STAT) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in path.read_text().splitlines():
            if line.startswith("procs_running "):
                return int(line.split()[1])
    return None


@dataclass(frozen=True)
class Pressure:
    psi: float = 0.0  # share of the window in which some runnable task waited for a CPU, 0..1
    runnable: float = 0.0  # mean runnable tasks, the sampler itself excluded


class PressureSampler:
    """``with PressureSampler() as s: ...`` then ``s.result``: the window's :class:`Pressure`."""

    def __init__(self, psi_path: Path = PSI_CPU, stat_path: Path = PROC_STAT) -> None:
        self._psi_path, self._stat_path = psi_path, stat_path
        self._stop = threading.Event()
        self._samples: list[int] = []
        self._thread = threading.Thread(target=self._loop, name="pressure-sampler", daemon=True)
        self.result = Pressure()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            n = _procs_running(self._stat_path)
            if n is not None:
                self._samples.append(max(0, n - 1))  # this thread was running when it read

    def __enter__(self) -> PressureSampler:
        self._t0, self._psi0 = time.monotonic(), _psi_some_us(self._psi_path)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(1.0)
        wall = max(1e-9, time.monotonic() - self._t0)
        psi1 = _psi_some_us(self._psi_path)
        psi = 0.0 if self._psi0 is None or psi1 is None else min(1.0, max(0.0, (psi1 - self._psi0) / 1e6 / wall))
        runnable = sum(self._samples) / len(self._samples) if self._samples else 0.0
        self.result = Pressure(round(psi, 4), round(runnable, 3))
