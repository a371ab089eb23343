"""Emulated boards with real boundaries: each board gets its own network namespace, a veth pair
to a bridge in this namespace (where the broker listens on the bridge's address), its own IP
address, a link shaped with ``tc`` from its profile, and a cgroup with its CPU quota, CPUs and
memory limit. Processes started with :meth:`EmulatedNetwork.argv` and
:meth:`EmulatedNetwork.preexec` run inside both.

Everything is recorded before it is made (``_registry``) and removed by :meth:`down` — on a
normal exit, on Ctrl-C, and, for a run that was killed, by the next run's :meth:`up`."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psutil

from deepedge.netem._cgroups import BoardCgroup, CgroupLimits, Cgroups, detect_cgroups
from deepedge.netem._cmd import NetemError, ip, why_not_usable
from deepedge.netem._links import LinkProfile, Shaping, shape_device
from deepedge.netem._registry import RunRecord, cleanup_leftovers, teardown

__all__ = ["BoardNet", "BoardSpec", "EmulatedNetwork"]


@dataclass(frozen=True)
class BoardSpec:
    name: str
    link: LinkProfile
    limits: CgroupLimits = field(default_factory=CgroupLimits)


@dataclass
class BoardNet:
    name: str
    netns: str
    address: str  # the board's own IP address, on its end of the veth
    host_if: str  # the bridge's end of its veth
    link: LinkProfile
    shaping: Shaping
    limits: CgroupLimits
    cgroup: BoardCgroup | None = None
    up: bool = True


@dataclass
class EmulatedNetwork:
    specs: Sequence[BoardSpec]
    use_cgroups: bool = True
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    boards: dict[str, BoardNet] = field(default_factory=dict)
    cgroups: Cgroups | None = None
    cgroup_problem: str = ""  # why the boards have no cgroups, if they have none
    gateway: str = ""  # the bridge's address: where the broker listens
    cleaned: list[str] = field(default_factory=list)  # leftovers of earlier runs removed by up()
    record: RunRecord | None = None

    @property
    def bridge(self) -> str:
        return f"debr{self.tag}"

    def _subnet(self) -> ipaddress.IPv4Network:
        """A /24 under 10.201.0.0/16 that no interface here uses."""
        used = ip("-o", "-4", "addr", "show").stdout
        start = int(self.tag[:2], 16)
        for k in range(256):
            net = ipaddress.IPv4Network(f"10.201.{(start + k) % 256}.0/24")
            if f" 10.201.{(start + k) % 256}." not in used:
                return net
        raise NetemError("no free /24 in 10.201.0.0/16 for the emulated boards")

    def up(self) -> EmulatedNetwork:
        why = why_not_usable()
        if why is not None:
            raise NetemError(f"cannot emulate boards with namespaces: {why}")
        if len(self.specs) > 99:
            raise NetemError("at most 99 emulated boards")
        found = detect_cgroups() if self.use_cgroups else NetemError("cgroups not asked for")
        if isinstance(found, Cgroups):
            self.cgroups = found
        else:
            self.cgroup_problem = str(found)
        parents = sorted(set(self.cgroups.parents.values())) if self.cgroups else []
        self.cleaned = cleanup_leftovers(parents)
        me = psutil.Process()
        self.record = RunRecord(self.tag, me.pid, me.create_time())
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        rec = self.record
        assert rec is not None
        net = self._subnet()
        hosts = list(net.hosts())
        self.gateway = str(hosts[0])
        rec.bridge = self.bridge
        rec.save()
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/{net.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i, spec in enumerate(self.specs):
            ns, host_if, peer = f"de{self.tag}-{spec.name}", f"dv{self.tag}{i:02d}", f"dp{self.tag}{i:02d}"
            address = str(hosts[10 + i])
            rec.netns.append(ns)
            rec.links.append(host_if)
            rec.save()
            ip("netns", "add", ns)
            ip("link", "add", host_if, "type", "veth", "peer", "name", peer, "netns", ns)
            ip("link", "set", peer, "name", "eth0", netns=ns)
            ip("addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0", netns=ns)
            ip("link", "set", "eth0", "up", netns=ns)
            ip("link", "set", "lo", "up", netns=ns)
            ip("link", "set", host_if, "master", self.bridge, "up")
            shaping = shape_device("eth0", spec.link, netns=ns)  # what the board sends
            shape_device(host_if, spec.link)  # what it receives
            board = BoardNet(spec.name, ns, address, host_if, spec.link, shaping, spec.limits)
            if self.cgroups is not None:

                def note(path: object, rec: RunRecord = rec) -> None:
                    rec.cgroups.append(str(path))
                    rec.save()

                board.cgroup = self.cgroups.create(self.tag, spec.name, spec.limits, note)
            self.boards[spec.name] = board
        if self.cgroups is not None:
            self.cgroups.weigh_run(self.tag, 100 * len(self.specs))

    def down(self) -> list[str]:
        """Remove everything this run made (processes still in its namespaces and cgroups are
        killed first). What could not be removed, with why ([] when all is gone)."""
        if self.record is None:
            return []
        problems = teardown(self.record)
        for b in self.boards.values():
            b.up = False
        return problems

    def __enter__(self) -> EmulatedNetwork:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ---- running things on a board ------------------------------------------------------------

    def argv(self, board: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run in ``board``'s network namespace."""
        return ["ip", "netns", "exec", self.boards[board].netns, *argv]

    def preexec(self, board: str) -> Callable[[], None]:
        """For ``Popen(preexec_fn=...)``: the child joins ``board``'s cgroup before it execs."""
        group = self.boards[board].cgroup

        def join() -> None:
            if group is not None:
                group.join_self()

        return join

    # ---- the link -------------------------------------------------------------------------------

    def reshape(self, board: str, link: LinkProfile) -> None:
        """Change ``board``'s link (both directions) while it runs."""
        b = self.boards[board]
        b.shaping = shape_device("eth0", link, netns=b.netns)
        shape_device(b.host_if, link)
        b.link = link

    def cut(self, board: str) -> float:
        """The board's cable pulled (``ip link set down`` on the bridge's end): packets vanish,
        nothing is closed. Returns time.time() of the cut."""
        at = time.time()
        ip("link", "set", self.boards[board].host_if, "down")
        self.boards[board].up = False
        return at

    def restore(self, board: str) -> None:
        ip("link", "set", self.boards[board].host_if, "master", self.bridge, "up")
        self.boards[board].up = True

    def describe(self, board: str) -> str:
        b = self.boards[board]
        parts = [b.address, b.link.describe()]
        if b.shaping.missing:
            parts.append(f"{', '.join(b.shaping.missing)} not emulated")
        if b.cgroup is not None:
            parts.append(b.limits.describe())
        return "; ".join(parts)

    def pids(self, board: str) -> set[int]:
        """Processes in the board's namespace or cgroup."""
        out = {int(x) for x in ip("netns", "pids", self.boards[board].netns, check=False).stdout.split() if x.isdigit()}
        group = self.boards[board].cgroup
        if group is not None:
            out |= group.pids()
        with contextlib.suppress(ValueError):
            out.discard(os.getpid())
        return out
