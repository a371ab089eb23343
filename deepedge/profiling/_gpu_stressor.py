"""The GPU stressor's process, seen from the board: ``python -m deepedge.training.gpu_stress
--serve`` (torch never loads in the daemon), kept for a profiling session as the training
profiler is, so that its torch import and CUDA start are paid once and not at every run; each
run sets its level over stdin and puts it back to 0 at its end. It exits by itself when its
stdin closes (the daemon gone, even killed) or after IDLE_S at level 0, and is started again
when a run needs it. What it achieved is its kernels' seconds, which it writes to a status file
every period. Standard library only."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from deepedge.profiling._pipes import first_line

__all__ = ["GPU_MODULE", "GPU_READY_S", "IDLE_S", "GpuStressor", "GpuStressorError"]

GPU_MODULE = "deepedge.training.gpu_stress"
GPU_READY_S = 120.0  # importing torch and initialising CUDA on a small board takes a while
IDLE_S = 60.0  # it exits after this long at level 0 (as the training profiler after idling)
LIFE_S = 6 * 3600.0  # and after this long at level 0 (a run is never cut short by it)


class GpuStressorError(Exception):
    pass


class GpuStressor:
    def __init__(self, workdir: Path, device: str = "cuda", nice: int = 0, idle_s: float = IDLE_S) -> None:
        self.workdir = workdir
        self.device = device
        self.nice = nice
        self.idle_s = idle_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._idle_since: float | None = None  # when it was last set to level 0 (None: since started)

    @property
    def _status(self) -> Path:
        return self.workdir / "gpu-stress.status"

    @property
    def _err(self) -> Path:
        return self.workdir / "gpu-stress.err"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def set_level(self, level: float, start: bool = True) -> None:
        """Run at ``level`` from now on, started (and waited for) first if it is not running or
        may be leaving (idle for more than half its idle time: a level written as it decides to
        leave would be lost). ``start=False``: only tell a running one (nothing is started).
        Raises GpuStressorError with its reason when it cannot start."""
        level = min(1.0, max(0.0, level))
        now = time.monotonic()
        if start and self.alive and self._idle_since is not None and now - self._idle_since > self.idle_s / 2:
            self.close()
        for attempt in (1, 2):
            if not self.alive:
                if not start:
                    return
                self._start()
            assert self.proc is not None and self.proc.stdin is not None
            try:
                self.proc.stdin.write(f"{level:g}\n".encode())
                self.proc.stdin.flush()
                self._idle_since = time.monotonic() if level == 0 else None
                return
            except OSError:  # it left meanwhile: once more, started again
                self.close()
                if attempt == 2 or not start:
                    raise GpuStressorError("the gpu stressor exited as it was given its level") from None

    def busy(self) -> float:
        """Its kernel seconds since it started, as it last wrote them (each period); 0 if unreadable."""
        try:
            return float(self._status.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0

    def _start(self) -> None:
        self.close()
        self._idle_since = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            GPU_MODULE,
            "--serve",
            "--idle",
            f"{self.idle_s:g}",
            "--seconds",
            f"{LIFE_S:g}",
            "--status",
            str(self._status),
            "--device",
            self.device,
        ]
        nice = self.nice

        def setup() -> None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, nice)

        with open(self._err, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,  # its own process group: killed as one
                preexec_fn=setup,
            )
        if not self._wait_ready():
            code = self.proc.poll()
            try:
                why = self._err.read_text(errors="replace").strip().splitlines()[-1][:300]
            except (OSError, IndexError):
                why = ""
            self.close()
            said = why or (f"exited {code}" if code is not None else f"not ready in {GPU_READY_S:g} s")
            raise GpuStressorError(f"the gpu stressor did not start: {said}")

    def _wait_ready(self) -> bool:
        """Whether it printed ``ready`` within GPU_READY_S (other lines skipped)."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            return first_line(self.proc.stdout, GPU_READY_S, lambda line: line.strip() == b"ready" or None) is not None
        finally:
            self.proc.stdout.close()

    def close(self) -> None:
        """Stop it (stdin closed, then SIGTERM and SIGKILL to its group) and remove its files."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            for sig, wait in ((None, 1.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait)
                    break
        for p in (self._status, self._err, self.workdir / "gpu-stress.status.tmp"):
            p.unlink(missing_ok=True)
