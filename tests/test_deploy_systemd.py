"""The systemd units in deploy/systemd: hardened (``systemd-analyze security`` exposure at most
4.9; both were 9.6 "UNSAFE" before), valid (``systemd-analyze verify``), and still what the
daemons need (notify, watchdog, exit 78 not restarted, the node's devices and nice levels)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
NAMES = ["deepedge-node.service", "deepedge-coordinator.service"]
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def settings(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@needs_analyze
@pytest.mark.parametrize("name", NAMES)
def test_exposure_is_at_most_4_9(name: str) -> None:
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(UNITS / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found is not None, proc.stdout + proc.stderr
    assert float(found.group(1)) <= 4.9, proc.stdout


@needs_analyze
@pytest.mark.parametrize("name", NAMES)
def test_the_unit_is_valid(name: str, tmp_path: Path) -> None:
    assert ANALYZE is not None
    text = (UNITS / name).read_text().replace("/opt/deepedge/venv/bin/deepedge", sys.executable)
    (tmp_path / name).write_text(text)  # (verify wants the ExecStart binary to exist)
    proc = subprocess.run([ANALYZE, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@pytest.mark.parametrize("name", NAMES)
def test_unprivileged_and_still_a_notify_service_that_does_not_restart_on_a_config_error(name: str) -> None:
    s = settings(name)
    assert s["User"] == ["deepedge"] and s["Group"] == ["deepedge"]
    assert s["NoNewPrivileges"] == ["yes"] and s["CapabilityBoundingSet"] == [""]
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] == ["yes"] and s["PrivateTmp"] == ["yes"]
    assert s["Type"] == ["notify"] and s["WatchdogSec"] and s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["78"]
    assert s["StartLimitBurst"] and s["StartLimitIntervalSec"] and s["MemoryMax"] and s["TasksMax"]
    assert s["UMask"] == ["0027"] and s["StateDirectory"][0].split()[0] == "deepedge"


def test_the_node_keeps_its_devices_and_its_workers_nice_levels() -> None:
    s = settings("deepedge-node.service")
    # NVML and a Jetson's GPU need /dev: no PrivateDevices, and nothing that implies a device
    # allow-list (ProtectClock= implies DeviceAllow=char-rtc, which shuts out the rest on systemd < 253)
    for key in ("PrivateDevices", "DeviceAllow", "DevicePolicy", "ProtectClock", "PrivateUsers"):
        assert key not in s, key
    assert "AF_NETLINK" in s["RestrictAddressFamilies"][0]  # gloo lists interfaces
    assert "MemoryDenyWriteExecute" not in s  # torch compiles CPU kernels at run time
    assert s["KillMode"] == ["mixed"]
    assert s["LimitNICE"] == ["20"]  # comm threads at nice 0 without CAP_SYS_NICE (node.worker_comm_nice)
    assert "deepedge/output" in s["StateDirectory"][0].split() and s["RuntimeDirectory"] == ["deepedge"]
    assert s["RuntimeDirectoryMode"] == ["0755"]  # LC apps of other users reach latency.sock
