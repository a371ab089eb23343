"""Emulated edge boards with real boundaries on one Linux machine (as root): a network
namespace, a veth link to a shared bridge shaped with ``tc``, and a cgroup per board. Used by
``deepedge demo``, ``deepedge bench makespan`` and the integration tests; see docs/demo.md."""

from deepedge.netem._cgroups import BoardCgroup, CgroupLimits, Cgroups, detect_cgroups, kill_and_remove
from deepedge.netem._cmd import NetemError, has_qdisc, netns_usable, why_not_usable
from deepedge.netem._links import LinkProfile, Shaping, qdisc_args, shape_device
from deepedge.netem._network import BoardNet, BoardSpec, EmulatedNetwork
from deepedge.netem._registry import STATE_DIR, RunRecord, cleanup_leftovers, teardown

__all__ = [
    "STATE_DIR",
    "BoardCgroup",
    "BoardNet",
    "BoardSpec",
    "CgroupLimits",
    "Cgroups",
    "EmulatedNetwork",
    "LinkProfile",
    "NetemError",
    "RunRecord",
    "Shaping",
    "cleanup_leftovers",
    "detect_cgroups",
    "has_qdisc",
    "kill_and_remove",
    "netns_usable",
    "qdisc_args",
    "shape_device",
    "teardown",
    "why_not_usable",
]
