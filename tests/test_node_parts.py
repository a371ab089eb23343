"""Node daemon parts without a broker: tegrastats parsing, latency windows, sd_notify,
collector probing, identity, and the daemon's imports."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from deepedge.config import ConfigError, NodeConfig, TrainingConfig
from deepedge.devices import board_cpus
from deepedge.errors import ExitCode
from deepedge.node import LatencyWindows, percentile
from deepedge.node._identity import default_node_id, jetpack_release, make_birth
from deepedge.node._latency import LatencyIntake, _held
from deepedge.node._profile import BoardProfiler, ProfileError
from deepedge.node.collectors import PsutilCollector, TelemetryDraft, parse_tegrastats, probe_collectors
from deepedge.sdnotify import SystemdNotifier
from deepedge.testing import FakeClock
from deepedge.transport import DropLog
from tests.conftest import MosquittoBroker
from tests.helpers.node_proc import _spawn, start_node

# Recorded tegrastats lines (one per board family / JetPack generation).
NANO = (
    "RAM 2448/3964MB (lfb 15x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [10%@1479,3%@1479,5%@1479,4%@1479] EMC_FREQ 0%@1600 GR3D_FREQ 12%@921 APE 25 PLL@29C "
    "CPU@31.5C PMIC@100C GPU@30C AO@38C thermal@30.75C POM_5V_IN 2473/2473 POM_5V_GPU 120/110 POM_5V_CPU 409/409"
)
TX2 = (
    "RAM 1843/7854MB (lfb 1175x4MB) SWAP 0/3927MB (cached 0MB) CPU [1%@345,off,off,1%@345,0%@345,0%@345] "
    "EMC_FREQ 0%@1866 GR3D_FREQ 0%@114 APE 150 PLL@42C MCPU@42C PMIC@100C Tboard@37C GPU@40C BCPU@42C "
    "thermal@41.2C Tdiode@39.5C VDD_SYS_GPU 153/153 VDD_SYS_SOC 459/459 VDD_4V0_WIFI 0/0 VDD_IN 2610/2610 "
    "VDD_SYS_CPU 153/153 VDD_SYS_DDR 384/384"
)
XAVIER_NX = (
    "RAM 3281/6854MB (lfb 63x4MB) SWAP 0/3427MB (cached 0MB) CPU [9%@1190,6%@1190,8%@1190,6%@1190,off,off] "
    "EMC_FREQ 0% GR3D_FREQ 37% AUX@36.5C CPU@38C thermal@37.3C AO@36C GPU@36C PMIC@50C VDD_IN 4232/4232 "
    "VDD_CPU_GPU_CV 531/531 VDD_SOC 1327/1327"
)
AGX_ORIN = (
    "11-23-2026 01:00:00 RAM 4722/30536MB (lfb 6270x4MB) SWAP 0/15268MB (cached 0MB) "
    "CPU [2%@729,0%@729,1%@729,0%@729,0%@2201,0%@2201,0%@2201,0%@2201,off,off,off,off] EMC_FREQ 0%@2133 "
    "GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 CV0@-256C CPU@44.968C Tboard@33C SOC2@41.437C Tdiode@35.75C "
    "SOC0@41.75C CV1@-256C GPU@-256C tj@45.125C SOC1@41.093C CV2@-256C VDD_GPU_SOC 2803mW/2803mW "
    "VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 3636mW/3636mW NC 0mW/0mW VDDQ_VDD2_1V8AO 303mW/303mW NC 0mW/0mW"
)
ORIN_NANO = (
    "RAM 2118/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@1510,0%@1510,0%@1510,0%@1510,0%@729,0%@729] "
    "GR3D_FREQ 54% cpu@48.5C soc2@47.718C soc0@47.593C gpu@48.75C tj@48.75C soc1@48.25C VDD_IN 4936mW/4936mW "
    "VDD_CPU_GPU_CV 575mW/575mW VDD_SOC 1427mW/1427mW"
)


@pytest.mark.parametrize(
    ("line", "ram", "cores", "gpu", "gpu_w", "gpu_temp"),
    [
        (NANO, (2448, 3964), 4, 12.0, 0.120, 30.0),
        (TX2, (1843, 7854), 4, 0.0, 0.153, 40.0),
        (XAVIER_NX, (3281, 6854), 4, 37.0, 0.531, 36.0),
        (AGX_ORIN, (4722, 30536), 8, 0.0, 2.803, None),  # GPU@-256C: sensor off
        (ORIN_NANO, (2118, 7620), 6, 54.0, 0.575, 48.75),
    ],
    ids=["nano", "tx2", "xavier-nx", "agx-orin", "orin-nano"],
)
def test_tegrastats_lines_of_several_jetsons(
    line: str, ram: tuple[int, int], cores: int, gpu: float, gpu_w: float, gpu_temp: float | None
) -> None:
    s = parse_tegrastats(line)
    mb = 1024 * 1024
    assert (s.ram_used_bytes, s.ram_total_bytes) == (ram[0] * mb, ram[1] * mb)
    assert len(s.cpu_per_core) == cores
    assert s.gpu_util_percent == gpu
    assert s.gpu_power_w == pytest.approx(gpu_w)
    assert s.gpu_temp_c == gpu_temp
    assert all(t > -200 for t in s.temperatures_c.values())
    assert "RAM" not in s.rails_mw and "SWAP" not in s.rails_mw


def test_tegrastats_garbage_gives_empty_sample() -> None:
    s = parse_tegrastats("nothing to see here")
    assert s.ram_used_bytes is None and s.cpu_per_core == [] and s.gpu_power_w is None


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50.0, 95.0, 99.0)
    assert percentile([], 95) == 0.0
    assert percentile([7.0], 99) == 7.0


def test_latency_windows_slide_and_count_violations() -> None:
    clock = FakeClock()
    w = LatencyWindows(10.0, clock, {"det": 20.0})
    for ms in (5.0, 10.0, 30.0):
        w.add("det", ms)
    clock.advance(5)
    w.add("det", 40.0)
    (a,) = w.summary()
    assert (a.count, a.violations, a.deadline_ms) == (4, 2, 20.0)
    clock.advance(6)  # the first three fall out of the window
    (a,) = w.summary()
    assert (a.count, a.p50_ms) == (1, 40.0)
    w.set_deadline("det", None)
    assert w.summary()[0].deadline_ms is None


def test_undeclared_apps_are_tracked_but_bounded() -> None:
    w = LatencyWindows(10.0, FakeClock())
    assert all(w.add(f"app{i}", 1.0) for i in range(64))
    assert not w.add("one-too-many", 1.0)


def test_the_windows_hold_a_bounded_number_of_samples_over_every_app() -> None:
    """(an attacker's review) Each app held up to 200,000 samples, so a local writer filling 64
    apps made every summary sort 12.8 million values on the daemon's loop (seconds a report).
    All apps together now hold MAX_SAMPLES; past it an app makes room with its own oldest (a flood
    of one app never evicts another's), and one without samples of its own is dropped."""
    from deepedge.node._latency import MAX_SAMPLES

    clock = FakeClock()
    w = LatencyWindows(10.0, clock, {"det": 20.0})
    w.add("det", 5.0)
    for k in range(MAX_SAMPLES + 10):
        w.add(f"flood{k % 3}", 1.0)
    assert not w.add("new-app", 1.0)  # no room, and none of its own
    assert w.add("det", 6.0)  # its own oldest goes
    counts = {a.app: a.count for a in w.summary()}
    assert sum(counts.values()) == MAX_SAMPLES and counts["det"] == 1
    clock.advance(11)  # every window slides out: room again
    assert all(a.count == 0 for a in w.summary()) and w.add("new-app", 1.0)


def test_intake_drops_bad_lines_and_keeps_good_ones() -> None:
    clock = FakeClock()
    w = LatencyWindows(10.0, clock)
    intake = LatencyIntake("/nonexistent", w, DropLog(clock))
    intake.feed(b"det 12.5\ngarbage\nbad/app 3\ndet -1\ndet nan\ndet 1e12\n\xff\xfe 1\ndet 7\n")
    assert intake.accepted == 2
    assert [a.count for a in w.summary()] == [2]


def test_sd_notify_protocol(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(1)
    n = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    assert n.enabled and n.watchdog_interval_s == 1.0
    assert n.ready("up")
    assert server.recv(100) == b"READY=1\nSTATUS=up"
    assert n.watchdog() and server.recv(100) == b"WATCHDOG=1"
    n.close()
    server.close()
    off = SystemdNotifier({})
    assert not off.enabled and not off.ready() and off.watchdog_interval_s is None
    other_pid = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval_s is None  # the watchdog is for another process
    other_pid.close()


def test_missing_collectors_are_skipped_with_one_line_each() -> None:
    with capture_logs() as logs:
        found = probe_collectors(1.0, disabled=("tegrastats",))
    names = [c.name for c in found]
    assert names[0] == "psutil"
    events = {(e["event"], e["collector"]) for e in logs}
    assert ("collector.disabled", "tegrastats") in events
    if "nvml" not in names:  # no NVIDIA GPU here: skipped, never an error
        skipped = [e for e in logs if e["event"] == "collector.skipped" and e["collector"] == "nvml"]
        assert len(skipped) == 1 and skipped[0]["reason"]
    for c in found:
        c.close()


def test_psutil_collector_gives_rates_after_two_samples() -> None:
    c = PsutilCollector()
    d1, d2 = TelemetryDraft(), TelemetryDraft()
    c.collect(d1, 1.0)
    c.collect(d2, 2.0)
    t = d2.freeze("n1", 5.0)
    assert t.mem_total_bytes > 0 and len(t.cpu_per_core) >= 1 and len(t.load_avg) == 3
    assert t.net_rx_bps >= 0 and t.disk_read_bps >= 0


def test_an_emulated_board_of_some_cpus_reports_their_cpu_figures_only() -> None:
    d = TelemetryDraft()
    d.cpu_per_core, d.cpu_percent = (10.0, 90.0, 50.0), 50.0
    d.emulate_cpus(())  # not emulated: the whole machine, as collected
    assert d.cpu_per_core == (10.0, 90.0, 50.0) and d.cpu_percent == 50.0
    d.emulate_cpus((1, 1, 7))  # CPU 7 is not on this machine; 1 named twice counts once
    t = d.freeze("n1", 1.0)
    assert t.cpu_per_core == (90.0,) and t.cpu_percent == 90.0
    assert board_cpus((9,), 2) == (0, 1)  # none of them exists: the whole machine, never no CPU
    assert board_cpus((2, 0), 4) == (2, 0) and board_cpus((), 3) == (0, 1, 2)


SPIN_ON_CPU1 = "import os\nos.sched_setaffinity(0, {1})\nprint('ready', flush=True)\nwhile True: pass"


@pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1")
def test_a_profile_run_counts_busy_time_on_the_boards_cpus_only() -> None:
    """The profiling runner's background CPU covers the board's CPUs (node.emulate_cpus): a
    process spinning on CPU 1 keeps CPU 1's board busy; the whole machine's figure is the
    average of its CPUs'."""
    from deepedge.profiling._runner import _busy_total

    spin = subprocess.Popen([sys.executable, "-c", SPIN_ON_CPU1], stdout=subprocess.PIPE)
    try:
        assert spin.stdout is not None and spin.stdout.readline() == b"ready\n"
        before = {cpus: _busy_total(cpus) for cpus in ((0,), (1,), ())}
        time.sleep(1.0)
        after = {cpus: _busy_total(cpus) for cpus in ((0,), (1,), ())}
    finally:
        spin.kill()
        spin.communicate(timeout=10)
    share = {c: (after[c][0] - before[c][0]) / (after[c][1] - before[c][1]) for c in before}
    n = after[()][2]
    assert after[(0,)][2] == after[(1,)][2] == 1 and n == len(psutil.cpu_times(percpu=True))
    assert share[(1,)] > 0.8, share
    if n == 2:
        assert abs(share[()] - (share[(0,)] + share[(1,)]) / 2) < 0.05, share


def test_a_board_of_cpus_this_machine_lacks_is_refused_and_a_worker_outside_it_warned() -> None:
    from deepedge.config import Config
    from deepedge.node._daemon import _check_cpus

    count = os.cpu_count() or 1
    with pytest.raises(ConfigError, match=rf"node.emulate_cpus names CPUs this machine does not have: \[{count}\]"):
        _check_cpus(Config(node=NodeConfig(emulate_cpus=(0, count))))
    with capture_logs() as logs:
        _check_cpus(Config(node=NodeConfig(emulate_cpus=(0,), cpu_affinity=(0,))))
        assert not logs
        _check_cpus(Config(node=NodeConfig(emulate_cpus=(0,), cpu_affinity=(0, count + 3))))
    assert [e["event"] for e in logs] == ["config.cpu_affinity_outside_board"]


def test_identity() -> None:
    assert jetpack_release("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref") == "L4T R35.4.1"
    assert jetpack_release("") is None
    b = make_birth(default_node_id(), "s1", [])
    assert b.cpu_cores > 0 and b.memory_bytes > 0 and b.software["python"]


def test_daemon_process_imports_neither_torch_nor_cvxpy() -> None:
    code = (
        "import sys, deepedge.cli, deepedge.node, deepedge.node._daemon, deepedge.lc_client;"
        "bad = [m for m in ('torch', 'cvxpy') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- two daemons on one host ----------------------------------------------------------------


async def test_a_latency_socket_held_by_a_running_process_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "lat.sock"
    first = LatencyIntake(str(path), LatencyWindows(10.0, clock), DropLog(clock))
    await first.start()
    try:
        second = LatencyIntake(str(path), LatencyWindows(10.0, clock), DropLog(clock))
        with pytest.raises(ConfigError, match=r"node.latency_socket .* is in use by a running process") as err:
            await second.start()
        assert err.value.exit_code is ExitCode.CONFIG and "\n" not in str(err.value)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as app:  # the first still gets the reports
            app.sendto(b"det 12.5\n", str(path))
        await asyncio.sleep(0.05)
        assert first.accepted == 1
    finally:
        first.close()


async def test_a_stale_latency_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "lat.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a daemon that died
    clock = FakeClock()
    intake = LatencyIntake(str(path), LatencyWindows(10.0, clock), DropLog(clock))
    await intake.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as app:
            app.sendto(b"det 1\n", str(path))
        await asyncio.sleep(0.05)
        assert intake.accepted == 1
    finally:
        intake.close()


def test_a_profile_path_is_locked_while_its_daemon_runs(tmp_path: Path) -> None:
    cfg = NodeConfig(profile_path=str(tmp_path / "p" / "profile.json"))
    clock = FakeClock()
    first = BoardProfiler(cfg, LatencyWindows(10.0, clock), clock)
    with pytest.raises(ConfigError, match=rf"is locked by process {os.getpid()} \(another deepedge node"):
        BoardProfiler(cfg, LatencyWindows(10.0, clock), clock)
    first.close()
    BoardProfiler(cfg, LatencyWindows(10.0, clock), clock).close()
    in_memory = NodeConfig(profile_path="")  # nothing to lock
    BoardProfiler(in_memory, LatencyWindows(10.0, clock), clock)
    BoardProfiler(in_memory, LatencyWindows(10.0, clock), clock)


async def test_the_profile_trains_where_and_how_the_worker_would() -> None:
    """The board's training.device and precision reach the profiler process: a profile of a
    device this board lacks fails the way the worker would, instead of measuring the CPU."""
    clock = FakeClock()
    on_gpu = TrainingConfig(device="cuda:3", precision="bf16")
    prof = BoardProfiler(NodeConfig(profile_path=""), LatencyWindows(10.0, clock), clock, on_gpu)
    with pytest.raises(ProfileError, match="cuda"):
        await prof.measure("cnn-small", [1.0], 0.5)
    on_cpu = TrainingConfig(device="cpu", precision="bf16")
    prof = BoardProfiler(NodeConfig(profile_path=""), LatencyWindows(10.0, clock), clock, on_cpu)
    assert (await prof.measure("cnn-small", [1.0], 0.5)).samples_per_s > 0


@pytest.mark.mosquitto
@pytest.mark.parametrize("shared", ["latency_socket", "profile_path"])
def test_a_second_daemon_on_one_host_refuses_in_one_line(
    tmp_path: Path, mosquitto: MosquittoBroker, cluster: str, shared: str
) -> None:
    first = start_node(tmp_path, mosquitto.url, cluster, "a")
    try:
        deadline = time.monotonic() + 30
        while not any(e.get("event") == "node.ready" for e in first.log_events()):
            assert first.proc.poll() is None and time.monotonic() < deadline, first.log.read_text()
            time.sleep(0.1)
        # the second daemon: another node id, the same value of `shared`, its own everything else
        text = (tmp_path / "a.toml").read_text().replace('id = "a"', 'id = "b"')
        other = "latency_socket" if shared == "profile_path" else "profile_path"
        text = re.sub(rf'^{other} = "(.*)"$', rf'{other} = "\1.b"', text, flags=re.M)
        cfg = tmp_path / "b.toml"
        cfg.write_text(text)
        log = tmp_path / "b.log"
        second = _spawn(cfg, "node", log)
        assert second.wait(30) == ExitCode.CONFIG
        last = log.read_text().splitlines()[-1]
        assert last.startswith(f"deepedge: error: node.{shared} ") and "give each daemon its own" in last, last
        assert first.proc.poll() is None
        assert _held(first.socket)  # still the first daemon's
        assert not any(e.get("node") == "b" for e in first.log_events())
    finally:
        first.stop()


def test_the_telemetry_draft_has_exactly_the_wire_fields_and_fits_them_into_their_bounds() -> None:
    import math

    from deepedge.broker_schemas import GpuStats, Telemetry

    d = TelemetryDraft()
    with pytest.raises(AttributeError, match="no field 'cpu_temp'"):
        d.cpu_temp = 3.0  # a name the wire does not have: an error, not a silent drop
    d.cpu_percent, d.cpu_per_core, d.net_rx_bps = 100.4, (101.0, -0.2, math.nan), -5.0
    d.temperatures_c.update({f"zone{i}": 40.0 for i in range(100)})
    d.gpus.extend(GpuStats(index=i) for i in range(20))
    t = d.freeze("n1", 1.0)
    assert isinstance(t, Telemetry) and t.cpu_percent == 100.0 and t.cpu_per_core == (100.0, 0.0, 0.0)
    assert t.net_rx_bps == 0.0 and len(t.temperatures_c) == 64 and len(t.gpus) == 16
    assert set(Telemetry.__struct_fields__) - {"node", "ts", "v"} == set(vars(d))
