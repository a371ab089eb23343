"""One profiling run on this machine: an LC app's latency while training runs beside it at an
intensity and stressors run at their levels. The node daemon runs these for ``deepedge profile
--interference`` (through its own latency intake), ``deepedge bench interference`` directly.

The training is the real thing: one ``python -m deepedge.training.profile`` process in its
interactive mode, with the worker's step code, CPUs, priority and emulated pacing, kept for all
runs of a session (so a run does not pay torch's import). The LC app's request rate is set
through a rate file that the app reads (``deepedge.demo.lc_app --rate-file``); the rate that
counts is the one that arrived. Standard library and psutil only (the node daemon uses it)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from deepedge.config import TrainingConfig
from deepedge.devices import board_cpus
from deepedge.profiling._gpu_stressor import GpuStressor
from deepedge.profiling._pipes import first_line
from deepedge.profiling._pressure import Pressure, PressureSampler
from deepedge.profiling._space import Point, Run
from deepedge.profiling._stressors import Stressors

__all__ = [
    "LatencySink",
    "LatencySource",
    "PointRunner",
    "RunnerConfig",
    "measure",
    "percentile",
    "rate_file_for",
    "trainer_settings",
    "write_rate",
]


class LatencySource(Protocol):
    def samples(self, app: str, start: float, end: float) -> list[float]:
        """The app's latencies (ms) that arrived in [start, end] (time.monotonic())."""
        ...


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, as the node daemon reports it."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s), max(1, math.ceil(q / 100.0 * len(s)))) - 1]


def rate_file_for(socket_path: str | Path, app: str) -> Path:
    """Where an LC app reporting to the latency socket ``socket_path`` reads the request rate a
    profile (or a benchmark's trace) asks of it: ``<socket>.<app>.rate``."""
    p = Path(socket_path)
    return p.with_name(f"{p.name}.{app}.rate")


def write_rate(path: Path, rate: float) -> None:
    """Ask the LC app for ``rate`` requests per second (it re-reads the file every 0.2 s)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{rate:.3f}\n")
    tmp.replace(path)


def _busy_total(cpus: tuple[int, ...]) -> tuple[float, float, int]:
    """(busy, total) CPU seconds so far over the board's CPUs (``board_cpus``: all when none
    named), and how many CPUs that is: what its telemetry's CPU figures cover."""
    per_cpu = psutil.cpu_times(percpu=True)
    picked = [per_cpu[c] for c in board_cpus(cpus, len(per_cpu))]
    busy = sum(sum(t) - t.idle - t.iowait for t in picked)
    return busy, sum(sum(t) for t in picked), len(picked)


def trainer_settings(training: TrainingConfig) -> dict[str, object]:
    """What the profiler process (``deepedge.training.profile``) takes from the board's
    ``[training]``: it trains where and how the board's worker would."""
    return {
        "device": training.device,
        "precision": training.precision,
        "lc_memory_reserve_mb": training.lc_memory_reserve_mb,
    }


def _json_object(line: bytes) -> dict[str, object] | None:
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


@dataclass
class RunnerConfig:
    app: str
    workdir: Path
    model: str = "cnn-small"
    seconds: float = 3.0  # measured per run
    settle_s: float = 0.6  # after the stressors start and the rate changes, before measuring
    # then, before training, the machine's CPU pressure with the stressors and the LC app alone
    # (Run.bg_psi, Run.bg_runnable); 0: not measured
    background_s: float = 0.0
    cpu_affinity: tuple[int, ...] = ()  # the training's CPUs (the worker's)
    # the CPUs the board is (node.emulate_cpus; empty: all): where the background CPU is measured.
    # The stressors are not pinned there: pinned to an emulated board's one vCPU (08:00 on
    # 2026-12-04) they made the knowledge base's CV error 18-20 % and its caps 0 at the LC bench's
    # deadlines (docs/benchmarks/lc-scenarios.md)
    board_cpus: tuple[int, ...] = ()
    worker_nice: int = 10
    emulated_sample_s: float = 0.0
    training: TrainingConfig = field(default_factory=TrainingConfig)  # the board's: where and how its worker trains
    stressor_workers: int = 1
    rate_file: Path | None = None
    gpu_device: str = "cuda"  # the GPU stressor's device: the board's training device (its torch probe's)


