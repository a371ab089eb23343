"""The process group of one plan generation: formed on the rendezvous store, its gradient
all-reduce abandonable when a newer plan arrives, and left without waiting for a dead peer. When
it forms, every rank probes its link to each peer (:meth:`ProcessGroup.probe_links`), which is
how the coordinator learns each board's bandwidth and latency.

Two backends, as the plan says (``Plan.backend``):

- **gloo** (the default; CPU boards, Jetsons, mixed clusters): the tensors it reduces live on
  the host. A GPU worker's flat gradient buffer is *host-staged*: copied to the CPU, all-reduced,
  copied back. Abandoning a pending all-reduce needs torch's private c10d registries
  (``_set_aside``): shutting down a gloo group with an operation pending blocks until gloo's
  timeout. They are checked once at import; a torch build that lacks them (NVIDIA's Jetson
  wheels are not the pinned 2.13.0) falls back to ``destroy_process_group``, which then may wait
  out the collective timeout — said in the log.
- **nccl** (every participant on a discrete GPU with NCCL): the buffer is reduced on the device.
  A pending NCCL all-reduce is watched with ``Work.is_completed()`` (a CUDA event query; the
  future of an NCCL work completes when it is *queued*, not when it is done). To give it up, the
  communicator is aborted (``ncclCommAbort`` through ``distributed_c10d._abort_process_group``):
  its kernel that waits for a dead peer stops occupying the GPU, and the next generation forms a
  new communicator. ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` defaults to 2 here (abort the
  communicator on an error or timeout, do not kill the process: torch's default, 3, tears the
  worker down), so a failed NCCL collective raises in the worker, which reports ``recovering``
  like a failed gloo one. Built, not run on a GPU yet (docs/training.md).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import threading
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import TCPStore

from deepedge.training._priority import prioritize_threads, thread_ids
from deepedge.training._rendezvous import ABANDON_POLL_S, NewPlan

__all__ = ["PRIVATE_C10D", "PROBE_PEERS", "ProcessGroup", "tournament"]

PROBE_PEERS = 8  # a rank probes its link to at most this many peers (rounds of the tournament)
PROBE_TARGET_S = 0.05  # the measured exchange lasts about this long (sized from a first, small one)
PROBE_BYTES = (64 * 1024, 1024 * 1024, 8 * 1024 * 1024)  # the first exchange; the measured one's least and most


def tournament(world: int) -> list[list[tuple[int, int]]]:
    """Rounds of disjoint pairs in which every rank meets every other once (the circle method;
    with an odd world one rank sits each round out). Disjoint pairs use disjoint links, so a
    round's exchanges do not disturb one another."""
    n = world + (world % 2)
    ranks = list(range(n))
    rounds = []
    for _ in range(n - 1):
        pairs = [(ranks[i], ranks[n - 1 - i]) for i in range(n // 2)]
        rounds.append([(a, b) for a, b in pairs if a < world and b < world])
        ranks = [ranks[0], ranks[-1], *ranks[1:-1]]
    return rounds


def _private_c10d() -> bool:
    try:
        from torch._C._distributed_c10d import _unregister_all_process_groups  # noqa: F401
        from torch.distributed import distributed_c10d as c10d

        world = c10d._world
        for name in ("pg_map", "pg_names", "pg_group_ranks", "pg_backend_config", "pg_to_tag", "tags_to_pg"):
            getattr(world, name)
        return callable(c10d._update_default_pg) and callable(c10d._get_default_group) and hasattr(world, "group_count")
    except (ImportError, AttributeError):
        return False


PRIVATE_C10D = _private_c10d()


def _set_aside_default_group() -> object:
    """Unregister the default process group without shutting it down. This is
    ``destroy_process_group()`` minus the backends' shutdown, the group-name counter included
    (reset to 0, as destroying does, so that every rank — set aside, destroyed or new — names its
    next group alike: the store-based barrier of ``init_process_group`` keys on that name). The
    caller keeps the returned group referenced, so its destructor does not block either; its
    stuck operation ends at gloo's timeout in gloo's own thread, and nobody waits for it."""
    from torch._C._distributed_c10d import _unregister_all_process_groups
    from torch.distributed import distributed_c10d as c10d

    group = c10d._get_default_group()
    world = c10d._world
    c10d._update_default_pg(None)
    for name in (
        "pg_map",
        "pg_names",
        "pg_group_ranks",
        "pg_backend_config",
        "pg_to_tag",
        "tags_to_pg",
        "pg_coalesce_state",
    ):
        registry = getattr(world, name, None)
        if registry is not None:
            registry.clear()
    _unregister_all_process_groups()
    world.group_count = 0
    return group


def _name_the_next_group_alike() -> None:
    """Every rank names the group it is about to form "0" (the store prefix its gloo or NCCL
    rendezvous keys on), whatever this process formed before. Destroying a group resets torch's
    group-name counter, but an ``init_process_group`` that *failed* (a peer that never connected
    within the timeout) has already counted a group it never registered: that rank would look
    for its peers under "1" while a fresh worker posts under "0", and the two would time out
    generation after generation (measured: a job stuck 140 s, 13 plans, until it failed). Only
    called with no group formed: each generation's group is the process's only one."""
    from torch.distributed import distributed_c10d as c10d

    world = getattr(c10d, "_world", None)
    if world is not None and hasattr(world, "group_count") and not dist.is_initialized():
        world.group_count = 0


def _abort_default_group() -> bool:
    """Abort every NCCL communicator of this process and unregister the groups (torch's
    ``_abort_process_group``: also resets the group-name counter, as destroying does). False
    where this torch has no such function or it failed: the caller sets the group aside."""
    from torch.distributed import distributed_c10d as c10d

    abort = getattr(c10d, "_abort_process_group", None)
    if abort is None:
        return False
    try:
        abort()
    except Exception as exc:  # an abort that fails must not hide the re-form that follows
        print(f"worker: aborting the NCCL group failed: {str(exc)[:300]}", file=sys.stderr, flush=True)
        return False
    return True


def _started(*works: dist.Work | None) -> list[dist.Work]:
    assert all(w is not None for w in works)
    return [w for w in works if w is not None]


class ProcessGroup:
    """The default process group of the current generation: gloo (its tensors on the host; a
    GPU's buffer host-staged) or NCCL (on the training device)."""

    def __init__(
        self,
        timeout: datetime.timedelta,
        newer_plan: Callable[[int], bool],
        while_waiting: Callable[[float], None] | None = None,
    ) -> None:
        """``newer_plan(generation)``: whether a plan arrived that this group (formed at
        ``generation``) must be left for; ``while_waiting(seconds)`` is called while an
        all-reduce has been pending that long (every ABANDON_POLL_S)."""
        self.timeout = timeout
        self._newer_plan = newer_plan
        self._while_waiting = while_waiting
        self._set_aside: list[object] = []  # groups abandoned with an all-reduce pending
        self.generation = -1
        self.backend = "gloo"
        self.device = torch.device("cpu")
        if not PRIVATE_C10D:
            print(
                "worker: this torch lacks the c10d registries deepedge uses to abandon a pending "
                "all-reduce; a survivor may wait out the collective timeout",
                file=sys.stderr,
                flush=True,
            )

    def form(
        self,
        store: TCPStore,
        rank: int,
        world: int,
        generation: int,
        comm_nice: int | None,
        since: set[int],
        *,
        backend: str = "gloo",
        device: torch.device | None = None,
    ) -> None:
        """Form the group on ``store``; the threads started since ``since`` (the thread ids
        before the rendezvous: its store's, gloo's) run at ``comm_nice``. ``backend`` "nccl"
        needs ``device`` to be a CUDA device."""
        device = device or torch.device("cpu")
        _name_the_next_group_alike()
        if backend == "nccl":
            # read when the NCCL group is made: abort the communicator on errors, keep the process
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
            torch.cuda.set_device(device)
            dist.init_process_group(
                "nccl", store=store, rank=rank, world_size=world, timeout=self.timeout, device_id=device
            )
        else:
            dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=self.timeout)
        prioritize_threads(comm_nice, thread_ids() - since)
        self.generation, self.backend, self.device = generation, backend, device

    @property
    def comm_device(self) -> torch.device:
        """Where the tensors of this group's collectives must be: the GPU for NCCL, else the host."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_or_abandon(self, flat: torch.Tensor) -> None:
        """All-reduce (SUM) in place; if a newer plan generation arrives while it is pending (a
        peer died silently, or died while this rank waited on a live peer), give up on it and
        raise :class:`NewPlan` at once instead of waiting for the collective timeout. Raises as
        ``dist.all_reduce`` does when the collective fails. A GPU tensor in a gloo group is
        staged through host memory."""
        if flat.device != self.comm_device:
            host = flat.to(self.comm_device)
            self._all_reduce(host)
            flat.copy_(host)
        else:
            self._all_reduce(flat)

    def _all_reduce(self, flat: torch.Tensor) -> None:
        work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
        assert work is not None
        if self.backend == "nccl":
            self._watch_nccl(work, self._while_waiting)
            return
        done = threading.Event()
        work.get_future().add_done_callback(lambda _f: done.set())
        start = time.monotonic()
        while not done.wait(ABANDON_POLL_S):
            self._abandon_if_newer()
            if self._while_waiting is not None:
                self._while_waiting(time.monotonic() - start)
        work.wait()

    def _watch_nccl(self, work: dist.Work, waiting: Callable[[float], None] | None = None) -> None:
        """Poll an NCCL work until its kernels are done; on a newer plan, or past the collective
        timeout (should the watchdog not have ended it), abort the communicator and leave."""
        start = time.monotonic()
        deadline = start + self.timeout.total_seconds() + 5.0
        while not work.is_completed():
            self._abandon_if_newer()
            if waiting is not None:
                waiting(time.monotonic() - start)
            if time.monotonic() > deadline:
                self._abandon_nccl()
                raise RuntimeError(
                    f"NCCL all-reduce of generation {self.generation} not done within "
                    f"{self.timeout.total_seconds():g} s: communicator aborted"
                )
            time.sleep(ABANDON_POLL_S)
        work.wait()

    def _abandon_nccl(self) -> None:
        if not _abort_default_group() and PRIVATE_C10D and dist.is_initialized():
            self._set_aside.append(_set_aside_default_group())

    def wait(self, work: dist.Work) -> None:
        """Wait for a collective of this group, giving it up (NewPlan) for a newer plan."""
        if self.backend == "nccl":
            self._watch_nccl(work)
            return
        done = threading.Event()
        work.get_future().add_done_callback(lambda _f: done.set())
        while not done.wait(ABANDON_POLL_S):
            self._abandon_if_newer()
        work.wait()

    def _abandon_if_newer(self) -> None:
        if self._newer_plan(self.generation):
            if self.backend == "nccl":
                self._abandon_nccl()
            elif PRIVATE_C10D:
                self._set_aside.append(_set_aside_default_group())
            raise NewPlan

    def _exchange(self, peer: int, nbytes: int, tag: int) -> float:
        """Send ``nbytes`` to ``peer`` while receiving as many from it; seconds until received."""
        out = torch.zeros(max(1, nbytes // 4))
        into = torch.empty_like(out)
        start = time.perf_counter()
        works = _started(dist.isend(out, peer, tag=tag), dist.irecv(into, peer, tag=tag))
        received = self._done(works[1])
        took = time.perf_counter() - start
        works[0].wait()
        return took - received

    def _done(self, work: dist.Work) -> float:
        """Wait for ``work``, abandoning it for a newer plan (gloo's point-to-point work has no
        future and says it is completed only once waited for: a thread waits). Returns how long
        after its completion this thread woke (subtracted from the measurement)."""
        done = threading.Event()
        at: list[float] = []
        failed: list[BaseException] = []

        def wait() -> None:
            try:
                work.wait()
            except BaseException as exc:  # a peer died: raised below, in this thread
                failed.append(exc)
            at.append(time.perf_counter())
            done.set()

        threading.Thread(target=wait, name="probe", daemon=True).start()
        while not done.wait(ABANDON_POLL_S):
            self._abandon_if_newer()
        if failed:
            raise failed[0]
        return time.perf_counter() - at[0]

    def probe_links(self, rank: int, world: int) -> tuple[float, float]:
        """(bytes/s, one-way latency in s) of this rank's link, from exchanges with each peer
        (up to PROBE_PEERS, in tournament rounds; everyone takes part in every round). A pair's
        rate is the slower of its two links, so the best pair is this rank's own link unless
        every peer is slower — then it is the fastest peer's, which never changes the slowest
        link of a group that includes this rank, which is what an all-reduce pays. (0, 0)
        alone, and in an NCCL group (its point-to-point work is not host-timed this way: the
        coordinator keeps its link unknown, and its measured all-reduces still correct the
        model). Abandoned (NewPlan) when a newer plan arrives."""
        if self.backend == "nccl":
            return 0.0, 0.0
        best_rate, best_latency = 0.0, float("inf")
        for k, pairs in enumerate(tournament(world)[:PROBE_PEERS]):
            peer = next((b if a == rank else a for a, b in pairs if rank in (a, b)), None)
            if peer is None:
                continue
            tag = 1000 + 8 * k
            first = self._exchange(peer, 8, tag)  # the two meet (the previous round ended apart)
            latency = min(first, self._exchange(peer, 8, tag + 1))
            small = self._exchange(peer, PROBE_BYTES[0], tag + 2)
            # On a slow link the first exchange took long enough to measure it (at 0.5 Mb/s a
            # bigger one would take seconds): no second one. Each side proposes from its own
            # first exchange; both take the larger proposal.
            proposal = 0
            if small < PROBE_TARGET_S:
                proposal = int(min(PROBE_BYTES[2], max(PROBE_BYTES[1], PROBE_BYTES[0] / small * PROBE_TARGET_S)))
            size = self._agree(peer, proposal, tag + 3)
            took, nbytes = (self._exchange(peer, size, tag + 4), size) if size else (small, PROBE_BYTES[0])
            best_rate = max(best_rate, 4 * (nbytes // 4) / max(took, 1e-6))
            best_latency = min(best_latency, latency)
        return best_rate, (best_latency if best_rate else 0.0)

    def _agree(self, peer: int, size: int, tag: int) -> int:
        """The larger of this rank's and ``peer``'s proposed exchange sizes, at most
        PROBE_BYTES[2] (a hostile peer's proposal must not size this rank's buffer)."""
        mine, theirs = torch.tensor([size], dtype=torch.long), torch.zeros(1, dtype=torch.long)
        works = _started(dist.isend(mine, peer, tag=tag), dist.irecv(theirs, peer, tag=tag))
        self._done(works[1])
        works[0].wait()
        return max(size, min(PROBE_BYTES[2], int(theirs.item())))

    def leave(self, failed: bool = False) -> None:
        """Leave the group: destroyed; an NCCL group whose collective ``failed`` is aborted (its
        communicator may wait for a dead peer, and destroying it would wait too)."""
        if not dist.is_initialized():
            return
        if failed and self.backend == "nccl" and _abort_default_group():
            return
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
