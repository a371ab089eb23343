"""Who this board is: the birth message (device model, CPU, memory, accelerators, OS, JetPack,
software versions, a session id that changes on every start)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import socket
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil

from deepedge.broker_schemas import Accelerator, NodeBirth
from deepedge.config import BrokerConfig

__all__ = ["default_node_id", "jetpack_release", "make_birth", "new_session", "training_address"]


def default_node_id() -> str:
    """The host name, with characters outside [A-Za-z0-9_.-] replaced by '-'."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name or "node"


def new_session() -> str:
    return uuid.uuid4().hex[:16]


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").strip("\x00 \n")
    except OSError:
        return ""


def _device_model() -> str:
    return _read("/proc/device-tree/model") or _read("/sys/class/dmi/id/product_name") or platform.machine()


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model"):
            return value.strip()
    return platform.processor()


def _os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.platform()


def jetpack_release(nv_tegra_release: str) -> str | None:
    """L4T release from /etc/nv_tegra_release, e.g. '# R35 (release), REVISION: 4.1, ...' -> 'L4T R35.4.1'."""
    m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", nv_tegra_release)
    return f"L4T R{m.group(1)}.{m.group(2)}" if m else None


def _software() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("deepedge", "torch", "aiomqtt", "cvxpy"):  # metadata only: the daemon never imports torch
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def make_birth(node: str, session: str, accelerators: list[Accelerator], drained: bool = False) -> NodeBirth:
    jetpack = jetpack_release(_read("/etc/nv_tegra_release"))
    accs = list(accelerators)
    if jetpack and not any(a.kind == "jetson" for a in accs):
        accs.append(Accelerator(kind="jetson", name=_device_model()[:256]))
    return NodeBirth(
        node=node,
        session=session,
        ts=time.time(),
        hostname=socket.gethostname()[:256],
        device_model=_device_model()[:256],
        cpu_model=_cpu_model()[:256],
        cpu_cores=os.cpu_count() or 0,
        memory_bytes=int(psutil.virtual_memory().total),
        accelerators=tuple(accs),
        os=_os_name()[:256],
        jetpack=jetpack,
        software={k: v[:256] for k, v in _software().items()},
        drained=drained,
    )


def training_address(broker: BrokerConfig) -> str:
    """The address this board uses to reach the broker (the default ``node.training_address``):
    the source address the kernel picks for a datagram socket connected to the broker (nothing
    is sent). 127.0.0.1 when that cannot be found out (no route, name not resolvable)."""
    try:
        infos = socket.getaddrinfo(broker.host, broker.port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return str(s.getsockname()[0])
    except (OSError, IndexError):
        return "127.0.0.1"
