"""Pluggable telemetry collectors: psutil always; NVML when an NVIDIA GPU is present; tegrastats
on Jetson boards. A collector that is not available is skipped with one log line."""

from deepedge.node.collectors._base import Collector, CollectorUnavailable, TelemetryDraft
from deepedge.node.collectors._nvml import NvmlCollector
from deepedge.node.collectors._probe import probe_collectors
from deepedge.node.collectors._psutil import PsutilCollector
from deepedge.node.collectors._tegrastats import TegraSample, TegrastatsCollector, parse_tegrastats

__all__ = [
    "Collector",
    "CollectorUnavailable",
    "NvmlCollector",
    "PsutilCollector",
    "TegraSample",
    "TegrastatsCollector",
    "TelemetryDraft",
    "parse_tegrastats",
    "probe_collectors",
]
