"""Benchmarks (``deepedge bench ...``): each measures against a baseline in the same run and
writes its table where the docs cite it."""

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
