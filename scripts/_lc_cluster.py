"""The experiments' common setup: the demo's two LC boards on this machine, their apps at a
fixed request rate, and every latency report they publish collected as it arrives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from deepedge.broker_schemas import LatencyReport, Topics
from deepedge.demo._boards import BoardProfile, cluster_profiles
from deepedge.demo._cluster import DemoCluster
from deepedge.demo._run import _rate_files
from deepedge.profiling._runner import write_rate
from deepedge.transport import MqttTransport, Received

Reports = list[tuple[float, str, float]]  # (ts, app, p95 ms) of every latency report


def lc_boards() -> list[BoardProfile]:
    return cluster_profiles(2, with_lc=True)


@contextlib.asynccontextmanager
async def lc_cluster(
    root: Path, boards: list[BoardProfile], window_s: float, rate: float
) -> AsyncIterator[tuple[DemoCluster, MqttTransport, Reports]]:
    """The cluster of ``boards`` (workdir ``root``, report window ``window_s``), its LC apps
    started at ``rate`` req/s, an operator's connection, and the reports so far (a list that
    grows). The nodes take seconds to come online and the apps' windows to fill: wait first."""
    reports: Reports = []
    with DemoCluster(root, boards, boundaries="shared", latency_window_s=window_s) as cluster:
        topics = Topics(cluster.cluster)
        async with MqttTransport(cluster.operator_config()) as t:
            sub = await t.subscribe(topics.all_nodes(), maxsize=100_000)

            async def pump() -> None:
                async for item in sub:
                    if isinstance(item, Received) and isinstance(item.message, LatencyReport):
                        for a in item.message.apps:
                            reports.append((item.message.ts, a.app, a.p95_ms))

            pumping = asyncio.create_task(pump())
            cluster.start_lc_apps()
            for f in _rate_files(cluster):
                write_rate(f, rate)
            try:
                yield cluster, t, reports
            finally:
                pumping.cancel()
