"""Where the ranks of one plan generation meet: rank 0's TCPStore, listening only on rank 0's
own training address (its board's ``node.training_address``), on the port the plan names. Every
rank counts itself in and waits until all are there, looking for a newer plan between short
tries, so a peer that died before it arrived does not hold the others up until the collective
timeout (the generation is abandoned instead: :class:`NewPlan`). Ranks wait for one another up
to ARRIVAL_S, longer than the collective timeout: a worker that starts at a low cap loads its
data paced (the slow start) and may arrive 20 s or more after its peers; a peer that died or
whose worker failed brings a newer plan, which ends the wait at once.

Like torch elastic's ``RendezvousHandler``: ``join`` one generation, get a store, rank and world
size, abandonable. The store carries only the rendezvous counter and gloo's own connection
details; nothing read from it is ever unpickled.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Callable

import psutil
from torch._C._distributed_c10d import TCPStore

__all__ = ["ABANDON_POLL_S", "ARRIVAL_S", "NewPlan", "Rendezvous", "interface_of"]

ARRIVAL_S = 60.0  # how long the ranks of a generation wait for one another (a newer plan ends it)
ABANDON_POLL_S = 0.05  # how often a pending rendezvous or all-reduce looks for a newer plan
_TRY = datetime.timedelta(seconds=1)  # one try to reach rank 0's store
_ARRIVED = "deepedge/arrived"  # ranks of this generation at the rendezvous


class NewPlan(Exception):
    """A later plan generation arrived: leave this one at once."""


def interface_of(address: str) -> str | None:
    """The name of the network interface that holds ``address`` (None if none does)."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)):
            return str(name)
    return None


def _listening_socket(address: str, port: int) -> int:
    """A socket bound to ``address:port`` and listening; its descriptor, handed to the store
    (which then owns and closes it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock.detach()


class Rendezvous:
    def __init__(
        self,
        bind_address: str,
        timeout: datetime.timedelta,
        newer_plan: Callable[[int], bool],
        arrival: datetime.timedelta | None = None,
    ) -> None:
        """``timeout``: the store's, for every operation once all ranks are there (gloo's own
        exchange of addresses included); ``arrival``: how long to wait for every rank to arrive
        (``timeout`` if None)."""
        self.bind_address = bind_address
        self.timeout = timeout
        self.arrival = arrival or timeout
        self._newer_plan = newer_plan
        iface = interface_of(bind_address)
        if iface is not None:  # gloo binds its sockets to this interface's address, not to all
            os.environ["GLOO_SOCKET_IFNAME"] = iface

    def _store(self, host: str, port: int, rank: int, world: int) -> TCPStore:
        if rank != 0:
            return TCPStore(host, port, world, is_master=False, timeout=_TRY, wait_for_workers=False)
        # The store owns the descriptor from here, also when it fails to start (closing it here
        # could close a number another thread has reused).
        return TCPStore(
            self.bind_address,
            port,
            world,
            is_master=True,
            timeout=_TRY,
            wait_for_workers=False,
            master_listen_fd=_listening_socket(self.bind_address, port),
            use_libuv=True,
        )

    def join(self, host: str, port: int, rank: int, world: int, generation: int) -> TCPStore:
        """The store of this generation once every rank is there. Raises NewPlan when a newer
        generation arrives first; RuntimeError when not every rank arrived within ``arrival``."""
        deadline = time.monotonic() + self.arrival.total_seconds()
        store: TCPStore | None = None
        arrived = 0
        last_error = ""
        while True:
            if self._newer_plan(generation):
                raise NewPlan
            try:
                if store is None:
                    store = self._store(host, port, rank, world)
                    store.add(_ARRIVED, 1)
                arrived = store.add(_ARRIVED, 0)
            except (RuntimeError, OSError) as exc:  # rank 0's store is not up yet, a try timed out
                last_error = str(exc)[:200]
            if store is not None and arrived >= world:
                store.set_timeout(self.timeout)
                return store
            if time.monotonic() > deadline:
                where = f"{self.bind_address}:{port} (this board)" if rank == 0 else f"{host}:{port}"
                raise RuntimeError(
                    f"rendezvous of generation {generation} at {where}: {arrived} of {world} ranks arrived "
                    f"within {self.arrival.total_seconds():g} s" + (f" ({last_error})" if last_error else "")
                )
            time.sleep(ABANDON_POLL_S)
