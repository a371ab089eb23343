"""Report LC request latencies to the local deepedge node daemon. Standard library only, so any
LC application can use it (or copy it) cheaply.

    from deepedge.lc_client import LatencyReporter
    rep = LatencyReporter("detector")          # socket: $DEEPEDGE_NODE_LATENCY_SOCKET or default
    with rep.measure():
        run_inference(frame)
    rep.report(12.5)                           # or report a latency in milliseconds yourself
    rep.close()                                # flushes what is still batched

Reports are lines ``b"<app> <ms>\\n"`` batched into non-blocking datagrams on a Unix socket: a
datagram leaves when ``flush_interval_s`` has passed since the last one or the batch nears 4 KiB
(and on ``flush()``/``close()``), so a busy LC app sends a few datagrams a second, not one per
request. If the daemon is not running or is behind, reports are dropped (counted in
``dropped``): an LC app never waits on deepedge.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DEFAULT_SOCKET", "LatencyReporter"]

DEFAULT_SOCKET = "/run/deepedge/latency.sock"
_MAX_BATCH = 4000  # bytes; well under the default Unix datagram limits


class LatencyReporter:
    def __init__(self, app: str, socket_path: str | None = None, flush_interval_s: float = 0.2) -> None:
        if not app or len(app) > 64 or any(c.isspace() for c in app):
            raise ValueError(f"bad app name {app!r}")
        self.app = app
        self.path = socket_path or os.environ.get("DEEPEDGE_NODE_LATENCY_SOCKET") or DEFAULT_SOCKET
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.flush_interval_s = flush_interval_s
        self._batch: list[str] = []
        self._batch_bytes = 0
        self._last_flush = time.monotonic()
        self.sent = 0
        self.dropped = 0

    def report(self, latency_ms: float) -> None:
        line = f"{self.app} {latency_ms:.4f}\n"
        self._batch.append(line)
        self._batch_bytes += len(line)
        if self._batch_bytes >= _MAX_BATCH or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        lines, self._batch, self._batch_bytes = self._batch, [], 0
        self._last_flush = time.monotonic()
        try:
            self._sock.sendto("".join(lines).encode(), self.path)
            self.sent += len(lines)
        except OSError:  # no daemon, or its queue is full: never block the LC app
            self.dropped += len(lines)

    @contextmanager
    def measure(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.report((time.perf_counter() - start) * 1000.0)

    def close(self) -> None:
        self.flush()
        self._sock.close()

    def __enter__(self) -> LatencyReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
