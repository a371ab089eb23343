"""Benchmarks (``deepedge bench ...``): each measures against a baseline in the same run and
writes its table where the docs cite it."""

from deepedge.bench._daemon import DaemonBenchResult, run_daemon_bench

__all__ = ["DaemonBenchResult", "run_daemon_bench"]
