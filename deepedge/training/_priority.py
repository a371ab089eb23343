"""CPU priority of a worker's communication threads.

The worker computes at the node's ``worker_nice`` (training is background work; LC apps come
first). The threads torch.distributed starts for communication — gloo's socket loop and the
work threads that run the ring all-reduce, the rendezvous store's loop — do short bursts that
every rank of the job waits on: at ``worker_nice`` each burst queued behind whatever else
computes on its CPU, a few ms a step on every board (measured in docs/benchmarks.md). They run at
``worker_comm_nice`` instead. The node daemon sets this for the threads that exist when the
worker starts training; the worker sets it again for the threads of each process group it forms.

Lowering a nice value needs privilege (root, CAP_SYS_NICE, or an RLIMIT_NICE that allows it,
which the node daemon gives its workers where it can). Where it is refused the threads keep the
worker's priority — the behaviour before this existed — and the worker says so once on stderr.

Only these threads. Moving the compute thread itself to the higher priority while it waits (and
back before it computes) was measured too, on the demo's cluster: steps got slower, not faster
(median 125-128 ms against 120 ms with only these threads, 124-126 ms with neither); why was not
established.
"""

from __future__ import annotations

import os
import sys

__all__ = ["prioritize_threads", "thread_ids"]

_refused = False


def thread_ids() -> set[int]:
    """This process's threads now."""
    return {int(t) for t in os.listdir("/proc/self/task")}


def prioritize_threads(nice: int | None, tids: set[int]) -> int:
    """Set the threads ``tids`` to ``nice`` (``None``: leave them); how many were set. The worker
    passes the threads that forming a process group started (the rendezvous store's, gloo's):
    chosen by when they appeared, not by name, because a new thread names itself only once it
    runs, and may not have yet."""
    global _refused
    if nice is None:
        return 0
    done = 0
    for tid in sorted(tids):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            done += 1
        except ProcessLookupError:
            continue  # ended since
        except OSError as exc:
            if not _refused:
                _refused = True
                print(
                    f"worker: communication threads keep their priority: nice {nice} refused ({exc})",
                    file=sys.stderr,
                    flush=True,
                )
    return done
