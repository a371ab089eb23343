"""The training worker process: ``python -m deepedge.training.worker``, started by its node
daemon, one plan generation after another on stdin, reports on stdout. Never MQTT.

With ``--standby`` it imports torch and the trainer first and then waits, with no time limit, for
its first plan: the node daemon starts one such worker ahead of a job, while the board is idle,
so that a job's start does not wait for (and its LC apps do not pay for) the import
(docs/node.md, "Standby worker"). Its stdin closing (the daemon gone) ends it."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from deepedge.broker_schemas import WorkerState
from deepedge.devices import DeviceError
from deepedge.training._channel import Channel
from deepedge.training._errors import TrainingError
from deepedge.worker_protocol import STANDBY_READY, WorkerReport

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    standby = "--standby" in (sys.argv[1:] if argv is None else argv)
    channel = Channel()
    if standby:  # what a standby is for: the imports done before the plan comes
        for module in ("torch", "deepedge.training._trainer"):
            importlib.import_module(module)
        print(STANDBY_READY, flush=True)  # (not a report: the daemon's standby watches for it)
    first = channel.wait_newer(-1, timeout=None if standby else 120)
    if first is None:
        print("worker: no plan on stdin", file=sys.stderr, flush=True)
        return 2
    import torch  # imported here, not by the daemon

    from deepedge.training._trainer import Trainer

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))  # no more threads than the CPUs it may use

    try:
        Trainer(first, channel).run()
    except (TrainingError, DeviceError) as exc:  # a board that cannot train as configured is no crash
        a = first.assignment
        channel.report(
            WorkerReport(
                job=first.plan.job,
                generation=first.plan.generation,
                rank=a.rank,
                state=WorkerState.FAILED,
                message=str(exc)[:4000],
            )
        )
        print(f"worker: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # a bug or an unforeseen failure: the daemon restarts it, counts, reports
        traceback.print_exc()
        print(f"worker: crashed: {type(exc).__name__}: {str(exc)[:500]}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the stdin reader thread must not hold up interpreter shutdown
