"""``deepedge profile`` on a board (FECBench-style): train a model alone at a few intensities
with the worker's own step code, measure the throughput and, for each LC app on the board, its
p95 latency at each intensity (and with nothing training). The result is kept in
``node.profile_path`` and announced in the node's retained birth message; the coordinator uses it
as its prior for the board's rate and its apps' interference model, so a job's first plan is
already the right one instead of a guess that heartbeats correct later.

Interference runs (``deepedge profile NODE --interference``): one design point at a time, as the
profiling session that drives them asks: stressors at levels, the training at an intensity, the
LC app at a request rate (its rate file), its latency from this daemon's own intake; the raw run
goes back in the reply. Fitting happens where the session runs, never here
(``deepedge.profiling._runner``: standard library and psutil)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import msgspec
import structlog

from deepedge.broker_schemas import LcPoint, ModelProfile
from deepedge.clock import Clock
from deepedge.config import ConfigError, NodeConfig, TrainingConfig
from deepedge.devices import board_cpus
from deepedge.node._latency import LatencyWindows
from deepedge.profiling._runner import PointRunner, RunnerConfig, rate_file_for, trainer_settings
from deepedge.profiling._space import Point, Run

__all__ = ["BoardProfiler", "ProfileError"]

log = structlog.get_logger("deepedge.node")

_PROFILES = msgspec.json.Decoder(dict[str, ModelProfile])
MAX_PROFILES = 16  # models remembered (the birth message carries them all)


class ProfileError(Exception):
    pass


class BoardProfiler:
    def __init__(
        self, cfg: NodeConfig, windows: LatencyWindows, clock: Clock, training: TrainingConfig | None = None
    ) -> None:
        self.cfg = cfg
        self.training = training or TrainingConfig()  # where and how the worker trains: so does the profile
        self.windows = windows
        self.clock = clock
        self.path = Path(cfg.profile_path) if cfg.profile_path else None
        self._lock_fd: int | None = None
        self._lock()
        self.profiles: dict[str, ModelProfile] = self._load()
        self.task: asyncio.Task[ModelProfile] | None = None
        self.last_error = ""
        self._point_lock = asyncio.Lock()
        self._runner: PointRunner | None = None
        self._scratch: Path | None = None  # the interference runs' working folder
        self.interference_runs = 0
        self.last_busy = -1e18  # monotonic time a profile or interference run last ran

    def busy_within(self, seconds: float) -> bool:
        """A profile or interference run is in progress, or ended less than ``seconds`` ago:
        the LC latency window of that length is the profile's, not the board's own load."""
        if self.running or self.measuring:
            self.last_busy = self.clock.monotonic()
        return self.clock.monotonic() - self.last_busy < seconds

    @property
    def measuring(self) -> bool:
        """An interference run is in progress."""
        return self._point_lock.locked()

    def _samples(self, app: str, start: float, end: float) -> list[float]:
        window = self.windows._samples.get(app, ())  # the intake's own window (same package)
        return [ms for t, ms in list(window) if start <= t <= end]  # list(): a copy, taken at once

    async def run_point(
        self,
        app: str,
        point: Point,
        seconds: float,
        workers: int = 1,
        model: str = "cnn-small",
        gpu_device: str = "cuda",
    ) -> Run:
        """One interference run (see the module's doc); ``gpu_device``: where the GPU stressor
        runs (the board's training device). Raises ProfileError when one is already running, or
        when the run fails."""
        if self._point_lock.locked() or self.running:
            raise ProfileError("a profile is already running on this node")
        async with self._point_lock:
            if self._scratch is None:  # beside the profile, else a private folder of its own (not a guessable name)
                self._scratch = (
                    self.path.parent / f"interference-{os.getpid()}"
                    if self.path
                    else Path(tempfile.mkdtemp(prefix="deepedge-interference-"))
                )
            cpus = board_cpus(self.cfg.emulate_cpus, os.cpu_count() or 1)
            cfg = RunnerConfig(
                app=app,
                workdir=self._scratch,
                model=model,
                seconds=seconds,
                cpu_affinity=tuple(self.cfg.cpu_affinity or ()),
                board_cpus=cpus,
                worker_nice=self.cfg.worker_nice,
                emulated_sample_s=self.cfg.emulate_sample_ms / 1000.0,
                training=self.training,
                stressor_workers=min(workers, len(cpus)),  # at most one per CPU of the board
                rate_file=rate_file_for(self.cfg.latency_socket, app),
                gpu_device=gpu_device,
            )
            if self._runner is None or self._runner.cfg != cfg:
                if self._runner is not None:
                    await asyncio.to_thread(self._runner.close)
                self._runner = PointRunner(cfg, self)
            runner = self._runner
            try:
                run = await asyncio.to_thread(runner.run, point)
            except Exception as exc:
                await asyncio.to_thread(runner.close)
                self._runner = None
                raise ProfileError(f"interference run failed: {type(exc).__name__}: {exc}") from None
            finally:
                self.last_busy = self.clock.monotonic()
                with contextlib.suppress(OSError):
                    rate_file_for(self.cfg.latency_socket, app).unlink()  # the app back to its own rate
            self.interference_runs += 1
            return run

    def samples(self, app: str, start: float, end: float) -> list[float]:
        """LatencySource for the runner: the intake's latencies of ``app`` in [start, end]."""
        return self._samples(app, start, end)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def _lock(self) -> None:
        """Hold an exclusive lock on ``<profile_path>.lock`` for the daemon's life: two daemons
        writing one profile file would each announce the other's measurements as their own.
        ConfigError (exit 78) if another process holds it; a lock file that cannot be made is
        logged and the daemon runs on (as when the profile cannot be saved)."""
        if self.path is None:
            return
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            log.warning("profile.unlocked", path=str(lock), error=str(exc))
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise ConfigError(
                f"node.profile_path {self.path} is locked by {who} (another deepedge node on this host?): "
                "give each daemon its own node.profile_path"
            ) from None
        except OSError as exc:
            os.close(fd)
            log.warning("profile.unlocked", path=str(lock), error=str(exc))
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the profile file's lock (the process's exit does too), stop a kept training
        process of interference runs."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _load(self) -> dict[str, ModelProfile]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            return dict(list(_PROFILES.decode(self.path.read_bytes()).items())[:MAX_PROFILES])
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("profile.unreadable", path=str(self.path), error=str(exc))
            return {}

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(msgspec.json.encode(self.profiles))
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("profile.unsaved", path=str(self.path), error=str(exc))

    async def measure(self, model: str, levels: list[float], seconds: float) -> ModelProfile:
        """Run the profiler process; keep and return the profile. Raises ProfileError."""
        if self.measuring:
            raise ProfileError("an interference run is in progress on this node")
        before = self.clock.monotonic()
        alone = self.windows.p95_between(before - seconds, before)  # nothing trains now
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "deepedge.training.profile",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            # as the training worker runs: on its CPUs, at its priority
            if self.cfg.cpu_affinity:
                os.sched_setaffinity(proc.pid, self.cfg.cpu_affinity)
            os.setpriority(os.PRIO_PROCESS, proc.pid, self.cfg.worker_nice)
        except OSError as exc:
            log.warning("profile.priority_failed", error=str(exc))
        request = {
            "model": model,
            "levels": levels,
            "seconds": seconds,
            "emulated_sample_s": self.cfg.emulate_sample_ms / 1000.0,
            **trainer_settings(self.training),
        }
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stderr = asyncio.create_task(proc.stderr.read())  # drained all along: a full pipe would block it
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            await proc.stdin.drain()
            points = [LcPoint(app=app, intensity=0.0, p95_ms=p95) for app, p95 in alone.items()]
            best: tuple[float, float] | None = None  # (intensity, full-intensity rate)
            while line := await proc.stdout.readline():
                try:
                    level = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(level, dict):
                    continue
                if "error" in level:
                    raise ProfileError(str(level["error"])[:500])
                now = self.clock.monotonic()
                duty = max(0.01, min(1.0, float(level["duty"])))
                span = float(level["t1"]) - float(level["t0"])
                for app, p95 in self.windows.p95_between(now - span, now).items():
                    points.append(LcPoint(app=app, intensity=round(duty, 4), p95_ms=round(p95, 3)))
                if best is None or duty > best[0]:
                    best = (duty, float(level["samples_per_s"]) / duty)
                log.info("profile.level", model=model, intensity=duty, samples_per_s=level["samples_per_s"])
            rc = await proc.wait()
            if best is None:
                err = (await stderr)[-500:].decode(errors="replace").strip()
                raise ProfileError(f"the profiler exited {rc} without a measurement: {err or 'no output'}")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            stderr.cancel()
        result = ModelProfile(samples_per_s=round(best[1], 3), ts=self.clock.time(), lc=tuple(points[:64]))
        self.profiles[model] = result
        while len(self.profiles) > MAX_PROFILES:
            del self.profiles[next(iter(self.profiles))]
        self._save()
        return result
