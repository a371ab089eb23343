"""The demo's cluster on this machine: an embedded broker, a coordinator, node daemons for the
emulated boards and their LC apps, all real processes; killed boards, and cleanup that leaves
nothing running or listening (also when the demo itself is killed: children get SIGTERM through
PR_SET_PDEATHSIG).

Two ways to emulate the boards (``boundaries``):

- ``namespaces`` (as root): each board in its own network namespace with its own address and a
  shaped link to a bridge, and a cgroup with its CPU quota and memory (``deepedge.netem``); the
  broker is Mosquitto set up by ``deepedge.deploy`` on the bridge's address (TLS, a password per
  board, the shipped ACL), and each daemon and the coordinator use their generated credentials.
- ``shared`` (the fallback): every board on this machine's loopback and CPUs, the broker
  plaintext on loopback (which deepedge allows without credentials).

``auto`` is ``namespaces`` where it can be, else ``shared``; :attr:`DemoCluster.mode_note` says
which and why."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from deepedge.config import BrokerConfig
from deepedge.demo._boards import BoardProfile
from deepedge.demo._broker import EmbeddedBroker, start_broker
from deepedge.demo._secure import OPERATOR, SecureBroker
from deepedge.embedded_broker import die_with_parent
from deepedge.errors import DeepEdgeError
from deepedge.netem import EmulatedNetwork, LinkProfile, why_not_usable

__all__ = ["BOUNDARIES", "RUN_MARK", "DemoCluster"]

BOUNDARIES = ("auto", "namespaces", "shared")
RUN_MARK = "EDGE_DEMO_WORKDIR"  # in the environment of every process of a demo cluster (not a config key)


def _child_setup(cpus: set[int] | None, join: Callable[[], None] | None = None) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec
        die_with_parent()
        if join is not None:
            join()  # the board's cgroup, before anything is started in it
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
    boundaries: str = "auto"  # auto, namespaces or shared (see the module's docstring)
    coordinator_extra: str = ""  # more [coordinator] keys for its config
    node_extra: str = ""  # more [node] keys for every node's config
    data_roots: tuple[Path, ...] = ()  # where else jobs may read data (besides the workdir)
    broker: EmbeddedBroker | SecureBroker | None = None
    net: EmulatedNetwork | None = None
    mode_note: str = ""  # how the boards are emulated, in words (said by the demo and its report)
    procs: dict[str, _Proc] = field(default_factory=dict)
    killed: dict[str, float] = field(default_factory=dict)  # node -> time.time() of its SIGKILL
    link_events: list[tuple[float, str, str]] = field(default_factory=list)  # (time, node, what) of link changes

    @property
    def namespaced(self) -> bool:
        return self.net is not None

    @property
    def url(self) -> str:
        assert self.broker is not None
        return self.broker.url

    def watch_config(self) -> BrokerConfig:
        """How the demo watches every topic (the secure broker's loopback tap, or the broker)."""
        if isinstance(self.broker, SecureBroker):
            return self.broker.watch_config()
        return BrokerConfig(url=self.url, keepalive_s=5)

    def operator_config(self) -> BrokerConfig:
        """How the demo sends its commands: as the operator ``demo`` on the secure broker."""
        if isinstance(self.broker, SecureBroker):
            return self.broker.operator_config()
        return BrokerConfig(url=self.url, keepalive_s=5)

    def socket(self, node: str) -> Path:
        return self.workdir / "run" / f"{node}.sock"

    def config_path(self, name: str) -> Path:
        return self.workdir / "etc" / f"{name}.toml"

    def _common(self, user: str) -> str:
        if isinstance(self.broker, SecureBroker):
            broker = self.broker.broker_section(user)
        else:
            broker = f'[broker]\nurl = "{self.url}"\nkeepalive_s = 5\n'
        return f'[cluster]\nname = "{self.cluster}"\n{broker}[log]\nlevel = "info"\nformat = "json"\n'

    def _write(self, path: Path, text: str) -> None:
        """A config file: 0600 (it may hold the user's broker password)."""
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(text)

    def _spawn(self, name: str, argv: list[str], cpus: set[int] | None = None, board: str | None = None) -> None:
        """Start ``argv`` (on ``board``: in its namespace and cgroup when namespaced)."""
        log = self.workdir / "logs" / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEDGE_")}
        env[RUN_MARK] = str(self.workdir)  # inherited by everything it starts: whose process is whose
        join = None
        if self.net is not None and board is not None:
            argv, join = self.net.argv(board, argv), self.net.preexec(board)
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_child_setup(cpus, join),
                start_new_session=True,
            )
        self.procs[name] = _Proc(name, proc, log)

    def _boundaries(self) -> str:
        """``namespaces`` or ``shared``, with :attr:`mode_note` saying why."""
        why = why_not_usable()
        if self.boundaries == "namespaces" and why is not None:
            raise DeepEdgeError(f"--boards namespaces: {why}")
        if self.boundaries == "shared" or why is not None:
            reason = "as asked" if self.boundaries == "shared" else f"fallback: {why}"
            self.mode_note = (
                f"boards share this machine's loopback and CPUs ({reason}); the broker is plaintext on loopback"
            )
            return "shared"
        return "namespaces"

    def start(self) -> None:
        for sub in ("etc", "logs", "run", "state"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        if self._boundaries() == "namespaces":
            self.net = EmulatedNetwork([b.spec() for b in self.boards]).up()
            nodes = tuple(b.node for b in self.boards)
            secure = SecureBroker(self.workdir / "broker", self.cluster, nodes, self.net.gateway)
            self.broker = secure
            secure.start()
            cg = self.net.cgroups.describe() if self.net.cgroups else f"no cgroups ({self.net.cgroup_problem})"
            self.mode_note = (
                f"boards in their own network namespaces on bridge {self.net.bridge} ({self.net.gateway}/24), "
                f"links shaped with tc, {cg}; broker {secure.url} (TLS, a password per board, the deploy ACL)"
            )
        else:
            self.broker = start_broker(self.workdir / "broker", self.broker_kind)
        self._write_coordinator_config()
        # the operator's: the CLI as the operator ``demo`` (the coordinator's own login would take
        # over the coordinator's client id on the secure broker, whose last will would then fire),
        # the coordinator's db named so that `profile --kb` defaults to the demo's knowledge base
        self._write(
            self.config_path("operator"),
            self._common(OPERATOR) + f'[coordinator]\ndb = "{self.workdir / "state" / "coordinator.db"}"\n',
        )
        self._spawn_coordinator()
        for b in self.boards:
            self.start_node(b)

    def _write_coordinator_config(self, extra: str = "") -> None:
        """The coordinator's config: the demo's settings, ``coordinator_extra``, then ``extra``;
        checked first (a key given twice, a typo, a value out of bounds: a DeepEdgeError, and the
        file as it was), so that a bad ``extra`` fails before a restart stops the coordinator."""
        from deepedge.config import ConfigError, load_config

        text = self._coordinator_config_text(extra)
        trial = self.config_path("coordinator").with_suffix(".trial")
        self._write(trial, text)
        try:
            load_config(trial, environ={})
        except ConfigError as exc:
            raise DeepEdgeError(f"coordinator settings {extra!r}: {exc}") from None
        finally:
            trial.unlink(missing_ok=True)
        self._write(self.config_path("coordinator"), text)

    def _coordinator_config_text(self, extra: str) -> str:
        return (
            self._common("coordinator") + f'[coordinator]\ndb = "{self.workdir / "state" / "coordinator.db"}"\n'
            f"node_interval_s = {self.interval_s}\ndefault_rate = 200.0\nlc_margin = 0.25\n"
            # an emulated board shares this machine's CPUs (held to its CPU quota when namespaced):
            # four boards' checks import torch at once, two to a vCPU on a 2-vCPU machine, at nice
            # 10 behind the LC apps (the node's 8 s default timed out there, 2026-12-05); under the
            # CLI's 45 s wait for a submit's answer where not namespaced
             + f"preflight_timeout_s = {45.0 if self.namespaced else 35.0}\n" + self.coordinator_extra + extra
        )

    def restart_coordinator(self, grace_s: float = 10.0, extra: str = "") -> int:
        """Stop the coordinator (SIGTERM: it publishes its status offline; SIGKILL after
        ``grace_s``) and start it again on the same state: its jobs and the knowledge base stay,
        what it learned of the boards (rates, latency models, cap limits, calibration, forecasts)
        starts afresh: its memory rows are deleted (the coordinator's memory, since 2026-12-05,
        restored them, so the LC bench's second controller inherited the first one's cap limits
        and widened intervals until 2026-12-06). The LC bench does this between controllers, so
        each starts from the same knowledge. ``extra``: coordinator settings (TOML lines under
        ``[coordinator]``) this start runs with, none of the last start's extra kept; checked
        before the coordinator is stopped. Returns the memory rows deleted."""
        from deepedge.coordinator import JobStore

        self._write_coordinator_config(extra)
        self.stop_process("coordinator", grace_s)
        store = JobStore(self.workdir / "state" / "coordinator.db")
        try:
            forgotten = store.forget_memory()
        finally:
            store.close()
        self._spawn_coordinator()
        return forgotten

    def _spawn_coordinator(self) -> None:
        cfg = self.config_path("coordinator")
        self._spawn("coordinator", [sys.executable, "-m", "deepedge.cli", "--config", str(cfg), "coordinator"])

    def start_node(self, b: BoardProfile) -> None:
        cfg = self.config_path(b.node)
        apps = f'\n[[node.lc_apps]]\nname = "{b.lc_app}"\ndeadline_ms = 1000.0\n' if b.lc_app else ""
        self._write(
            cfg,
            self._common(b.node) + f'[node]\nid = "{b.node}"\ntelemetry_interval_s = {self.interval_s}\n'
            f"heartbeat_interval_s = {self.interval_s}\nlatency_window_s = {self.latency_window_s}\n"
            + f"preflight_timeout_s = {40.0 if self.namespaced else 30.0}\n"  # as the coordinator's, above
            + f'latency_socket = "{self.socket(b.node)}"\ncpu_affinity = [{b.cpu}]\nemulate_cpus = [{b.cpu}]\n'
            f'profile_path = "{self.workdir / b.node}-profile.json"\n'
            f'preflight_cache_path = "{self.workdir / b.node}-preflight-cache.json"\n'
            f"emulate_sample_ms = {b.sample_ms(self.base_sample_ms):.4f}\nemulate_memory_mb = {b.memory_mb}\n"
            f"disabled_collectors = {json.dumps(['nvml', 'tegrastats'])}\n{self.node_extra}"
            # what a job may name on these boards: the demo's own folders
            f"[training]\ndata_roots = {json.dumps([str(p) for p in (self.workdir, *self.data_roots)])}\n"
            f'output_root = "{self.workdir}"\ndata_cache_dir = "{self.data_cache(b.node)}"\n{apps}',
        )
        self._spawn(b.node, [sys.executable, "-m", "deepedge.cli", "--config", str(cfg), "node"], board=b.node)

    def data_cache(self, node: str) -> Path:
        """The board's decoded-dataset cache (``training.data_cache_dir``)."""
        return self.workdir / f"{node}-data-cache"

    def forget_decoded(self) -> int:
        """Empty every board's decoded-dataset cache, so that the next job decodes its images as a
        retraining on new data does (a bench's jobs must meet the boards alike: otherwise the
        first job on a cluster decodes and the next ones load what it kept). Entries removed."""
        from deepedge.training._data_cache import PREFIX, SUFFIX

        removed = 0
        for b in self.boards:
            folder = self.data_cache(b.node)
            if folder.is_symlink() or not folder.is_dir():
                continue  # not a cache this cluster made (the cache refuses a linked folder too)
            for entry in folder.glob(f"{PREFIX}*{SUFFIX}"):
                if stat.S_ISREG(entry.lstat().st_mode):
                    entry.unlink()
                    removed += 1
        return removed

    def start_lc_apps(self) -> None:
        for b in self.boards:
            if b.lc_app:
                argv = [sys.executable, "-m", "deepedge.demo.lc_app", "--app", b.lc_app]
                self._spawn(f"lc-{b.lc_app}", [*argv, "--socket", str(self.socket(b.node))], cpus={b.cpu}, board=b.node)

    def start_process(self, name: str, argv: list[str], board: str) -> None:
        """Another process on ``board`` (e.g. a background-load stressor), stopped with the rest."""
        self._spawn(name, argv, board=board)

    def stop_process(self, name: str, grace_s: float = 0.0) -> None:
        """Stop a process and its group: SIGKILL, or with ``grace_s`` SIGTERM first and SIGKILL
        only if it is still running that long after."""
        p = self.procs.pop(name, None)
        if p is not None and p.proc.poll() is None:
            if grace_s > 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(grace_s)
            if p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait(10)

    def link_of(self, node: str) -> str:
        """The board's link, in words ("-" when the boards are not namespaced)."""
        if self.net is None or node not in self.net.boards:
            return "-"
        b = self.net.boards[node]
        return b.link.describe() + (" (down)" if not b.up else "")

    def cut_link(self, node: str) -> float:
        """Pull the board's cable (namespaced boards only). Returns the time of the cut."""
        if self.net is None:
            raise DeepEdgeError("cutting a link needs namespaced boards")
        at = self.net.cut(node)
        self.link_events.append((at, node, "cut"))
        return at

    def set_link(self, node: str, link: LinkProfile) -> float:
        """Change the board's link while it runs (namespaced boards only)."""
        if self.net is None:
            raise DeepEdgeError("changing a link needs namespaced boards")
        self.net.reshape(node, link)
        at = time.time()
        self.link_events.append((at, node, link.describe()))
        return at

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
        others = [n for n in self.procs if n not in {b.node for b in self.boards} | {"coordinator"}]
        order = others + [b.node for b in self.boards] + ["coordinator"]
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
        if self.net is not None:
            problems = self.net.down()
            if problems:
                print(f"demo: could not remove {'; '.join(problems)}", file=sys.stderr)

    def __enter__(self) -> DemoCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
