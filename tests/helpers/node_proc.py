"""Start a real ``deepedge node`` subprocess for integration tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, str(ROOT / "tests" / "helpers" / "stand_in_worker.py")]
PREFLIGHT = [sys.executable, str(ROOT / "tests" / "helpers" / "stand_in_preflight.py")]


@dataclass
class NodeProc:
    node: str
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def log_events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_node(
    tmp: Path,
    broker_url: str,
    cluster: str,
    node: str,
    *,
    interval: float = 0.2,
    lc_apps: dict[str, float] | None = None,
    env: dict[str, str] | None = None,
    worker: list[str] | None = None,
    latency_window_s: float = 30,
    node_extra: str = "",
    prefix: list[str] | None = None,
    stand_in_preflight: bool = False,
) -> NodeProc:
    """``node_extra``: more TOML lines for the [node] section; ``prefix``: a command it runs
    under (e.g. ``ip netns exec NS``); ``stand_in_preflight``: answer pre-flights with
    tests/helpers/stand_in_preflight.py (for jobs of the stand-in worker's ``test:*`` models)."""
    sock = tmp / f"{node}.sock"
    cfg = tmp / f"{node}.toml"
    apps = "".join(f'\n[[node.lc_apps]]\nname = "{a}"\ndeadline_ms = {d}\n' for a, d in (lc_apps or {}).items())
    cfg.write_text(
        f'[cluster]\nname = "{cluster}"\n[broker]\nurl = "{broker_url}"\nkeepalive_s = 5\n'
        f'[log]\nlevel = "debug"\nformat = "json"\n'
        f'[node]\nid = "{node}"\ntelemetry_interval_s = {interval}\nheartbeat_interval_s = {interval}\n'
        f'latency_window_s = {latency_window_s}\nlatency_socket = "{sock}"\n'
        f'profile_path = "{tmp / node}-profile.json"\n'
        f'preflight_cache_path = "{tmp / node}-preflight-cache.json"\n'
        f"worker_command = {json.dumps(WORKER if worker is None else worker)}\n"
        + (f"preflight_command = {json.dumps(PREFLIGHT)}\n" if stand_in_preflight else "")
        + f"{node_extra}\n"
        f'[training]\nmodel_modules = ["test"]\ndata_roots = ["{tmp}"]\n'
        f'output_root = "{tmp}"\ndata_cache_dir = "{tmp / node}-data-cache"\n{apps}'
    )
    log = tmp / f"{node}.log"
    return NodeProc(node, _spawn(cfg, "node", log, env, prefix), sock, log)


def _spawn(
    cfg: Path, command: str, log: Path, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """``deepedge --config CFG COMMAND`` with its output appended to ``log`` and no inherited
    DEEPEDGE_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEDGE_")}
    exe = str(Path(sys.executable).parent / "deepedge")
    with log.open("ab") as fh:
        return subprocess.Popen(
            [*(prefix or []), exe, "--config", str(cfg), command],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        )


def job_args(job: str, tmp: Path, **kw: Any) -> dict[str, Any]:
    """A submit request for the stand-in worker's ``test:run`` model; ``kw`` overrides."""
    args = {
        "job": job,
        "model": "test:run",
        "dataset": str(tmp / "data"),
        "output": str(tmp / "out"),
        "epochs": 1,
        "global_batch": 32,
        "learning_rate": 0.1,
        "dataset_size": 3200,
    }
    args.update(kw)
    return args


def start_coordinator(
    tmp: Path, broker_url: str, cluster: str, *, interval: float = 0.2, db: Path | None = None
) -> NodeProc:
    cfg = tmp / "coordinator.toml"
    cfg.write_text(
        f'[cluster]\nname = "{cluster}"\n[broker]\nurl = "{broker_url}"\nkeepalive_s = 5\n'
        f'[log]\nlevel = "debug"\nformat = "json"\n'
        f'[coordinator]\ndb = "{db or tmp / "coordinator.db"}"\nnode_interval_s = {interval}\ndefault_rate = 20.0\n'
    )
    log = tmp / "coordinator.log"
    return NodeProc("coordinator", _spawn(cfg, "coordinator", log), tmp / "none", log)
