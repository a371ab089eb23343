"""Running ``ip`` and ``tc`` (iproute2), and whether this machine lets us: root, ``ip netns``,
and which queueing disciplines its kernel has."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import uuid

from deepedge.errors import DeepEdgeError

__all__ = ["NetemError", "has_qdisc", "ip", "netns_usable", "run", "tc", "why_not_usable"]


class NetemError(DeepEdgeError):
    """An ``ip``/``tc`` command failed, or the machine cannot emulate boards."""


def run(argv: list[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetemError(f"{' '.join(argv)}: {exc}") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise NetemError(f"{' '.join(argv)}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["ip", *(["-n", netns] if netns else []), *args], check=check)


def tc(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["tc", *(["-n", netns] if netns else []), *args], check=check)


def why_not_usable() -> str | None:
    """None when boards can be emulated with namespaces here; else why not, in words."""
    if os.geteuid() != 0:
        return "not root (network namespaces, veth links, tc and cgroups need root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2)"
    return None if netns_usable() else "ip netns does not work here (a container without CAP_SYS_ADMIN?)"


@functools.cache
def netns_usable() -> bool:
    probe = f"deprobe-{uuid.uuid4().hex[:6]}"
    try:
        ip("netns", "add", probe)
    except NetemError:
        return False
    ip("netns", "del", probe, check=False)
    return True


@functools.cache
def has_qdisc(kind: str) -> bool:
    """Whether the kernel has queueing discipline ``kind`` (e.g. netem is often a module, and
    some kernels, such as Firecracker's, are built without it): tried on a dummy link in a
    throw-away namespace."""
    ns = f"deqd-{uuid.uuid4().hex[:6]}"
    try:
        ip("netns", "add", ns)
    except NetemError:
        return False
    try:
        ip("link", "add", "q0", "type", "veth", "peer", "name", "q1", netns=ns)
        args = {"netem": ["delay", "1ms"], "tbf": ["rate", "1mbit", "burst", "32kb", "latency", "50ms"]}.get(kind, [])
        return tc("qdisc", "add", "dev", "q0", "root", kind, *args, netns=ns, check=False).returncode == 0
    except NetemError:
        return False
    finally:
        ip("netns", "del", ns, check=False)
