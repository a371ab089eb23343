"""Controlled stressors (FECBench's resource stressors) with stress-ng: CPU, last-level cache,
memory bandwidth and disk I/O, each at a level in [0, 1], and a check from the processes' CPU
time and the machine's counters that each reached the level it was asked for.

- ``cpu``: ``stress-ng --cpu W --cpu-load L``: stress-ng holds the load itself;
- ``cache``: ``stress-ng --cache W`` (thrashes the shared cache), ``mem``: ``stress-ng --stream
  W`` (STREAM copy/scale/add/triad: memory bandwidth), ``io``: ``stress-ng --hdd W`` (writes and
  reads a file under ``workdir``): these run at full strength, so their level is a duty cycle
  that this module holds by stopping and continuing their process group (SIGSTOP / SIGCONT,
  100 ms period);
- ``gpu``: matrix multiplications on the board's training GPU
  (:class:`~deepedge.profiling._gpu_stressor.GpuStressor`: a process of its own, torch never
  loads in the daemon, kept across runs when the caller keeps it), which holds its duty cycle
  itself and says what its kernels achieved; only where the board trains on CUDA. Built, not
  measured on a GPU yet (docs/planner.md).

Standard library and psutil only: the node daemon runs them (it never imports scikit-learn)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from deepedge.profiling._gpu_stressor import GPU_MODULE, GpuStressor, GpuStressorError

__all__ = ["GPU_MODULE", "STRESS_NG", "StressorError", "Stressors", "stressor_argv"]

STRESS_NG = "stress-ng"
PERIOD_S = 0.1  # duty-cycle period of the throttled stressors


class StressorError(Exception):
    pass


def stressor_argv(kind: str, level: float, workers: int, workdir: Path, timeout_s: float = 120.0) -> list[str]:
    """stress-ng's command line; it stops by itself after ``timeout_s`` whatever happens to us.
    (The GPU stressor is a :class:`GpuStressor`.)"""
    exe = shutil.which(STRESS_NG)
    if exe is None:
        raise StressorError("stress-ng is not installed (apt-get install stress-ng)")
    base = [exe, "--quiet", "--timeout", str(max(1, round(timeout_s)))]
    match kind:
        case "cpu":
            return [
                *base,
                "--cpu",
                str(workers),
                "--cpu-load",
                str(max(1, round(level * 100))),
                "--cpu-method",
                "int64",
            ]
        case "cache":
            return [*base, "--cache", str(workers)]
        case "mem":
            return [*base, "--stream", str(workers)]
        case "io":
            return [*base, "--hdd", str(workers), "--hdd-bytes", "32M", "--temp-path", str(workdir)]
    raise StressorError(f"unknown stress-ng stressor {kind!r} (cpu, cache, mem, io)")


@dataclass
class _Stressor:
    kind: str
    level: float
    proc: subprocess.Popen[bytes]
    throttled: bool
    cpu0: float = 0.0
    running_s: float = 0.0  # time the throttle let it run

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total


@dataclass
class Stressors:
    """Start stressors at levels, hold their duty cycles, measure what they achieved, stop them.

    ``with Stressors(levels, workdir) as s: ...; achieved = s.achieved()``"""

    levels: dict[str, float]
    workdir: Path
    workers: int = 1
    nice: int = 0
    timeout_s: float = 120.0  # stress-ng ends by itself then, even if this process is killed
    device: str = "cuda"  # the GPU stressor's device: the board's training device
    # a GPU stressor kept across runs (set to 0 at stop, not closed); None: one of its own, closed at stop
    gpu: GpuStressor | None = None
    _gpu: GpuStressor | None = None  # the one this run uses
    _gpu0: float = 0.0  # its kernel seconds at the mark
    _running: list[_Stressor] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0
    _io0: tuple[int, int] = (0, 0)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # the GPU stressor first: stress-ng's own timeout runs from its start, and the GPU
        # stressor may take a while (torch imported, CUDA initialised) before it is ready
        gpu_level = min(1.0, self.levels.get("gpu", 0.0))
        if gpu_level > 0:
            self._gpu = self.gpu or GpuStressor(self.workdir / "gpu", self.device, self.nice)
            try:
                self._gpu.set_level(gpu_level)
            except GpuStressorError as exc:
                raise StressorError(str(exc)) from None
        for kind, level in self.levels.items():
            if level <= 0 or kind == "gpu":
                continue
            argv = stressor_argv(kind, min(1.0, level), self.workers, self.workdir, self.timeout_s)
            nice = self.nice

            def setup(nice: int = nice) -> None:
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, 0, nice)

            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped, continued, killed as one
                preexec_fn=setup,
            )
            self._running.append(_Stressor(kind, min(1.0, level), proc, throttled=kind != "cpu" and level < 1.0))
        time.sleep(0.2)  # stress-ng forks its workers
        for s in self._running:
            if s.proc.poll() is not None:
                self.stop()
                raise StressorError(f"stress-ng ({s.kind}) exited {s.proc.returncode} at start")
        if self._gpu is not None and not self._gpu.alive:
            self.stop()
            raise StressorError("the gpu stressor exited at start")
        self.mark()
        if any(s.throttled for s in self._running):
            self._thread = threading.Thread(target=self._throttle, name="stressor-throttle", daemon=True)
            self._thread.start()

    def mark(self) -> None:
        """Start measuring what the stressors achieve from now on."""
        self._t0 = time.monotonic()
        for s in self._running:
            s.cpu0 = s.cpu_s()
            s.running_s = 0.0

        io = psutil.disk_io_counters()
        self._io0 = (io.read_bytes, io.write_bytes) if io else (0, 0)
        if self._gpu is not None:
            self._gpu0 = self._gpu.busy()

    def _signal(self, s: _Stressor, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(s.proc.pid, sig)

    def _throttle(self) -> None:
        throttled = [s for s in self._running if s.throttled]
        while not self._stop.is_set():
            start = time.monotonic()
            for s in throttled:
                self._signal(s, signal.SIGCONT)
            for s in sorted(throttled, key=lambda s: s.level):
                wait = start + s.level * PERIOD_S - time.monotonic()
                if wait > 0:
                    self._stop.wait(wait)
                self._signal(s, signal.SIGSTOP)
                s.running_s += time.monotonic() - start
            rest = start + PERIOD_S - time.monotonic()
            if rest > 0:
                self._stop.wait(rest)
        for s in throttled:
            self._signal(s, signal.SIGCONT)

    def achieved(self) -> tuple[dict[str, float], float, list[str]]:
        """Since the last ``mark``: each stressor's achieved level (CPU stressors: CPU time per
        worker per second; I/O: the fraction of time it was let run, while the machine's disk
        counters moved), the machine's disk bytes/s, and a note for each stressor that reached
        less than half its level."""
        wall = max(1e-6, time.monotonic() - self._t0)
        out: dict[str, float] = {}
        notes = []
        io = psutil.disk_io_counters()
        disk = ((io.read_bytes + io.write_bytes) - sum(self._io0)) / wall if io else 0.0
        for s in self._running:
            if s.kind == "io":
                level = (s.running_s / wall) if s.throttled else 1.0
                if disk <= 0:
                    notes.append("io stressor: the disk counters did not move")
            else:
                level = (s.cpu_s() - s.cpu0) / wall / self.workers
            level = round(min(1.0, max(0.0, level)), 4)
            out[s.kind] = level
            if level < 0.5 * s.level:
                notes.append(f"{s.kind} stressor reached {level:.2f} of the {s.level:.2f} asked")
        if self._gpu is not None:  # its kernels' time since the mark (as it measured them) over the wall time
            level = round(min(1.0, max(0.0, (self._gpu.busy() - self._gpu0) / wall)), 4)
            out["gpu"] = level
            if not self._gpu.alive:  # its status file stopped when it did: the level says how long it ran
                notes.append("gpu stressor exited during the run")
            elif level < 0.5 * self.levels["gpu"]:
                notes.append(f"gpu stressor reached {level:.2f} of the {self.levels['gpu']:.2f} asked")
        return out, max(0.0, disk), notes

    def stop(self) -> None:
        gpu, self._gpu = self._gpu, None
        if gpu is not None and gpu is self.gpu:  # kept for the next run: idle until then
            with contextlib.suppress(GpuStressorError):
                gpu.set_level(0.0, start=False)
        elif gpu is not None:
            gpu.close()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
        for s in self._running:  # stress-ng stops and reaps its workers on SIGTERM
            self._signal(s, signal.SIGCONT)
            self._signal(s, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for s in self._running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.proc.wait(max(0.05, deadline - time.monotonic()))
            self._signal(s, signal.SIGKILL)  # whatever is left of its group
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.proc.wait(5)
        self._running.clear()
        with contextlib.suppress(OSError):
            for p in self.workdir.glob("stress-ng-*"):
                shutil.rmtree(p, ignore_errors=True)

    def __enter__(self) -> Stressors:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
