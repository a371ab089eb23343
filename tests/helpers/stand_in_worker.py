"""A small stand-in for the training worker (issue #6), to test the node's supervisor.

Reads plans (JSON lines) on stdin and writes WorkerReports on stdout every 0.1 s. What it does
is chosen by the plan's model name:
  test:run         run until killed; starts a child process (``sleep``) to prove group kills
  test:crash-once  exit 3 after 2 steps the first time (marker file in the output dir), then run
  test:finish:N    exit 0 after N steps
  test:crash-always  print an error line on stderr and exit 3 at once, every time
  test:fail        report ``failed`` (as a TrainingError does) and exit 2
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec

from deepedge.worker_protocol import PlanForWorker, WorkerReport, decode_plan_line, encode_line

current: PlanForWorker | None = None


def slow_model(num_classes: int) -> object:
    """A ``module:callable`` model factory that does not return in time (the preflight's timeout)."""
    time.sleep(60)
    raise RuntimeError(f"too late for {num_classes} classes")


def read_plans() -> None:
    global current
    for line in sys.stdin.buffer:
        current = decode_plan_line(line)


def main() -> int:
    global current
    current = decode_plan_line(sys.stdin.buffer.readline())
    threading.Thread(target=read_plans, daemon=True).start()
    model = current.plan.spec.model
    if model == "test:crash-always":
        print("worker: starting", file=sys.stderr, flush=True)
        print("worker: crashed: RuntimeError: the stand-in always crashes", file=sys.stderr, flush=True)
        print("some trailing noise", file=sys.stderr, flush=True)
        return 3
    if model == "test:fail":
        p = current
        failed = WorkerReport(
            job=p.plan.job,
            generation=p.plan.generation,
            rank=p.assignment.rank,
            world_size=len(p.plan.assignments),
            state="failed",
            message="the stand-in's training error",
        )
        sys.stdout.buffer.write(encode_line(failed))
        sys.stdout.flush()
        print("worker: the stand-in's training error", file=sys.stderr, flush=True)
        return 2
    child = subprocess.Popen(["sleep", "300"])
    print("not a report: worker starting", flush=True)
    print(f"worker stderr line pid={child.pid}", file=sys.stderr, flush=True)
    step = 0
    while True:
        step += 1
        p = current
        report = WorkerReport(
            job=p.plan.job,
            generation=p.plan.generation,
            rank=p.assignment.rank,
            world_size=len(p.plan.assignments),
            step=step,
            samples_per_s=100.0,
            loss=1.0 / step,
            intensity=p.assignment.intensity_cap,
            message=f"child={child.pid}",
        )
        sys.stdout.buffer.write(encode_line(report))
        sys.stdout.flush()
        if model == "test:crash-once" and step == 2:
            marker = Path(p.plan.spec.output) / "crashed-once"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("1")
                return 3
        if model.startswith("test:finish:") and step >= int(model.split(":")[2]):
            sys.stdout.buffer.write(encode_line(msgspec.structs.replace(report, state="done")))
            sys.stdout.flush()
            child.kill()
            return 0
        time.sleep(0.1)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # not sys.exit: the stdin reader thread would block interpreter shutdown
