"""``deepedge bench daemon``: the node daemon's CPU share and memory at 1 Hz telemetry against
a real Mosquitto, beside a bare paho-mqtt agent (the baseline) measured over the same seconds."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from deepedge.broker_schemas import NodeBirth, Telemetry, Topics
from deepedge.embedded_broker import MosquittoProcess
from deepedge.transport import MqttTransport, Received

__all__ = ["DaemonBenchResult", "run_daemon_bench"]


@dataclass
class ProcStats:
    cpu_pct_of_core: float
    rss_mb_max: float
    rss_mb_mean: float


@dataclass
class DaemonBenchResult:
    seconds: float
    interval_s: float
    daemon: ProcStats
    baseline: ProcStats
    telemetry_received: int

    def markdown(self, command: str) -> str:
        d, b = self.daemon, self.baseline
        return (
            f"Command: `{command}`  \n"
            f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}; {self.seconds:.0f} s measured, "
            f"telemetry every {self.interval_s:g} s ({self.telemetry_received} telemetry messages received).\n\n"
            "| process | CPU (% of one core) | RSS max (MB) | RSS mean (MB) |\n|---|---|---|---|\n"
            f"| `deepedge node` | {d.cpu_pct_of_core:.3f} | {d.rss_mb_max:.1f} | {d.rss_mb_mean:.1f} |\n"
            f"| baseline: bare paho-mqtt + psutil agent | {b.cpu_pct_of_core:.3f} | {b.rss_mb_max:.1f} | "
            f"{b.rss_mb_mean:.1f} |\n"
            f"| ratio daemon / baseline | {_ratio(d.cpu_pct_of_core, b.cpu_pct_of_core)} | "
            f"{_ratio(d.rss_mb_max, b.rss_mb_max)} | {_ratio(d.rss_mb_mean, b.rss_mb_mean)} |\n\n"
            f"Goal: < 1 % of a core and < 60 MB RSS. "
            f"{'Met.' if d.cpu_pct_of_core < 1.0 and d.rss_mb_max < 60 else 'NOT met.'}\n"
        )


def _ratio(x: float, y: float) -> str:
    return f"{x / y:.2f}x" if y > 0 else "n/a"


def _cpu_seconds(p: psutil.Process) -> float:
    """CPU time used so far; from /proc/<pid>/schedstat (nanoseconds) where Linux has it, since
    cpu_times() only moves in 10 ms ticks and the baseline uses a few ticks a minute."""
    try:
        return int(Path(f"/proc/{p.pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        t = p.cpu_times()
        return float(t.user + t.system)


def _measure(procs: dict[str, psutil.Process], seconds: float) -> dict[str, ProcStats]:
    start = {k: _cpu_seconds(p) for k, p in procs.items()}
    t0 = time.monotonic()
    rss: dict[str, list[float]] = {k: [] for k in procs}
    while time.monotonic() - t0 < seconds:
        for k, p in procs.items():
            rss[k].append(p.memory_info().rss / 1e6)
        time.sleep(1.0)
    wall = time.monotonic() - t0
    out = {}
    for k, p in procs.items():
        used = _cpu_seconds(p) - start[k]
        out[k] = ProcStats(100.0 * used / wall, max(rss[k]), sum(rss[k]) / len(rss[k]))
    return out


async def _count_telemetry(broker: MosquittoProcess, topics: Topics, node: str, until: asyncio.Event) -> int:
    count = 0
    async with MqttTransport(broker.config()) as t:
        sub = await t.subscribe(topics.node_telemetry(node))
        while not until.is_set():
            try:
                item = await sub.get(0.5)
            except TimeoutError:
                continue
            if isinstance(item, Received) and isinstance(item.message, Telemetry):
                count += 1
    return count


async def _wait_birth(broker: MosquittoProcess, topics: Topics, node: str, timeout: float) -> None:
    async with MqttTransport(broker.config()) as t:
        sub = await t.subscribe(topics.node_status(node))
        await sub.first(lambda m: isinstance(m, NodeBirth), timeout)


def run_daemon_bench(seconds: float = 60.0, interval_s: float = 1.0, warmup_s: float = 3.0) -> DaemonBenchResult:
    with tempfile.TemporaryDirectory(prefix="deepedge-bench-") as tmp_s:
        tmp = Path(tmp_s)
        topics = Topics("bench")
        with MosquittoProcess(tmp / "broker") as broker:
            cfg = tmp / "node.toml"
            cfg.write_text(
                f'[cluster]\nname = "bench"\n[broker]\nurl = "{broker.url}"\n[log]\nlevel = "warning"\n'
                f'[node]\nid = "bench-node"\ntelemetry_interval_s = {interval_s}\n'
                f'latency_socket = "{tmp / "lat.sock"}"\n[[node.lc_apps]]\nname = "det"\ndeadline_ms = 50\n'
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEDGE_")}
            exe = str(Path(sys.executable).parent / "deepedge")
            daemon = subprocess.Popen(
                [exe, "--config", str(cfg), "node"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            base = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "deepedge.bench._baseline_agent",
                    "127.0.0.1",
                    str(broker.port),
                    "bench/baseline",
                    str(interval_s),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            try:
                asyncio.run(_wait_birth(broker, topics, "bench-node", 30))
                assert base.stdout is not None
                base.stdout.readline()
                time.sleep(warmup_s)

                async def measure() -> tuple[dict[str, ProcStats], int]:
                    stop = asyncio.Event()
                    counter = asyncio.create_task(_count_telemetry(broker, topics, "bench-node", stop))
                    procs = {"daemon": psutil.Process(daemon.pid), "baseline": psutil.Process(base.pid)}
                    stats = await asyncio.to_thread(_measure, procs, seconds)
                    stop.set()
                    return stats, await counter

                stats, received = asyncio.run(measure())
            finally:
                for p in (daemon, base):
                    p.terminate()
                    p.wait(10)
                if base.stdout is not None:
                    base.stdout.close()
    return DaemonBenchResult(seconds, interval_s, stats["daemon"], stats["baseline"], received)
