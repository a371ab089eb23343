"""Run real training worker processes (``python -m deepedge.training.worker``) without a daemon:
the caller (a test, ``deepedge bench failover``) plays the daemon, writing plans to their stdin
and reading their reports, each with the time it arrived."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deepedge.broker_schemas import Assignment, JobSpec, Plan
from deepedge.config import TrainingConfig
from deepedge.embedded_broker import free_port
from deepedge.worker_protocol import PlanForWorker, WorkerReport, decode_report_line, encode_line

__all__ = ["WorkerProc", "first_report", "make_plan", "make_tensor_dataset", "start_worker", "stop_all"]


def make_tensor_dataset(path: Path, n: int, classes: int = 4, size: int = 8, seed: int = 0) -> Path:
    """A learnable dataset: each class has its own mean image plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, 3, size, size, generator=g)
    x = centers[y] + 0.5 * torch.randn(n, 3, size, size, generator=g)
    torch.save({"x": x, "y": y}, path)
    return path


def make_plan(
    job: str,
    gen: int,
    shares: dict[str, int],
    spec: JobSpec,
    cap: float = 1.0,
    port: int | None = None,
    resume_step: int = 0,
) -> Plan:
    assignments, offset = [], 0
    for rank, (node, share) in enumerate(shares.items()):
        assignments.append(Assignment(node=node, rank=rank, share=share, batch_offset=offset, intensity_cap=cap))
        offset += share
    return Plan(
        job=job,
        generation=gen,
        ts=time.time(),
        spec=spec,
        rendezvous_host="127.0.0.1",
        rendezvous_port=port or free_port(),
        backend="gloo",
        assignments=tuple(assignments),
        total_steps=0,
        resume_step=resume_step,
    )


@dataclass
class WorkerProc:
    node: str
    proc: subprocess.Popen[bytes]
    reports: list[WorkerReport] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.monotonic() of each report
    stderr: list[str] = field(default_factory=list)

    def send(
        self,
        plan: Plan,
        emulated_sample_s: float = 0.0,
        comm_nice: int | None = None,
        policy: TrainingConfig | None = None,
    ) -> None:
        """Write ``plan`` to the worker as its daemon would. ``policy``: what the "board" lets the
        job name (default: the job's dataset folder and the output's parent folder)."""
        a = next(x for x in plan.assignments if x.node == self.node)
        assert self.proc.stdin is not None
        spec = plan.spec
        policy = policy or TrainingConfig(
            data_roots=(str(Path(spec.dataset).parent),), output_root=str(Path(spec.output).parent)
        )
        pfw = PlanForWorker(
            node=self.node,
            plan=plan,
            assignment=a,
            emulated_sample_s=emulated_sample_s,
            comm_nice=comm_nice,
            policy=policy,
        )
        self.proc.stdin.write(encode_line(pfw))
        self.proc.stdin.flush()

    def wait_report(self, pred: Callable[[WorkerReport], bool], timeout: float = 60.0) -> WorkerReport:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for r in self.reports[seen:]:
                seen += 1
                if pred(r):
                    return r
            if self.proc.poll() is not None and seen >= len(self.reports):
                time.sleep(0.2)
                if seen >= len(self.reports):
                    break
            time.sleep(0.02)
        raise AssertionError(f"{self.node}: no such report; last {self.reports[-3:]}; stderr {self.stderr[-5:]}")


def first_report(
    workers: list[WorkerProc], pred: Callable[[WorkerReport], bool], timeout: float = 60.0
) -> tuple[WorkerProc, float]:
    """The worker whose report first matched ``pred``, and when that report arrived (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [(w.arrived[i], k) for k, w in enumerate(workers) for i, r in enumerate(list(w.reports)) if pred(r)]
        if hits:
            at, k = min(hits)
            return workers[k], at
        time.sleep(0.02)
    raise AssertionError(f"no worker reported as asked within {timeout:g} s")


def start_worker(node: str) -> WorkerProc:
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepedge.training.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    w = WorkerProc(node, proc)

    def read_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                report = decode_report_line(line)
                w.arrived.append(time.monotonic())
                w.reports.append(report)
            except Exception:
                continue

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            w.stderr.append(line.decode(errors="replace").rstrip())

    threading.Thread(target=read_out, daemon=True).start()
    threading.Thread(target=read_err, daemon=True).start()
    return w


def stop_all(workers: list[WorkerProc]) -> None:
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait(10)
        for f in (w.proc.stdin, w.proc.stdout, w.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
