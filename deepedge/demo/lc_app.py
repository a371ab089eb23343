"""A latency-critical app for the demo: image-classification inference on a batch of frames,
each request's latency reported to the node daemon with ``deepedge.lc_client``. The demo pins it
to its board's CPU, so its latency truly rises when training runs beside it.

Its request rate follows, first to last that applies:
- a rate file (``--rate-file``, default ``<socket>.<app>.rate``): one number, requests per second,
  re-read every 0.2 s; written by ``deepedge profile --interference`` on the node and by the
  benchmarks that replay a trace;
- ``--trace``: ``constant:R``, ``step:R1,R2,T`` (R1 until T s, then R2) or ``diurnal:LOW,HIGH,P``
  (a day compressed into P s: LOW at 0, HIGH at P/2, a cosine between);
- ``--period-ms`` (one request per period: 50 ms, 20 requests/s).

    taskset -c 0 python -m deepedge.demo.lc_app --app detector --socket /tmp/n0.sock --trace step:20,40,30
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Trace", "main"]


@dataclass(frozen=True)
class Trace:
    """A request-rate trace: requests per second at t seconds after its start."""

    kind: str  # constant | step | diurnal
    a: float
    b: float = 0.0
    c: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Trace:
        kind, _, rest = spec.partition(":")
        try:
            nums = [float(x) for x in rest.split(",")] if rest else []
        except ValueError:
            raise ValueError(f"trace {spec!r}: numbers expected after the colon") from None
        want = {"constant": 1, "step": 3, "diurnal": 3}.get(kind)
        if want is None or len(nums) != want or not all(math.isfinite(x) and x >= 0 for x in nums):
            raise ValueError(f"trace {spec!r}: constant:R, step:R1,R2,T or diurnal:LOW,HIGH,PERIOD (R > 0)")
        if (kind != "constant" and nums[2] <= 0) or any(x <= 0 for x in nums[: 1 if kind == "constant" else 2]):
            raise ValueError(f"trace {spec!r}: rates and times must be positive")
        return cls(kind, *nums)

    def rate_at(self, t: float) -> float:
        match self.kind:
            case "constant":
                return self.a
            case "step":
                return self.a if t < self.c else self.b
            case _:  # diurnal
                return float(self.a + (self.b - self.a) * (1 - math.cos(2 * math.pi * max(0.0, t) / self.c)) / 2)

    def peak(self) -> float:
        return max(self.a, self.b)


def _read_rate(path: Path) -> float | None:
    try:
        rate = float(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return rate if math.isfinite(rate) and rate > 0 else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepedge.demo.lc_app")
    ap.add_argument("--app", required=True)
    ap.add_argument("--socket", required=True, help="the node daemon's latency socket")
    ap.add_argument("--period-ms", type=float, default=50.0, help="one request per period")
    ap.add_argument("--trace", default=None, help="constant:R | step:R1,R2,T | diurnal:LOW,HIGH,PERIOD")
    ap.add_argument("--rate-file", default=None, help="requests/s to follow (default <socket>.<app>.rate)")
    ap.add_argument("--frames", type=int, default=32, help="frames per request")
    ap.add_argument("--nice", type=int, default=-10, help="CPU priority, as LC services usually get (root only)")
    args = ap.parse_args(argv)
    trace = Trace.parse(args.trace) if args.trace else None
    rate_file = (
        Path(args.rate_file)
        if args.rate_file
        else Path(args.socket).with_name(f"{Path(args.socket).name}.{args.app}.rate")
    )
    try:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    except OSError:
        print(f"lc_app: could not set nice {args.nice} (not root): running at the default priority", flush=True)
    import torch

    from deepedge.lc_client import LatencyReporter
    from deepedge.training._models import SmallCNN

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SmallCNN(10).eval()
    frames = torch.rand(args.frames, 3, 32, 32)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.monotonic()
    checked, from_file = -1.0, None

    def period() -> float:
        nonlocal checked, from_file
        now = time.monotonic()
        if now - checked >= 0.2:
            checked, from_file = now, _read_rate(rate_file)
        if from_file is not None:
            return 1.0 / from_file
        if trace is not None:
            return 1.0 / max(0.1, trace.rate_at(now - started))
        return float(args.period_ms) / 1000.0

    with LatencyReporter(args.app, args.socket) as reporter, torch.inference_mode():
        model(frames)  # warm up outside the measurements
        next_at = time.monotonic()
        while running:
            with reporter.measure():
                model(frames).argmax(1)
            next_at += period()
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()  # late: do not burst to catch up
    return 0


if __name__ == "__main__":
    sys.exit(main())
