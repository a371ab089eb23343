"""LC latency intake: a Unix datagram socket that LC apps report to (``deepedge.lc_client``),
and per-app sliding windows summarised as count, p50, p95, p99 and the app's deadline."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import socket
from collections import deque
from pathlib import Path

import structlog

from deepedge.broker_schemas import ID_PATTERN, AppLatency
from deepedge.clock import Clock
from deepedge.config import ConfigError
from deepedge.transport import DropLog

__all__ = ["LatencyIntake", "LatencyWindows", "percentile"]

log = structlog.get_logger("deepedge.node")

MAX_APPS = 64
MAX_SAMPLES_PER_APP = 200_000
# all apps together: a summary sorts every window once a report (0.04 s for 200,000 here); per app
# alone, a local writer filling 64 apps' windows held the daemon's event loop seconds a report
MAX_SAMPLES = 200_000


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an ascending list."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class LatencyWindows:
    """Latencies of the last ``window_s`` seconds per app. Apps with a deadline are declared
    (config or command); an undeclared app that reports is tracked without a deadline."""

    def __init__(self, window_s: float, clock: Clock, deadlines: dict[str, float] | None = None) -> None:
        self.window_s = window_s
        self._clock = clock
        self.deadlines: dict[str, float] = dict(deadlines or {})
        self._samples: dict[str, deque[tuple[float, float]]] = {app: deque() for app in self.deadlines}
        self._total = 0  # samples held, all apps (at most MAX_SAMPLES)

    def add(self, app: str, latency_ms: float, now: float | None = None) -> bool:
        """Keep one latency; False when it is dropped: a new app past MAX_APPS, or the windows
        full (MAX_SAMPLES) and this app has none of its own to make room with."""
        if app not in self._samples:
            if len(self._samples) >= MAX_APPS:
                return False
            self._samples[app] = deque()
        window = self._samples[app]
        if len(window) >= MAX_SAMPLES_PER_APP or self._total >= MAX_SAMPLES:
            if not window:
                return False
            window.popleft()  # its own oldest: a flood of one app never evicts another's
            self._total -= 1
        window.append((self._clock.monotonic() if now is None else now, latency_ms))
        self._total += 1
        return True

    def set_deadline(self, app: str, deadline_ms: float | None) -> None:
        if deadline_ms is None:
            self.deadlines.pop(app, None)
        else:
            self.deadlines[app] = deadline_ms
            self._samples.setdefault(app, deque())

    def p95_between(self, start: float, end: float) -> dict[str, float]:
        """Each app's p95 over the samples that arrived in [start, end] (monotonic; at most the
        last ``window_s`` seconds are kept); apps without samples there are left out."""
        out = {}
        for app, window in self._samples.items():
            values = sorted(ms for t, ms in window if start <= t <= end)
            if values:
                out[app] = percentile(values, 95)
        return out

    def summary(self, now: float | None = None) -> tuple[AppLatency, ...]:
        now = self._clock.monotonic() if now is None else now
        out = []
        for app, window in self._samples.items():
            while window and window[0][0] < now - self.window_s:
                window.popleft()
                self._total -= 1
            values = sorted(ms for _t, ms in window)
            deadline = self.deadlines.get(app)
            out.append(
                AppLatency(
                    app=app,
                    count=len(values),
                    p50_ms=percentile(values, 50),
                    p95_ms=percentile(values, 95),
                    p99_ms=percentile(values, 99),
                    deadline_ms=deadline,
                    violations=sum(1 for v in values if deadline is not None and v > deadline),
                )
            )
        return tuple(out)


def _held(path: Path) -> bool:
    """Whether a running process listens on the Unix socket ``path``: a datagram connect
    succeeds (or finds a socket of another type); refused means nobody has it open."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:  # EPROTOTYPE: a stream socket someone listens on; EACCES: not ours
        return exc.errno in (errno.EPROTOTYPE, errno.EACCES, errno.EPERM)
    finally:
        probe.close()
    return True


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, intake: LatencyIntake) -> None:
        self._intake = intake

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._intake.feed(data)


class LatencyIntake:
    """Binds the socket (mode 0666, so LC apps of any user can report) and feeds the windows."""

    def __init__(self, path: str, windows: LatencyWindows, drops: DropLog) -> None:
        self.path = Path(path)
        self.windows = windows
        self._drops = drops
        self._transport: asyncio.DatagramTransport | None = None
        self.accepted = 0

    def feed(self, data: bytes) -> None:
        for raw in data[:65536].splitlines():
            parts = raw.split()
            try:
                app = parts[0].decode("ascii")
                value = float(parts[1])
                if len(parts) != 2 or ID_PATTERN.fullmatch(app) is None or not (0 <= value < 1e9):
                    raise ValueError
            except (IndexError, ValueError, UnicodeDecodeError):
                self._drops.drop("latency-socket", f"bad latency report {raw[:80]!r}", str(self.path))
                continue
            if self.windows.add(app, value):
                self.accepted += 1
            else:
                self._drops.drop("latency-socket", f"too many LC apps; {app!r} ignored", str(self.path))

    async def start(self) -> None:
        """Bind the socket. ConfigError (exit 78) if a running process holds it (another daemon
        on this host with the same ``node.latency_socket``); a socket file nobody listens on (a
        daemon that died) is replaced. ``run_node`` calls it before it connects to the broker, so
        a refused daemon never connects."""
        sock = self._bind()
        os.chmod(self.path, 0o666)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport
        log.info("latency.listening", socket=str(self.path))

    def _bind(self) -> socket.socket:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            for _attempt in range(2):  # (bind first: of two daemons starting at once, one binds)
                try:
                    sock.bind(str(self.path))
                    return sock
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                if _held(self.path):
                    raise ConfigError(
                        f"node.latency_socket {self.path} is in use by a running process (another deepedge node "
                        "on this host?): give each daemon its own node.latency_socket"
                    )
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # a stale socket of a daemon that died
            raise ConfigError(f"node.latency_socket {self.path}: taken by another process while starting")
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
