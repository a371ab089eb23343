"""Finding which collectors this board supports."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from deepedge.node.collectors._base import Collector, CollectorUnavailable
from deepedge.node.collectors._nvml import NvmlCollector
from deepedge.node.collectors._psutil import PsutilCollector
from deepedge.node.collectors._tegrastats import TegrastatsCollector

__all__ = ["probe_collectors"]

log = structlog.get_logger("deepedge.node")


def probe_collectors(interval_s: float = 1.0, disabled: tuple[str, ...] = ()) -> list[Collector]:
    """Every collector this board supports, minus ``disabled``."""
    factories: list[tuple[str, Callable[[], Collector]]] = [
        ("psutil", PsutilCollector),
        ("nvml", NvmlCollector),
        ("tegrastats", lambda: TegrastatsCollector(interval_s)),
    ]
    found: list[Collector] = []
    for name, factory in factories:
        if name in disabled:
            log.info("collector.disabled", collector=name)
            continue
        try:
            found.append(factory())
        except CollectorUnavailable as exc:
            log.info("collector.skipped", collector=name, reason=str(exc))
        else:
            log.info("collector.enabled", collector=name)
    return found