class PointRunner:
    def __init__(self, cfg: RunnerConfig, latency: LatencySource) -> None:
        self.cfg = cfg
        self.latency = latency
        self.trainer: subprocess.Popen[bytes] | None = None
        # the GPU stressor, kept across runs as the trainer is (its torch import paid once)
        self.gpu: GpuStressor | None = None

    # ---- the training process -----------------------------------------------------------------

    def _start_trainer(self) -> subprocess.Popen[bytes]:
        cfg = self.cfg
        affinity, nice = cfg.cpu_affinity, cfg.worker_nice

        def setup() -> None:
            with contextlib.suppress(OSError):
                if affinity:
                    os.sched_setaffinity(0, affinity)
                os.setpriority(os.PRIO_PROCESS, 0, nice)

        proc = subprocess.Popen(
            [sys.executable, "-m", "deepedge.training.profile"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=setup,
        )
        assert proc.stdin is not None
        request = {
            "model": cfg.model,
            "interactive": True,
            "emulated_sample_s": cfg.emulated_sample_s,
            **trainer_settings(cfg.training),
        }
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        proc.stdin.flush()
        self.trainer = proc
        line = self._read(120.0)
        if not line.get("ready"):
            self._close_trainer()
            raise RuntimeError(f"the training profiler did not start: {line.get('error', line)}")
        return proc

    def _read(self, timeout: float) -> dict[str, object]:
        """The training profiler's next JSON object line (other lines skipped)."""
        assert self.trainer is not None and self.trainer.stdout is not None
        msg = first_line(self.trainer.stdout, timeout, _json_object)
        if msg is None:
            raise RuntimeError(f"the training profiler gave no result within {timeout:g} s")
        return msg

    def _train(self, intensity: float, seconds: float) -> tuple[float, float, float]:
        """Train at ``intensity`` for ``seconds``: (start, end) in time.monotonic(), achieved duty."""
        if self.trainer is not None and self.trainer.poll() is not None:  # it left after idling
            self._close_trainer()
        proc = self.trainer or self._start_trainer()
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"level": intensity, "seconds": seconds}).encode() + b"\n")
        proc.stdin.flush()
        msg = self._read(seconds + 60.0)
        if "error" in msg:
            raise RuntimeError(str(msg["error"]))
        offset = time.time() - time.monotonic()
        return float(msg["t0"]) - offset, float(msg["t1"]) - offset, float(msg["duty"])  # type: ignore[arg-type]

    def _trainer_cpu_s(self) -> float:
        if self.trainer is None:
            return 0.0
        try:
            t = psutil.Process(self.trainer.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(t.user + t.system)

    # ---- one run ------------------------------------------------------------------------------

    def run(self, point: Point, phase: str = "design", scenario: str = "") -> Run:
        cfg = self.cfg
        if point.intensity > 0 and (self.trainer is None or self.trainer.poll() is not None):
            self._close_trainer()
            self._start_trainer()
        if cfg.rate_file is not None and point.rate > 0:
            write_rate(cfg.rate_file, point.rate)
        timeout = cfg.settle_s + cfg.seconds + 60.0
        if point.gpu > 0 and self.gpu is None:
            self.gpu = GpuStressor(cfg.workdir / "gpu", cfg.gpu_device)
        with Stressors(
            point.stressors(), cfg.workdir / "stress", cfg.stressor_workers, timeout_s=timeout, gpu=self.gpu
        ) as stress:
            time.sleep(cfg.settle_s)
            quiet = Pressure()  # before training
            if cfg.background_s > 0:
                with PressureSampler() as bg:
                    time.sleep(cfg.background_s)
                quiet = bg.result
            stress.mark()
            cpu0 = _busy_total(cfg.board_cpus)
            train0 = self._trainer_cpu_s()
            t_mark = time.monotonic()
            with PressureSampler() as during:
                if point.intensity > 0:
                    start, end, duty = self._train(point.intensity, cfg.seconds)
                else:
                    start = time.monotonic()
                    time.sleep(cfg.seconds)
                    end, duty = time.monotonic(), 0.0
            achieved, disk_bps, notes = stress.achieved()
            cpu1 = _busy_total(cfg.board_cpus)
            train1 = self._trainer_cpu_s()
            wall = max(1e-9, time.monotonic() - t_mark)
        busy = cpu1[0] - cpu0[0]
        total = max(1e-9, cpu1[1] - cpu0[1])
        lat = self.latency.samples(cfg.app, start, end)
        span = max(1e-9, end - start)
        if not lat:
            notes.append(f"no latency reports from LC app {cfg.app}")
        # background CPU, as the coordinator sees it from telemetry: cores busy with anything but
        # this training and the LC app (the stressors, and whatever else runs on the board)
        ncpu = cpu0[2]
        lc_cores = len(lat) / span * percentile(lat, 50) / 1000.0
        background = max(0.0, busy / total * ncpu - (train1 - train0) / wall - lc_cores)
        return Run(
            asked=point,
            intensity=round(min(1.0, duty), 4),
            rate=round(len(lat) / span, 3),
            cpu=round(background, 4),
            cpu_stress=achieved.get("cpu", 0.0),
            cache=achieved.get("cache", 0.0),
            mem=achieved.get("mem", 0.0),
            io=achieved.get("io", 0.0),
            gpu=achieved.get("gpu", 0.0),
            p95_ms=round(percentile(lat, 95), 4),
            p50_ms=round(percentile(lat, 50), 4),
            count=len(lat),
            seconds=round(span, 3),
            machine_cpu=round(busy / total, 4),
            disk_bps=round(disk_bps, 1),
            bg_psi=quiet.psi,
            bg_runnable=quiet.runnable,
            psi=during.result.psi,
            runnable=during.result.runnable,
            phase=phase,
            scenario=scenario,
            ts=time.time(),
            notes=tuple(notes),
        )

    def close(self) -> None:
        """Stop the GPU stressor and the training profiler."""
        gpu, self.gpu = self.gpu, None
        try:
            if gpu is not None:
                gpu.close()
        finally:
            self._close_trainer()

    def _close_trainer(self) -> None:
        proc, self.trainer = self.trainer, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> PointRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LatencySink:
    """A latency intake for runs without a node daemon (``deepedge bench interference``): a Unix
    datagram socket that ``deepedge.lc_client`` reports to, kept per app with arrival times."""

    def __init__(self, path: Path, keep_s: float = 120.0) -> None:
        self.path = path
        self.keep_s = keep_s
        self._data: dict[str, deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="latency-sink", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._lock:
                for line in data.splitlines():
                    parts = line.split()
                    if len(parts) != 2:
                        continue
                    with contextlib.suppress(ValueError, UnicodeDecodeError):
                        q = self._data.setdefault(parts[0].decode(), deque())
                        q.append((now, float(parts[1])))
                        while q and q[0][0] < now - self.keep_s:
                            q.popleft()

    def samples(self, app: str, start: float, end: float) -> list[float]:
        with self._lock:
            return [ms for t, ms in self._data.get(app, ()) if start <= t <= end]

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(2)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def measure(
    runner: PointRunner, points: list[Point], phase: str, on_run: Callable[[Run], None] | None = None
) -> list[Run]:
    """Run ``points`` in order; ``on_run`` sees each run as it is measured."""
    out = []
    for p in points:
        r = runner.run(p, phase)
        out.append(r)
        if on_run is not None:
            on_run(r)
    return out
