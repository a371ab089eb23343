"""What every reduced ``deepedge demo`` run must show in its JSON report and output, whichever
boards it ran on (test_demo on shared boards, test_demo_netns on namespaced ones)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def check_reduced_demo(r: dict[str, Any], proc: subprocess.CompletedProcess[str], samples: int) -> None:
    assert r["state"] == "completed", r["problems"]
    assert r["accounting"]["ok"] and r["accounting"]["samples"] == samples
    assert all(b["profiled_samples_per_s"] for b in r["boards"])  # profiled before the job
    f = r["failover"]
    assert f is not None and f["node"] == "tx2" and f["resumed_s"] is not None
    killed = [b for b in r["boards"] if b["killed"]]
    assert [b["node"] for b in killed] == ["tx2"]
    replanned = [g["generation"] for g in r["generations"] if g["why"].startswith("node.dead tx2")]
    assert replanned, r["generations"]
    assert all("tx2" not in g["shares"] for g in r["generations"] if g["generation"] >= replanned[0])
    assert {a["app"] for a in r["lc"]} == {"detector", "tracker"}
    assert all(a["reports"] > 0 for a in r["lc"]), r["lc"]
    assert r["model_path"] and Path(r["model_path"]).exists()
    assert r["loss_last"] < r["loss_first"]
    assert "every sample once" in proc.stdout
    # Whether an LC app missed its deadline depends on this machine's timing at that moment (a
    # shared CI machine's too): the demo measures it and `scripts/demo_runs.sh` counts it over many
    # runs, a test does not assert it. The verdict must agree with what was counted.
    missed = sum(a["violations"] for a in r["lc"])
    assert r["ok"] == (missed == 0), (missed, r["problems"])
    assert proc.returncode == (0 if missed == 0 else 1)
    assert ("PASS" in proc.stdout) == (missed == 0)
