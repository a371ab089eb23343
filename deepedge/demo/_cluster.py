"""The demo's cluster on this machine: an embedded broker, a coordinator, node daemons for the
emulated boards and their LC apps, all real processes; killed boards, and cleanup that leaves
nothing running or listening (also when the demo itself is killed: children get SIGTERM through
PR_SET_PDEATHSIG)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from deepedge.demo._boards import BoardProfile
from deepedge.demo._broker import EmbeddedBroker, start_broker
from deepedge.embedded_broker import die_with_parent

__all__ = ["DemoCluster"]


def _child_setup(cpus: set[int] | None) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec
        die_with_parent()
        if cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cpus)

    return setup


@dataclass
class _Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class DemoCluster:
    workdir: Path
    boards: list[BoardProfile]
    base_sample_ms: float = 2.0
    cluster: str = "demo"
    interval_s: float = 0.5
    latency_window_s: float = 5.0
    broker_kind: str = "auto"
    broker: EmbeddedBroker | None = None
    procs: dict[str, _Proc] = field(default_factory=dict)
    killed: dict[str, float] = field(default_factory=dict)  # node -> time.time() of its SIGKILL

    @property
    def url(self) -> str:
        assert self.broker is not None
        return self.broker.url

    def socket(self, node: str) -> Path:
        return self.workdir / "run" / f"{node}.sock"

    def config_path(self, name: str) -> Path:
        return self.workdir / "etc" / f"{name}.toml"

    def _common(self) -> str:
        return (
            f'[cluster]\nname = "{self.cluster}"\n[broker]\nurl = "{self.url}"\nkeepalive_s = 5\n'
            '[log]\nlevel = "info"\nformat = "json"\n'
        )

    def _spawn(self, name: str, argv: list[str], cpus: set[int] | None = None) -> None:
        log = self.workdir / "logs" / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEDGE_")}
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_child_setup(cpus),
                start_new_session=True,
            )
        self.procs[name] = _Proc(name, proc, log)

    def start(self) -> None:
        for sub in ("etc", "logs", "run", "state"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.broker = start_broker(self.workdir / "broker", self.broker_kind)
        exe = [sys.executable, "-m", "deepedge.cli"]
        cfg = self.config_path("coordinator")
        cfg.write_text(
            self._common() + f'[coordinator]\ndb = "{self.workdir / "state" / "coordinator.db"}"\n'
            f"node_interval_s = {self.interval_s}\ndefault_rate = 200.0\nlc_margin = 0.25\n"
        )
        self._spawn("coordinator", [*exe, "--config", str(cfg), "coordinator"])
        for b in self.boards:
            self.start_node(b)

    def start_node(self, b: BoardProfile) -> None:
        cfg = self.config_path(b.node)
        apps = f'\n[[node.lc_apps]]\nname = "{b.lc_app}"\ndeadline_ms = 1000.0\n' if b.lc_app else ""
        cfg.write_text(
            self._common() + f'[node]\nid = "{b.node}"\ntelemetry_interval_s = {self.interval_s}\n'
            f"heartbeat_interval_s = {self.interval_s}\nlatency_window_s = {self.latency_window_s}\n"
            f'latency_socket = "{self.socket(b.node)}"\ncpu_affinity = [{b.cpu}]\n'
            f'profile_path = "{self.workdir / b.node}-profile.json"\n'
            f"emulate_sample_ms = {b.sample_ms(self.base_sample_ms):.4f}\nemulate_memory_mb = {b.memory_mb}\n"
            f"disabled_collectors = {json.dumps(['nvml', 'tegrastats'])}\n"
            # what a job may name on these boards: the demo's own folders
            f'[training]\ndata_roots = ["{self.workdir}"]\noutput_root = "{self.workdir}"\n{apps}'
        )
        self._spawn(b.node, [sys.executable, "-m", "deepedge.cli", "--config", str(cfg), "node"])

    def start_lc_apps(self) -> None:
        for b in self.boards:
            if b.lc_app:
                argv = [sys.executable, "-m", "deepedge.demo.lc_app", "--app", b.lc_app]
                self._spawn(f"lc-{b.lc_app}", [*argv, "--socket", str(self.socket(b.node))], cpus={b.cpu})

    def kill_board(self, node: str) -> float:
        """Power loss: SIGKILL the board's daemon and everything it started (its worker, which
        runs in its own process group). Returns the time of the kill."""
        proc = self.procs[node].proc
        victims = []
        with contextlib.suppress(psutil.Error):
            victims = psutil.Process(proc.pid).children(recursive=True)
        at = time.time()
        proc.send_signal(signal.SIGKILL)
        for v in victims:
            with contextlib.suppress(psutil.Error):
                v.kill()
        proc.wait(10)
        self.killed[node] = at
        return at

    def alive(self, name: str) -> bool:
        p = self.procs.get(name)
        return p is not None and p.proc.poll() is None

    def stop(self, grace_s: float = 8.0) -> None:
        """SIGTERM everything (daemons stop their workers and say goodbye), then SIGKILL what is
        left, process groups included; then the broker."""
        order = [n for n in self.procs if n.startswith("lc-")] + [b.node for b in self.boards] + ["coordinator"]
        for name in order:
            p = self.procs.get(name)
            if p is not None and p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for name in order:
            p = self.procs.get(name)
            if p is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(max(0.1, deadline - time.monotonic()))
        for p in self.procs.values():
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(p.proc.pid).children(recursive=True):
                    child.kill()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.proc.pid, signal.SIGKILL)
            if p.proc.poll() is None:
                p.proc.kill()
            p.proc.wait(10)
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> DemoCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
