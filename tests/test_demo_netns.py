"""``deepedge demo`` on namespaced boards (as root; CI runs this): each board in its own network
namespace and cgroup with a shaped link, the broker as ``deepedge deploy`` sets it up; the
report has each board's address, link and limits, and nothing is left behind — processes,
namespaces, veth links, the bridge, cgroups, the run's record — after a run, or after a
SIGTERM mid-run. Without root the demo falls back to shared boards and says why."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from deepedge.demo import DemoCluster, cluster_profiles
from deepedge.embedded_broker import MOSQUITTO
from deepedge.netem import STATE_DIR, Cgroups, detect_cgroups, why_not_usable
from tests.helpers.demo_checks import check_reduced_demo

EXE = str(Path(sys.executable).parent / "deepedge")
F = TypeVar("F", bound=Callable[..., None])


def namespaced(test: F) -> F:
    """Root and Mosquitto only (CI runs as root)."""
    for mark in (
        pytest.mark.slow,
        pytest.mark.mosquitto,
        pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto"),
        pytest.mark.skipif(why_not_usable() is not None, reason=f"{why_not_usable()}"),
    ):
        test = mark(test)
    return test


def _left_behind(tag: str, workdir: Path) -> list[str]:
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(workdir) in cmd:
            out.append(f"process {p.info['pid']}: {cmd[:100]}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    out += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if tag in line]
    nss = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out += [f"netns {line.split()[0]}" for line in nss.splitlines() if tag in line]
    found = detect_cgroups()
    if isinstance(found, Cgroups):
        out += [f"cgroup {d}" for d in found.run_dirs(tag) if d.exists()]
    if (STATE_DIR / f"{tag}.json").exists():
        out.append("the run's record")
    return out


def _tag(text: str) -> str:
    m = re.search(r"bridge debr([0-9a-f]{6})", text)
    assert m, text[-2000:]
    return m.group(1)


@namespaced
@pytest.mark.timeout(420)
def test_a_reduced_namespaced_demo_reports_each_board_link_and_leaves_nothing(tmp_path: Path) -> None:
    """The reduced demo as CI runs it (as root ``--boards auto`` picks namespaces, so this is also
    test_demo's reduced demo there): it completes with the failover, every sample once and an LC
    verdict that agrees with what was counted, and each board's address, link and limits."""
    report_file, workdir = tmp_path / "report.json", tmp_path / "demo"
    epochs, images = 6, 900
    args = ["--epochs", str(epochs), "--images", str(images), "--kill-after", "3", "--workdir", str(workdir)]
    proc = subprocess.run(
        [EXE, "demo", "--boards", "namespaces", *args, "--json-out", str(report_file)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert report_file.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(report_file.read_text())
    assert r["namespaced"] and "own network namespaces" in r["boundaries"] and "TLS" in r["boundaries"]
    addresses = [b["address"] for b in r["boards"]]
    assert len(set(addresses)) == 4 and all(a.startswith("10.201.") for a in addresses)
    assert {b["node"]: b["link"] for b in r["boards"]}["nano"].startswith("50 Mb/s")
    assert all(b["limits"] and "CPU" in b["limits"] for b in r["boards"])
    assert r["state"] == "completed" and r["accounting"]["ok"], r["problems"]
    assert r["prediction"]["predicted_s"] > 0 and r["prediction"]["actual_s"] > 0
    assert "link" in proc.stdout and "predicted by generation 1" in proc.stdout
    check_reduced_demo(r, proc, epochs * images)
    time.sleep(0.5)
    assert _left_behind(_tag(proc.stdout), workdir) == []


@namespaced
@pytest.mark.timeout(240)
def test_a_namespaced_demo_answers_the_operators_cli_and_stopped_with_sigterm_leaves_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [EXE, "demo", "--boards", "namespaces", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = ""
        deadline = time.monotonic() + 90
        while "profiling the boards" not in seen:  # the cluster is up and busy
            assert time.monotonic() < deadline and proc.poll() is None, seen[-2000:]
            seen += proc.stdout.readline()
        # the CLI as the operator (what --keep tells one to use) asks the coordinator without
        # taking over its connection (with the coordinator's own login, `status` said the
        # coordinator was offline: its client id taken over, its last will fired)
        status = subprocess.run(
            [EXE, "--config", str(workdir / "etc" / "operator.toml"), "status"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stdout[-1000:] + status.stderr[-1000:]
        assert "mqtt.disconnected" not in (workdir / "logs" / "coordinator.log").read_text()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        tag = _tag(seen)
        deadline = time.monotonic() + 15
        while _left_behind(tag, workdir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _left_behind(tag, workdir) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_without_root_the_demo_falls_back_to_shared_boards_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deepedge.demo._cluster as cluster_module

    monkeypatch.setattr(cluster_module, "why_not_usable", lambda: "not root (network namespaces ... need root)")
    auto = DemoCluster(tmp_path, cluster_profiles(4))
    assert auto._boundaries() == "shared"
    assert "fallback: not root" in auto.mode_note and "plaintext on loopback" in auto.mode_note
    with pytest.raises(Exception, match="--boards namespaces: not root"):
        DemoCluster(tmp_path, cluster_profiles(4), boundaries="namespaces")._boundaries()
