"""Report LC request latencies to the local deepedge node daemon. Standard library only, so any
LC application can use it (or copy it) cheaply.

    from deepedge.lc_client import LatencyReporter
    rep = LatencyReporter("detector")          # socket: $DEEPEDGE_NODE_LATENCY_SOCKET or default
    with rep.measure():
        run_inference(frame)
    rep.report(12.5)                           # or report a latency in milliseconds yourself

Each report is one non-blocking datagram ``b"<app> <ms>\\n"`` on a Unix socket; several lines may
share a datagram. If the daemon is not running, reports are dropped (counted in ``dropped``):
an LC app never waits on deepedge.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DEFAULT_SOCKET", "LatencyReporter"]

DEFAULT_SOCKET = "/run/deepedge/latency.sock"


class LatencyReporter:
    def __init__(self, app: str, socket_path: str | None = None) -> None:
        if not app or len(app) > 64 or any(c.isspace() for c in app):
            raise ValueError(f"bad app name {app!r}")
        self.app = app
        self.path = socket_path or os.environ.get("DEEPEDGE_NODE_LATENCY_SOCKET") or DEFAULT_SOCKET
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.sent = 0
        self.dropped = 0

    def report(self, latency_ms: float) -> None:
        try:
            self._sock.sendto(f"{self.app} {latency_ms:.4f}\n".encode(), self.path)
            self.sent += 1
        except OSError:  # no daemon, or its buffer is full: never block the LC app
            self.dropped += 1

    @contextmanager
    def measure(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.report((time.perf_counter() - start) * 1000.0)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> LatencyReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
