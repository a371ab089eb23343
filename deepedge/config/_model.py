"""The configuration's shape, defaults and validation (msgspec structs, unknown keys refused)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from deepedge.devices import DeviceError, check_device_setting

__all__ = [
    "BUILTIN_MODELS",
    "BrokerConfig",
    "ClusterConfig",
    "Config",
    "CoordinatorConfig",
    "LcApp",
    "LogConfig",
    "NodeConfig",
    "TrainingConfig",
]

# The model registry's names (deepedge.training's registry; a test keeps the two in step). The
# config must not import torch to know them.
BUILTIN_MODELS = ("cnn-small", "resnet18", "resnet18-gn", "mobilenet_v2", "mobilenet_v2-gn", "mobilenet_v3_small")

_Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
_Positive = Annotated[float, msgspec.Meta(gt=0)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ClusterConfig(_Section, frozen=True):
    name: _Id = "default"


class BrokerConfig(_Section, frozen=True):
    url: str = "mqtt://127.0.0.1:1883"  # mqtts:// for TLS
    username: str = ""
    password: str = ""
    ca_file: str = ""  # CA bundle for mqtts://; empty means the system's
    cert_file: str = ""  # client certificate (mutual TLS)
    key_file: str = ""
    keepalive_s: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 15
    connect_timeout_s: _Positive = 10.0
    # A broker that is not on this machine must be reached over TLS (mqtts://) and with
    # credentials (a username, or a client certificate); true allows plaintext or anonymous
    # access to it anyway (a lab network you trust). Loopback brokers never need it.
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"broker.url {self.url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise ValueError(f"broker.url {self.url!r} has a bad port") from None

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None
        return host

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)

    @property
    def loopback(self) -> bool:
        """The broker is on this machine (``localhost``, 127.0.0.0/8 or ::1)."""
        host = self.host.lower()
        if host == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return ip.is_loopback or (mapped is not None and mapped.is_loopback)

    def insecure_reason(self) -> str | None:
        """Why connecting to this broker would be insecure (one line, naming the keys to fix),
        or None: a non-loopback broker needs TLS and credentials unless ``allow_insecure``."""
        if self.allow_insecure or self.loopback:
            return None
        if not self.tls:
            return (
                f"broker.url {self.url} is plaintext to a host that is not this machine: use mqtts:// "
                "(docs/security.md), or set broker.allow_insecure = true"
            )
        if not self.username and not self.cert_file:
            return (
                f"broker {self.url} without credentials: set broker.username and broker.password "
                "(or broker.cert_file), or set broker.allow_insecure = true"
            )
        return None


class LogConfig(_Section, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class LcApp(_Section, frozen=True):
    name: _Id
    deadline_ms: _Positive


class NodeConfig(_Section, frozen=True):
    id: str = ""  # empty: derived from the host name
    telemetry_interval_s: Annotated[float, msgspec.Meta(ge=0.05, le=3600)] = 1.0
    latency_window_s: Annotated[float, msgspec.Meta(ge=0.5, le=3600)] = 10.0
    latency_socket: str = "/run/deepedge/latency.sock"
    lc_apps: tuple[LcApp, ...] = ()
    heartbeat_interval_s: Annotated[float, msgspec.Meta(ge=0.05, le=60)] = 1.0
    # The training worker; empty means ``python -m deepedge.training.worker``.
    worker_command: tuple[str, ...] = ()
    # Keep one training worker started ahead, its imports (torch) done while the board is idle,
    # for the next job to take (docs/node.md, "Standby worker"); costs an imported torch's memory.
    # Off by default: it starts jobs sooner, and in the demo that made the LC apps miss more at
    # the start (measured: 2 of 5 runs failed with it, 0 of 40 without).
    standby_worker: bool = False
    # Keep one pre-flight checker started ahead, its torch imported while the board is idle, for
    # the next job's check (docs/node.md, "Standby checker"): a job's check then does not import
    # torch while the board's LC apps run. Costs an imported torch's memory. Off by default: it
    # saved 0.55 s of a job's start and did not lower the LC apps' p95 at the start (measured).
    standby_checker: bool = False
    # The pre-flight checker; empty means ``python -m deepedge.training.preflight``.
    preflight_command: tuple[str, ...] = ()
    # Collectors to skip even when available, e.g. ["nvml"].
    disabled_collectors: tuple[str, ...] = ()
    # CPUs the training worker may run on (empty: all); e.g. keep it off an LC app's cores.
    cpu_affinity: tuple[Annotated[int, msgspec.Meta(ge=0)], ...] = ()
    # CPU priority of the training worker: training is background work, LC apps come first.
    worker_nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 10
    # CPU priority of the worker's communication threads (gloo's, the rendezvous store's): short
    # bursts that every board of the job waits for (docs/training.md, "Thread priorities").
    worker_comm_nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 0
    # Emulation of a slower board (the demo and benchmarks): every training sample takes at least
    # this long (0: off), and the board reports this much memory (0: the real amount).
    emulate_sample_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    emulate_memory_mb: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Emulation of a board made of some of this machine's CPUs (the demo's boards share one
    # machine, a vCPU each): its telemetry's CPU figures, its reported core count and its
    # profiles' background CPU cover these only (empty: the whole machine). Measured: one board's
    # training on the other vCPU raised an LC app's p95 by 1-9 %, on its own vCPU by 2.1-2.3x
    # (docs/benchmarks/lc-scenarios.md, "The other board's training").
    emulate_cpus: tuple[Annotated[int, msgspec.Meta(ge=0, le=4095)], ...] = ()
    # Where ``deepedge profile`` keeps this board's measurements (empty: in memory only).
    profile_path: str = "/var/lib/deepedge/node-profile.json"
    # The address this board's training worker listens on (an IP literal; empty: the address
    # this board uses to reach the broker). Reported in its birth; the rendezvous store and gloo
    # bind to it only (docs/security.md, "Training network").
    training_address: str = ""
    # Training workers this node runs at once (plans for more jobs are refused).
    max_workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # Crashes of a job's worker without progress after which the node stops restarting it and
    # reports the job failed here (a crash loop; docs/node.md, "Worker supervision").
    worker_crash_limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    # How long the ``preflight`` command's checks may take before it answers "timeout".
    preflight_timeout_s: Annotated[float, msgspec.Meta(ge=1, le=600)] = 8.0
    # The pre-flight check's cache (docs/node.md, "Pre-flight cache"): a job whose model, samples,
    # base checkpoint, seeds and software passed a check here within this many seconds is not
    # checked with torch again (the torch-free checks always run). 0: off.
    preflight_cache_s: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 3600.0
    # Where that cache is kept (empty: no cache); written by this board's checker only.
    preflight_cache_path: str = "/var/lib/deepedge/preflight-cache.json"

    def __post_init__(self) -> None:
        if self.training_address:
            try:
                ipaddress.ip_address(self.training_address)
            except ValueError:
                raise ValueError(f"node.training_address {self.training_address!r} is not an IP address") from None


class TrainingConfig(_Section, frozen=True):
    """What a training job may name on this board: the board decides, not the job."""

    # Models a job may train here: registry names, or ``module:callable`` factories.
    models: tuple[str, ...] = BUILTIN_MODELS
    # Module prefixes whose ``module:callable`` factories may be imported (e.g. "acme.vision"
    # allows "acme.vision.nets:build"); empty: none. Importing runs the module's code.
    model_modules: tuple[str, ...] = ()
    # Datasets and base checkpoints must lie inside one of these (after resolving symlinks).
    data_roots: tuple[str, ...] = ("/var/lib/deepedge/data",)
    # Every job's output (checkpoints, model, accounting) must lie inside this folder.
    output_root: str = "/var/lib/deepedge/output"
    # Epoch checkpoints kept per job (the newest ones; model.pt is always kept).
    keep_checkpoints: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 2
    # Where this board trains: "auto" (its first CUDA device when the worker's torch sees one,
    # else the CPU), "cpu", "cuda" (= "cuda:0") or "cuda:N". Reported in the birth.
    device: str = "auto"
    # The collective backend this board allows: "auto" (NCCL when every participant of the job
    # trains on a discrete GPU with NCCL, else gloo), "gloo" (never NCCL in a job with this
    # board), "nccl" (asks for NCCL; a job gets it only where every participant can).
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # Arithmetic of the forward pass: "fp32", or mixed precision ("fp16" with loss scaling,
    # "bf16") where the device has it; parameters, gradients and the all-reduce stay float32.
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    # GPU memory (MiB) kept free for the LC apps: the worker caps torch's allocator at what is
    # free at its start less this (torch.cuda.set_per_process_memory_fraction). On a Jetson the
    # GPU memory is the board's RAM, so this is RAM the LC apps keep.
    lc_memory_reserve_mb: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 1024
    # The decoded-dataset cache (docs/training.md): an image folder decoded once by a worker is
    # kept here (created, mode 0700; its parent must exist) so that the next worker of the same
    # images loads it instead of decoding again. Empty or data_cache_mb = 0: off.
    data_cache_dir: str = "/var/lib/deepedge/data-cache"
    data_cache_mb: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 2048

    def __post_init__(self) -> None:
        for root in (*self.data_roots, self.output_root):
            if not root.startswith("/"):
                raise ValueError(f"training roots must be absolute paths, not {root!r}")
        if self.data_cache_dir and not self.data_cache_dir.startswith("/"):
            raise ValueError(f"training.data_cache_dir must be an absolute path, not {self.data_cache_dir!r}")
        try:
            check_device_setting(self.device)
        except DeviceError as exc:
            raise ValueError(str(exc)) from None


class CoordinatorConfig(_Section, frozen=True):
    db: str = "/var/lib/deepedge/coordinator.db"
    missed_heartbeats: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    node_interval_s: Annotated[float, msgspec.Meta(ge=0.05, le=60)] = 1.0  # the nodes' telemetry interval
    default_rate: Annotated[float, msgspec.Meta(gt=0)] = 10.0  # samples/s prior before heartbeats
    lc_margin: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1
    # LC request-rate forecasts look for a repeating load (a season) in each app's history; false:
    # the held trend only (the seasonal forecast's A/B, docs/benchmarks/lc-scenarios.md)
    forecast_seasons: bool = True
    # Rendezvous ports: each plan's rank 0 listens on one of [rendezvous_port, rendezvous_port +
    # rendezvous_ports); no two running jobs get the same one, and a job's next generation the next.
    rendezvous_port: Annotated[int, msgspec.Meta(ge=1024, le=64000)] = 29500
    rendezvous_ports: Annotated[int, msgspec.Meta(ge=2, le=1000)] = 100
    # Bounds: a job of more steps than this is refused at submit (epochs x steps per epoch);
    # nodes kept in the cluster view (a dead one makes room for a new one).
    max_total_steps: Annotated[int, msgspec.Meta(ge=1, le=2**53)] = 10_000_000
    max_nodes: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    # Seconds each candidate node has to answer the pre-flight of a submitted job.
    preflight_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    recovery_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0


class Config(_Section, frozen=True):
    cluster: ClusterConfig = ClusterConfig()
    broker: BrokerConfig = BrokerConfig()
    log: LogConfig = LogConfig()
    node: NodeConfig = NodeConfig()
    training: TrainingConfig = TrainingConfig()
    coordinator: CoordinatorConfig = CoordinatorConfig()
