"""``deepedge demo`` in a reduced form (fewer images and epochs, an earlier kill), with real
processes: broker, coordinator, 4 node daemons, real training workers, 2 LC apps. The facts
asserted come from the demo's JSON report, which it builds from the cluster's MQTT topics and
the job's output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from deepedge.demo import cluster_profiles
from deepedge.demo._cluster import RUN_MARK
from deepedge.embedded_broker import MOSQUITTO

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto, pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto")]

EXE = str(Path(sys.executable).parent / "deepedge")


def _leftovers(workdir: Path) -> list[str]:
    """This demo's processes still running: its workdir on their command line, or in their
    environment (RUN_MARK: its workers and LC apps; the machine may run other demos meanwhile)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        try:
            mine = p.environ().get(RUN_MARK) == str(workdir)
        except psutil.Error:
            mine = False
        if str(workdir) in cmd or mine:
            out.append(f"{p.info['pid']}: {cmd[:120]}")
    return out


@pytest.mark.timeout(300)
def test_reduced_demo_completes_with_failover_exact_accounting_and_no_lc_violation(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [
            EXE,
            "demo",
            "--epochs",
            "10",
            "--images",
            "1200",
            "--kill-after",
            "3",
            "--workdir",
            str(workdir),
            "--json-out",
            str(report_file),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert report_file.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(report_file.read_text())
    assert r["state"] == "completed", r["problems"]
    assert r["accounting"]["ok"] and r["accounting"]["samples"] == 10 * 1200
    assert all(b["profiled_samples_per_s"] for b in r["boards"])  # profiled before the job
    f = r["failover"]
    assert f is not None and f["node"] == "tx2" and f["resumed_s"] is not None
    killed = [b for b in r["boards"] if b["killed"]]
    assert [b["node"] for b in killed] == ["tx2"]
    replanned = [g["generation"] for g in r["generations"] if g["why"].startswith("node.dead tx2")]
    assert replanned, r["generations"]
    assert all("tx2" not in g["shares"] for g in r["generations"] if g["generation"] >= replanned[0])
    assert {a["app"] for a in r["lc"]} == {"detector", "tracker"}
    assert all(a["violations"] == 0 and a["reports"] > 0 for a in r["lc"]), r["lc"]
    assert r["model_path"] and Path(r["model_path"]).exists()
    assert r["loss_last"] < r["loss_first"]
    assert proc.returncode == 0 and r["ok"], r["problems"]
    assert "every sample once" in proc.stdout and "PASS" in proc.stdout
    time.sleep(0.5)
    assert _leftovers(workdir) == []  # nothing left running


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_demo_interrupted_or_killed_mid_run_leaves_nothing_running(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT: the demo stops its cluster) and SIGTERM (the demo dies at once: its
    children get SIGTERM from PR_SET_PDEATHSIG) while the boards are being profiled, with the
    broker going away at the same moment as everything else (once, a coordinator then kept
    reconnecting for ever: a cancellation swallowed by asyncio.wait_for)."""
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [EXE, "demo", "--workdir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while not any(  # this demo's LC apps (their socket is in its workdir)
            "deepedge.demo.lc_app" in (cmd := " ".join(p.info["cmdline"] or [])) and str(workdir) in cmd
            for p in psutil.process_iter(["cmdline"])
        ):
            assert time.monotonic() < deadline and proc.poll() is None, "the demo's LC apps did not start"
            time.sleep(0.2)
        time.sleep(6)  # the LC apps are measured alone (4 s), then the boards are profiled
        proc.send_signal(sig)
        proc.wait(30)
        deadline = time.monotonic() + 15
        while _leftovers(workdir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _leftovers(workdir) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for line in _leftovers(workdir):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


def test_board_layout_puts_each_lc_app_on_its_own_boards_cpu() -> None:
    boards = cluster_profiles(4)
    assert [b.speed for b in boards] == [1.0, 0.6, 0.4, 0.25]
    assert [b.lc_app for b in boards] == ["detector", "tracker", None, None]
    assert len({b.cpu for b in boards if b.lc_app}) == min(2, len({b.cpu for b in boards}))
    assert [b.node for b in cluster_profiles(6)][4:] == ["orin-nx-2", "xavier-nx-2"]
    assert all(b.lc_app is None for b in cluster_profiles(3, with_lc=False))
