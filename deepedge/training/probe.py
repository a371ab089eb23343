"""What the board's torch can do: ``python -m deepedge.training.probe``, run by the node daemon
once at start with the worker's Python, prints one JSON line and exits 0::

    {"probe": 1, "torch": "2.8.0", "python": "3.10.12", "machine": "aarch64",
     "distributed": true, "gloo": true, "nccl": false, "cuda": true, "cuda_version": "12.6",
     "cudnn": 90300, "device_count": 1, "devices": [{"name": "Orin", "total_memory": 7990000000,
     "capability": [8, 7], "integrated": true, "bf16": true, "fp16": true}],
     "jetson": true, "l4t": "R36.4.3"}

Not every torch wheel for Jetson has ``torch.distributed`` (NVIDIA's 1.12, 1.13 and 2.1 wheels
report ``is_available() == False``) and many lack NCCL: the daemon reports this in its birth
and a board whose torch cannot train distributed is not planned. If torch cannot be imported it
prints ``{"error": ...}`` and exits 2. A CUDA failure (driver mismatch) is reported as
``"cuda": false`` with ``"cuda_error"``: the board can still train on its CPU.

Bounded: no CUDA kernel runs. bf16/fp16 come from the compute capability (bf16 natively from
8.0, Ampere; fp16 from 5.3), not from a trial allocation as ``torch.cuda.is_bf16_supported()``
may make; CUDA itself is initialised only when torch was built with it and sees a device."""

from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "probe"]

VERSION = 1
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


def l4t_release(text: str) -> str | None:
    """``"R36.4.3"`` from /etc/nv_tegra_release's first line (``# R36 (release), REVISION: 4.3, ...``)."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{m.group(1)}.{m.group(2)}" if m else None


def _devices(torch: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        cap = (int(p.major), int(p.minor))
        out.append(
            {
                "name": str(p.name),
                "total_memory": int(p.total_memory),
                "capability": list(cap),
                "integrated": bool(getattr(p, "is_integrated", False)),
                "bf16": cap >= (8, 0),
                "fp16": cap >= (5, 3),
            }
        )
    return out


def probe() -> dict[str, Any]:
    """The probe's answer as a dict; raises ImportError when torch cannot be imported."""
    import torch

    info: dict[str, Any] = {
        "probe": VERSION,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    import torch.distributed as dist  # importable in every build; the rest of its API only if available

    distributed = bool(dist.is_available())
    info["distributed"] = distributed
    info["gloo"] = distributed and bool(dist.is_gloo_available())
    info["nccl"] = distributed and bool(dist.is_nccl_available())
    info["cuda_version"] = torch.version.cuda  # None: a CPU-only build
    info["cuda"], info["device_count"], info["devices"] = False, 0, []
    try:
        if torch.version.cuda is not None and torch.cuda.is_available():
            info["devices"] = _devices(torch)
            info["device_count"] = len(info["devices"])
            info["cuda"] = info["device_count"] > 0
            backends: Any = torch.backends
            info["cudnn"] = backends.cudnn.version()
    except Exception as exc:  # a driver that does not fit the wheel, a device in a bad state
        info["cuda"], info["device_count"], info["devices"] = False, 0, []
        info["cuda_error"] = f"{type(exc).__name__}: {exc}"[:500]
    release = TEGRA_RELEASE.read_text(errors="replace") if TEGRA_RELEASE.is_file() else ""
    info["l4t"] = l4t_release(release)
    info["jetson"] = bool(release) or any(d["integrated"] for d in info["devices"])
    return info


def main() -> int:
    try:
        info = probe()
    except Exception as exc:  # torch missing or broken (ImportError, OSError from a shared library)
        print(json.dumps({"probe": VERSION, "error": f"{type(exc).__name__}: {exc}"[:2000]}), flush=True)
        return 2
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
