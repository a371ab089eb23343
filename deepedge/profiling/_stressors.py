"""Controlled stressors (FECBench's resource stressors) with stress-ng: CPU, last-level cache,
memory bandwidth and disk I/O, each at a level in [0, 1], and a check from the processes' CPU
time and the machine's counters that each reached the level it was asked for.

- ``cpu``: ``stress-ng --cpu W --cpu-load L``: stress-ng holds the load itself;
- ``cache``: ``stress-ng --cache W`` (thrashes the shared cache), ``mem``: ``stress-ng --stream
  W`` (STREAM copy/scale/add/triad: memory bandwidth), ``io``: ``stress-ng --hdd W`` (writes and
  reads a file under ``workdir``): these run at full strength, so their level is a duty cycle
  that this module holds by stopping and continuing their process group (SIGSTOP / SIGCONT,
  100 ms period);
- ``gpu``: matrix multiplications on the board's training GPU (``python -m
  deepedge.training.gpu_stress``, a process of its own as the training profiler is: torch
  never loads in the daemon), which holds its duty cycle itself and says what its kernels achieved; only where the
  board trains on CUDA. Built, not measured on a GPU yet (docs/planner.md).

Standard library and psutil only: the node daemon runs them (it never imports scikit-learn)."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["STRESS_NG", "StressorError", "Stressors", "stressor_argv"]

STRESS_NG = "stress-ng"
PERIOD_S = 0.1  # duty-cycle period of the throttled stressors
GPU_MODULE = "deepedge.training.gpu_stress"
GPU_READY_S = 120.0  # importing torch and initialising CUDA on a small board takes a while


class StressorError(Exception):
    pass


def stressor_argv(
    kind: str, level: float, workers: int, workdir: Path, timeout_s: float = 120.0, device: str = "cuda"
) -> list[str]:
    """The stressor's command line; it stops by itself after ``timeout_s`` whatever happens to us.
    ``gpu``: the GPU stressor on ``device`` (the board's training device), the others stress-ng."""
    if kind == "gpu":
        return [
            sys.executable,
            "-m",
            GPU_MODULE,
            "--level",
            f"{level:g}",
            "--seconds",
            str(max(1, round(timeout_s))),
            "--status",
            str(workdir / "gpu-stress.status"),
            "--device",
            device,
        ]
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
    raise StressorError(f"unknown stressor {kind!r} (cpu, cache, mem, io, gpu)")


@dataclass
class _Stressor:
    kind: str
    level: float
    proc: subprocess.Popen[bytes]
    throttled: bool
    cpu0: float = 0.0
    running_s: float = 0.0  # time the throttle let it run
    gpu0: float = 0.0  # the GPU stressor's kernel seconds at the mark

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
    _running: list[_Stressor] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0
    _io0: tuple[int, int] = (0, 0)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # the GPU stressor first: stress-ng's own timeout runs from its start, and the GPU
        # stressor's may take a while (torch imported, CUDA initialised) before it is ready
        for kind, level in sorted(self.levels.items(), key=lambda kv: kv[0] != "gpu"):
            if level <= 0:
                continue
            argv = stressor_argv(kind, min(1.0, level), self.workers, self.workdir, self.timeout_s, self.device)
            nice = self.nice

            def setup(nice: int = nice) -> None:
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, 0, nice)

            gpu = kind == "gpu"
            with contextlib.ExitStack() as files:
                err = files.enter_context(open(self._gpu_err, "wb")) if gpu else subprocess.DEVNULL
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE if gpu else subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,  # its own process group: stopped, continued, killed as one
                    preexec_fn=setup,
                )
            # the CPU and GPU stressors hold their level themselves; the others are throttled here
            self._running.append(
                _Stressor(kind, min(1.0, level), proc, throttled=kind not in ("cpu", "gpu") and level < 1.0)
            )
            if gpu:
                self._wait_ready(proc)
        time.sleep(0.2)  # stress-ng forks its workers
        for s in self._running:
            if s.proc.poll() is not None:
                self.stop()
                what = "the gpu stressor" if s.kind == "gpu" else f"stress-ng ({s.kind})"
                raise StressorError(f"{what} exited {s.proc.returncode} at start")
        self.mark()
        if any(s.throttled for s in self._running):
            self._thread = threading.Thread(target=self._throttle, name="stressor-throttle", daemon=True)
            self._thread.start()

    @property
    def _gpu_err(self) -> Path:
        return self.workdir / "gpu-stress.err"

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait for the GPU stressor's ``ready`` (torch imported, the device answered); raises
        StressorError with its reason when it exits or does not answer within GPU_READY_S."""
        assert proc.stdout is not None
        out = proc.stdout
        deadline = time.monotonic() + GPU_READY_S
        line = b""
        try:
            while time.monotonic() < deadline:
                if not select.select([out], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    break
                chunk = os.read(out.fileno(), 1)  # byte by byte: a partial line never blocks
                if not chunk:
                    break  # it exited
                if chunk != b"\n":
                    line = (line + chunk)[-64:]
                elif line.strip() == b"ready":
                    return
                else:
                    line = b""  # another line (a library's warning): not the answer
        finally:
            out.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1)
        try:
            why = self._gpu_err.read_text(errors="replace").strip().splitlines()[-1][:300]
        except (OSError, IndexError):
            why = ""
        code = proc.returncode
        said = why or (f"exited {code}" if code is not None else f"not ready in {GPU_READY_S:g} s")
        raise StressorError(f"the gpu stressor did not start: {said}")

    def _gpu_busy(self) -> float:
        """The GPU stressor's kernel seconds as it last wrote them (each period); 0 if unreadable."""
        try:
            return float((self.workdir / "gpu-stress.status").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0

    def mark(self) -> None:
        """Start measuring what the stressors achieve from now on."""
        self._t0 = time.monotonic()
        for s in self._running:
            s.cpu0 = s.cpu_s()
            s.running_s = 0.0
            if s.kind == "gpu":
                s.gpu0 = self._gpu_busy()
        io = psutil.disk_io_counters()
        self._io0 = (io.read_bytes, io.write_bytes) if io else (0, 0)

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
            elif s.kind == "gpu":  # its kernels' time since the mark (as it measured them) over the wall time
                level = (self._gpu_busy() - s.gpu0) / wall
                if s.proc.poll() is not None:  # its status file stopped when it did: the level says how long it ran
                    notes.append(f"gpu stressor exited {s.proc.returncode} during the run")
            else:
                level = (s.cpu_s() - s.cpu0) / wall / self.workers
            level = round(min(1.0, max(0.0, level)), 4)
            out[s.kind] = level
            if level < 0.5 * s.level:
                notes.append(f"{s.kind} stressor reached {level:.2f} of the {s.level:.2f} asked")
        return out, max(0.0, disk), notes

    def stop(self) -> None:
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
            for p in self.workdir.glob("gpu-stress.*"):
                p.unlink(missing_ok=True)

    def __enter__(self) -> Stressors:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
