"""A board's cgroup: its CPU quota, its CPUs and its memory limit, holding its daemon, worker
and LC apps (every process started in it, and their children).

cgroup v2 (one hierarchy: ``cpu.max``, ``cpuset.cpus``, ``memory.max``) and v1 (a hierarchy
per controller: ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, ``cpuset.cpus``/``cpuset.mems``,
``memory.limit_in_bytes``) are both supported. A run's board cgroups live in one folder,
``deepedge-<tag>``: under this process's own cgroup in v1 (which allows it), beside it in v2
(whose "no internal processes" rule forbids children of a cgroup that holds processes; at the
root when this process is there). Either way the boards stay inside whatever limits this
process itself runs under."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deepedge.netem._cmd import NetemError

__all__ = ["BoardCgroup", "CgroupLimits", "Cgroups", "detect_cgroups", "kill_and_remove"]

CONTROLLERS = ("cpu", "cpuset", "memory")


@dataclass(frozen=True)
class CgroupLimits:
    cpu_quota: float | None = None  # CPUs the board may use (0.5: half of one), None: no quota
    cpus: tuple[int, ...] = ()  # CPUs it may run on (empty: any)
    memory_bytes: int | None = None
    period_us: int = 20_000  # CFS period: a quota is spent in slices of this (the default 100 ms is coarse)
    # Its weight against the other boards when they share a CPU (v2 cpu.weight; v1 cpu.shares =
    # weight x 1024 / 100). A real board's LC app shares its CPUs with no other board's work.
    cpu_weight: int | None = None

    def describe(self) -> str:
        parts = []
        if self.cpu_quota is not None:
            parts.append(f"{self.cpu_quota:g} CPU")
        if self.cpus:
            parts.append("CPU " + ",".join(str(c) for c in self.cpus))
        if self.memory_bytes is not None:
            parts.append(f"{self.memory_bytes / 2**30:g} GiB")
        return ", ".join(parts) or "no limits"


@dataclass
class BoardCgroup:
    """One board's cgroup: one folder (v2) or one per controller hierarchy (v1)."""

    name: str
    dirs: tuple[Path, ...]
    version: int

    def join_self(self) -> None:
        """Move the calling process into this cgroup (for ``preexec_fn``: the child joins
        before it execs, so everything it starts is inside too)."""
        pid = str(os.getpid())
        for d in self.dirs:
            (d / "cgroup.procs").write_text(pid)

    def join(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        return _pids(self.dirs)


@dataclass
class Cgroups:
    """How this machine's cgroups are mounted, and where this process is in them.

    ``parents``: controller -> the folder a run's ``deepedge-<tag>`` goes in (v1: one per
    hierarchy, v2: the same folder for every controller)."""

    version: int
    parents: dict[str, Path]
    controllers: tuple[str, ...]
    created: list[Path] = field(default_factory=list)  # folders made, in order

    def describe(self) -> str:
        return f"cgroup v{self.version} ({', '.join(self.controllers)})"

    def run_dirs(self, tag: str) -> list[Path]:
        return sorted({p / f"deepedge-{tag}" for p in self.parents.values()})

    def create(self, tag: str, board: str, limits: CgroupLimits, on_create: Callable[[Path], None]) -> BoardCgroup:
        """Make the board's cgroup under the run's folder and set its limits. ``on_create`` is
        called with each folder before it is made (the run's record of what to remove)."""
        dirs = []
        for run in self.run_dirs(tag):
            if not run.exists():
                on_create(run)
                run.mkdir()
                self.created.append(run)
                if self.version == 1 and (run.parent / "cpuset.cpus").exists():
                    _copy(run.parent, run, "cpuset.cpus", "cpuset.mems")
                if self.version == 2:
                    wanted = " ".join(f"+{c}" for c in self.controllers)
                    (run / "cgroup.subtree_control").write_text(wanted)
            leaf = run / board
            on_create(leaf)
            leaf.mkdir(exist_ok=True)
            self.created.append(leaf)
            dirs.append(leaf)
        group = BoardCgroup(board, tuple(dirs), self.version)
        _limit(group, limits)
        return group

    def weigh_run(self, tag: str, weight: int) -> None:
        """The run's folder's CPU weight against everything else on the machine (its boards
        share it): as many default weights as it has boards, as their processes had outside."""
        for run in self.run_dirs(tag):
            if self.version == 2 and (run / "cpu.weight").exists():
                (run / "cpu.weight").write_text(str(min(10_000, max(1, weight))))
            elif self.version == 1 and (run / "cpu.shares").exists():
                (run / "cpu.shares").write_text(str(max(2, weight * 1024 // 100)))


def _copy(src: Path, dst: Path, *names: str) -> None:
    for n in names:
        (dst / n).write_text((src / n).read_text().strip() or "\n")


def _limit(group: BoardCgroup, limits: CgroupLimits) -> None:
    for d in group.dirs:
        has = {p.name for p in d.iterdir()} if d.exists() else set()

        def put(name: str, value: str, d: Path = d, has: set[str] = has) -> None:
            if name in has or not has:  # (a fake tree in tests has no control files yet)
                (d / name).write_text(value)

        if group.version == 2:
            if limits.cpu_weight is not None:
                put("cpu.weight", str(min(10_000, max(1, limits.cpu_weight))))
            if limits.cpu_quota is not None:
                put("cpu.max", f"{max(1000, int(limits.cpu_quota * limits.period_us))} {limits.period_us}")
            if limits.cpus:
                put("cpuset.cpus", ",".join(str(c) for c in limits.cpus))
            if limits.memory_bytes is not None:
                put("memory.max", str(limits.memory_bytes))
                put("memory.swap.max", "0")
            continue
        if "cpuset.cpus" in has:
            put("cpuset.cpus", ",".join(str(c) for c in limits.cpus) if limits.cpus else _read(d.parent, "cpuset.cpus"))
            put("cpuset.mems", _read(d.parent, "cpuset.mems"))
        if "cpu.shares" in has and limits.cpu_weight is not None:
            put("cpu.shares", str(max(2, limits.cpu_weight * 1024 // 100)))
        if "cpu.cfs_quota_us" in has and limits.cpu_quota is not None:
            put("cpu.cfs_period_us", str(limits.period_us))
            put("cpu.cfs_quota_us", str(max(1000, int(limits.cpu_quota * limits.period_us))))
        if "memory.limit_in_bytes" in has and limits.memory_bytes is not None:
            put("memory.limit_in_bytes", str(limits.memory_bytes))


def _read(d: Path, name: str) -> str:
    try:
        return (d / name).read_text().strip()
    except OSError:
        return ""


def _pids(dirs: tuple[Path, ...] | list[Path]) -> set[int]:
    out: set[int] = set()
    for d in dirs:
        for sub in [d, *(p for p in d.rglob("*") if p.is_dir())] if d.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                out |= {int(x) for x in (sub / "cgroup.procs").read_text().split()}
    return out


def kill_and_remove(dirs: list[Path], timeout_s: float = 10.0) -> list[str]:
    """SIGKILL every process in ``dirs`` (and below), then remove them, deepest first. Returns
    what could not be removed (with why)."""
    deadline = time.monotonic() + timeout_s
    while (pids := _pids(dirs)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    left = []
    everything = {p for d in dirs if d.is_dir() for p in [d, *d.rglob("*")] if p.is_dir()}
    for d in sorted(everything, key=lambda p: -len(p.parts)):
        for _ in range(100):  # a killed task leaves its cgroup a moment after it is reaped
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    left.append(f"{d}: {exc.strerror}")
                    break
                time.sleep(0.05)
    return left


def _mounts(mounts: str) -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, options) of every cgroup mount in /proc/self/mounts' text."""
    out = []
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            out.append((parts[1], parts[2], set(parts[3].split(","))))
    return out


def detect_cgroups(mounts: str | None = None, self_cgroup: str | None = None) -> Cgroups | NetemError:
    """How to make board cgroups here (v2 preferred when it has the cpu and memory
    controllers); a NetemError saying why not otherwise. The arguments (the texts of
    /proc/self/mounts and /proc/self/cgroup) are for tests."""
    try:
        mounts = mounts if mounts is not None else Path("/proc/self/mounts").read_text()
        self_cgroup = self_cgroup if self_cgroup is not None else Path("/proc/self/cgroup").read_text()
    except OSError as exc:
        return NetemError(f"cannot read the cgroup mounts: {exc}")
    own: dict[str, str] = {}  # controller ("" for v2) -> this process's path
    for line in self_cgroup.splitlines():
        _hid, ctrls, path = [*line.split(":", 2), "", ""][:3]
        for c in ctrls.split(",") if ctrls else [""]:
            own[c] = path
    found = _mounts(mounts)
    for point, kind, _opts in found:
        if kind != "cgroup2" or "" not in own:
            continue
        mine = Path(point) / own[""].lstrip("/")
        parent = mine if own[""] in ("", "/") else mine.parent
        available = set(_read(parent, "cgroup.controllers").split())
        if {"cpu", "memory"} <= available:
            v2 = tuple(c for c in CONTROLLERS if c in available)
            enabled = set(_read(parent, "cgroup.subtree_control").split())
            if not set(v2) <= enabled:
                try:
                    (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in v2))
                except OSError as exc:
                    return NetemError(f"cgroup v2 at {parent}: cannot enable {', '.join(v2)}: {exc.strerror}")
            return Cgroups(2, dict.fromkeys(v2, parent), v2)
    parents: dict[str, Path] = {}
    for point, kind, opts in found:
        if kind != "cgroup":
            continue
        for c in CONTROLLERS:
            if c in opts and c not in parents and c in own:
                parents[c] = Path(point) / own[c].lstrip("/")
    if {"cpu", "memory"} <= set(parents):
        return Cgroups(1, parents, tuple(c for c in CONTROLLERS if c in parents))
    return NetemError("no cgroup hierarchy with the cpu and memory controllers is mounted")
