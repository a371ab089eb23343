"""The demo's emulated boards. Everything runs on this machine; a board's speed is emulated by
pacing its worker (``node.emulate_sample_ms``: each sample takes at least base/speed), its memory
by what its daemon reports (``node.emulate_memory_mb``), and its CPU by pinning its worker and its
LC app to one core (``node.cpu_affinity``). Speeds are relative, loosely after Jetson boards;
they are not measurements."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["PROFILES", "BoardProfile", "cluster_profiles"]


@dataclass(frozen=True)
class BoardProfile:
    node: str
    kind: str  # what it stands for, in words
    speed: float  # relative training throughput
    memory_mb: int
    lc_app: str | None = None  # the LC app this board runs, if any
    cpu: int = 0

    def sample_ms(self, base_ms: float) -> float:
        return base_ms / self.speed


PROFILES = (
    BoardProfile("orin-nx", "Orin NX class", 1.0, 8192, "detector"),
    BoardProfile("xavier-nx", "Xavier NX class", 0.6, 8192, "tracker"),
    BoardProfile("tx2", "TX2 class", 0.4, 4096),
    BoardProfile("nano", "Nano class", 0.25, 2048),
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
        out.append(BoardProfile(name, p.kind, p.speed, p.memory_mb, app, cpus[i % len(cpus)]))
    return out
