"""A latency-critical app for the demo: image-classification inference on a batch of frames at a
fixed period (the demo pins it to its board's CPU), each request's latency reported to the node daemon with
``deepedge.lc_client``. It shares the CPU with the board's training worker, so its latency truly
rises when training runs beside it.

    taskset -c 0 python -m deepedge.demo.lc_app --app detector --socket /tmp/n0.sock
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepedge.demo.lc_app")
    ap.add_argument("--app", required=True)
    ap.add_argument("--socket", required=True, help="the node daemon's latency socket")
    ap.add_argument("--period-ms", type=float, default=50.0, help="one request per period")
    ap.add_argument("--frames", type=int, default=32, help="frames per request")
    ap.add_argument("--nice", type=int, default=-10, help="CPU priority, as LC services usually get (root only)")
    args = ap.parse_args(argv)
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
    period = args.period_ms / 1000.0
    with LatencyReporter(args.app, args.socket) as reporter, torch.inference_mode():
        model(frames)  # warm up outside the measurements
        next_at = time.monotonic()
        while running:
            with reporter.measure():
                model(frames).argmax(1)
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()  # late: do not burst to catch up
    return 0


if __name__ == "__main__":
    sys.exit(main())
