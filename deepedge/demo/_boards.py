"""The demo's emulated boards. A board's speed is emulated by pacing its worker
(``node.emulate_sample_ms``: each sample takes at least base/speed), its memory by what its
daemon reports (``node.emulate_memory_mb``), its CPU by pinning its worker and its LC app to one
core (``node.cpu_affinity``). Namespaced (as root, ``deepedge.netem``) each board also has its
own network namespace and address, its link shaped to ``link`` and a cgroup holding its daemon,
worker and LC app to ``cpu_quota`` CPUs on its core and ``memory_mb``. Speeds and links are
relative, loosely after Jetson boards and their usual network ports; they are not measurements."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from deepedge.netem import BoardSpec, CgroupLimits, LinkProfile

__all__ = ["PROFILES", "BoardProfile", "cluster_profiles", "with_link"]

GBIT, MBIT = 1e9, 1e6


@dataclass(frozen=True)
class BoardProfile:
    node: str
    kind: str  # what it stands for, in words
    speed: float  # relative training throughput
    memory_mb: int
    lc_app: str | None = None  # the LC app this board runs, if any
    cpu: int = 0
    link: LinkProfile = field(default_factory=lambda: LinkProfile(GBIT))  # its network port (namespaced only)
    cpu_quota: float = 1.0  # CPUs its cgroup may use (namespaced boards only)

    def sample_ms(self, base_ms: float) -> float:
        return base_ms / self.speed

    def spec(self) -> BoardSpec:
        """What ``deepedge.netem`` makes of it."""
        # A board with an LC app weighs 8 others on a shared CPU: on a real board no other board's
        # training competes with its app (the emulation puts two boards on each vCPU).
        limits = CgroupLimits(
            cpu_quota=self.cpu_quota,
            cpus=(self.cpu,),
            memory_bytes=self.memory_mb * 2**20,
            cpu_weight=800 if self.lc_app else 100,
        )
        return BoardSpec(self.node, self.link, limits)


PROFILES = (
    BoardProfile("orin-nx", "Orin NX class", 1.0, 8192, "detector", link=LinkProfile(GBIT, 0.2), cpu_quota=0.8),
    BoardProfile("xavier-nx", "Xavier NX class", 0.6, 8192, "tracker", link=LinkProfile(GBIT, 0.2), cpu_quota=0.6),
    BoardProfile("tx2", "TX2 class", 0.4, 4096, link=LinkProfile(GBIT, 0.5), cpu_quota=0.5),
    BoardProfile("nano", "Nano class", 0.25, 2048, link=LinkProfile(50 * MBIT, 3, 1), cpu_quota=0.4),
)


def cluster_profiles(nodes: int, with_lc: bool = True) -> list[BoardProfile]:
    """``nodes`` boards: the four above, then more of them with numbered names; board i on CPU
    i mod (this machine's CPUs), so each LC app shares its CPU with its own board's worker (and,
    with more boards than CPUs, with another board's worker: workers run at nice 10, LC apps at 0)."""
    cpus = sorted(os.sched_getaffinity(0))
    out = []
    for i in range(nodes):
        p = PROFILES[i % len(PROFILES)]
        name = p.node if i < len(PROFILES) else f"{p.node}-{i // len(PROFILES) + 1}"
        app = p.lc_app if with_lc and i < 2 else None
        out.append(replace(p, node=name, lc_app=app, cpu=cpus[i % len(cpus)]))
    return out


def with_link(boards: list[BoardProfile], node: str, link: LinkProfile) -> list[BoardProfile]:
    """The same boards with ``node``'s link replaced."""
    return [replace(b, link=link) if b.node == node else b for b in boards]
