"""``deepedge demo`` and the emulated cluster it (and ``deepedge bench makespan``) runs on."""

from deepedge.demo._boards import PROFILES, BoardProfile, cluster_profiles
from deepedge.demo._cluster import DemoCluster
from deepedge.demo._report import DemoReport, render_report
from deepedge.demo._run import DEMO_EPOCHS, DEMO_MODELS, DemoOptions, run_cluster_job, run_demo

__all__ = [
    "DEMO_EPOCHS",
    "DEMO_MODELS",
    "PROFILES",
    "BoardProfile",
    "DemoCluster",
    "DemoOptions",
    "DemoReport",
    "cluster_profiles",
    "render_report",
    "run_cluster_job",
    "run_demo",
]
