"""The worker's side of its channel to the daemon: plans in on stdin (a reader thread keeps the
newest), reports out on stdout."""

from __future__ import annotations

import sys
import threading
from typing import BinaryIO

import msgspec

from deepedge.worker_protocol import PlanForWorker, WorkerReport, decode_plan_line, encode_line

__all__ = ["Channel"]


class Channel:
    def __init__(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        self._in = stdin or sys.stdin.buffer
        self._out = stdout or sys.stdout.buffer
        self._cond = threading.Condition()
        self._latest: PlanForWorker | None = None
        self.closed = False
        threading.Thread(target=self._read, name="plans", daemon=True).start()

    def _read(self) -> None:
        for line in self._in:
            try:
                plan = decode_plan_line(line)
            except (msgspec.DecodeError, ValueError):
                print(f"worker: ignored a line that is not a plan: {line[:80]!r}", file=sys.stderr, flush=True)
                continue
            with self._cond:
                newer = self._latest is None or plan.plan.generation > self._latest.plan.generation
                if self._latest is None or plan.plan.generation >= self._latest.plan.generation:
                    self._latest = plan
                self._cond.notify_all()
            # when the worker learned of it (a failover's timeline, beside the daemon's plan.accepted);
            # not a "worker: " line: this thread may print after a TrainingError's reason, which the
            # daemon takes from the last such line (node._supervisor.crash_reason)
            if newer:
                print(f"worker (plans): generation {plan.plan.generation} received", file=sys.stderr, flush=True)
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def latest(self) -> PlanForWorker | None:
        with self._cond:
            return self._latest

    def wait_newer(self, generation: int, timeout: float | None = None) -> PlanForWorker | None:
        """A plan of a later generation than ``generation`` (None on timeout or closed stdin)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self.closed or (self._latest is not None and self._latest.plan.generation > generation), timeout
            )
            if self._latest is not None and self._latest.plan.generation > generation:
                return self._latest
            return None

    def report(self, report: WorkerReport) -> None:
        self._out.write(encode_line(report))
        self._out.flush()
