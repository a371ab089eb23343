"""Benchmarks (``deepedge bench ...``): each measures against a baseline in the same run and
writes its table where the docs cite it.

Importing this package imports nothing heavy (PEP 562): the processes a bench starts with
``python -m deepedge.bench._x`` (the daemon bench's bare paho-mqtt baseline, the ingest
publishers) load only their own module. Before, the baseline agent imported torch and cvxpy
through this file and weighed 335 MB instead of 35."""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from deepedge._lazy import lazy_attributes as _lazy_attributes

if _TYPE_CHECKING:
    from deepedge.bench._daemon import DaemonBenchResult, run_daemon_bench
    from deepedge.bench._failover import FailoverResult, failover_markdown, run_failover_bench
    from deepedge.bench._ingest import IngestRow, ingest_markdown, run_ingest_bench
    from deepedge.bench._links import (
        CommRow,
        FailoverRow,
        LinkRow,
        LoadResult,
        links_markdown,
        run_comm_bench,
        run_link_failover,
        run_links_makespan,
        run_load_bench,
    )
    from deepedge.bench._makespan import MakespanRow, makespan_markdown, run_makespan_bench
    from deepedge.bench._planner import PlannerBenchRow, planner_markdown, random_cluster, run_planner_bench

_LAZY = {
    "DaemonBenchResult": "deepedge.bench._daemon",
    "run_daemon_bench": "deepedge.bench._daemon",
    "FailoverResult": "deepedge.bench._failover",
    "failover_markdown": "deepedge.bench._failover",
    "run_failover_bench": "deepedge.bench._failover",
    "IngestRow": "deepedge.bench._ingest",
    "ingest_markdown": "deepedge.bench._ingest",
    "run_ingest_bench": "deepedge.bench._ingest",
    "CommRow": "deepedge.bench._links",
    "FailoverRow": "deepedge.bench._links",
    "LinkRow": "deepedge.bench._links",
    "LoadResult": "deepedge.bench._links",
    "links_markdown": "deepedge.bench._links",
    "run_comm_bench": "deepedge.bench._links",
    "run_link_failover": "deepedge.bench._links",
    "run_links_makespan": "deepedge.bench._links",
    "run_load_bench": "deepedge.bench._links",
    "MakespanRow": "deepedge.bench._makespan",
    "makespan_markdown": "deepedge.bench._makespan",
    "run_makespan_bench": "deepedge.bench._makespan",
    "PlannerBenchRow": "deepedge.bench._planner",
    "planner_markdown": "deepedge.bench._planner",
    "random_cluster": "deepedge.bench._planner",
    "run_planner_bench": "deepedge.bench._planner",
}


__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "CommRow",
    "DaemonBenchResult",
    "FailoverResult",
    "FailoverRow",
    "IngestRow",
    "LinkRow",
    "LoadResult",
    "MakespanRow",
    "PlannerBenchRow",
    "failover_markdown",
    "ingest_markdown",
    "links_markdown",
    "makespan_markdown",
    "planner_markdown",
    "random_cluster",
    "run_comm_bench",
    "run_daemon_bench",
    "run_failover_bench",
    "run_ingest_bench",
    "run_link_failover",
    "run_links_makespan",
    "run_load_bench",
    "run_makespan_bench",
    "run_planner_bench",
]
