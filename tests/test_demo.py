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
from deepedge.netem import why_not_usable
from tests.helpers.demo_checks import check_reduced_demo

# as root the demo's boards are namespaced (``--boards auto``): test_demo_netns runs those demos
NAMESPACED = why_not_usable() is None

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto, pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto")]

EXE = str(Path(sys.executable).parent / "deepedge")


def _ours(p: psutil.Process, workdir: Path) -> bool:
    try:
        return p.environ().get(RUN_MARK) == str(workdir)
    except psutil.Error:
        return False


def _leftovers(workdir: Path) -> list[str]:
    """This demo's processes still running: its workdir on their command line, or in their
    environment (RUN_MARK: its workers and LC apps; the machine may run other demos meanwhile)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(workdir) in cmd or _ours(p, workdir):
            out.append(f"{p.info['pid']}: {cmd[:120]}")
    return out


@pytest.mark.timeout(300)
@pytest.mark.skipif(NAMESPACED, reason="namespaced boards here: test_demo_netns runs this demo")
def test_reduced_demo_completes_with_failover_exact_accounting_and_an_honest_lc_verdict(tmp_path: Path) -> None:
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
    check_reduced_demo(json.loads(report_file.read_text()), proc, 10 * 1200)
    time.sleep(0.5)
    assert _leftovers(workdir) == []  # nothing left running


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "how",
    [
        "SIGINT",
        "Ctrl-C",
        pytest.param(
            "SIGTERM",
            marks=pytest.mark.skipif(NAMESPACED, reason="namespaced boards here: test_demo_netns stops that demo"),
        ),
    ],
)
def test_a_demo_interrupted_or_killed_mid_run_leaves_nothing_running(tmp_path: Path, how: str) -> None:
    """SIGINT (the demo stops its cluster), a terminal's Ctrl-C (SIGINT to the demo's whole
    process group) and SIGTERM (the demo dies at once: its children get SIGTERM from
    PR_SET_PDEATHSIG) while the boards are being profiled, with the broker going away at the
    same moment as everything else (once, a coordinator then kept reconnecting for ever: a
    cancellation swallowed by asyncio.wait_for). The broker is out of the demo's process group,
    so a Ctrl-C does not take it down before the boards have said goodbye (2026-12-06: it did)."""
    workdir = tmp_path / "demo"
    err = tmp_path / "stderr.txt"
    with err.open("wb") as err_fh:
        proc = subprocess.Popen(
            [EXE, "demo", "--workdir", str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=err_fh,
            # SIGINT as a terminal's Ctrl-C finds it: a suite started in the background of a shell
            # without job control (`cmd &`) inherits it ignored, and its demo would never see the
            # signal (2026-12-05 23:21: the demo ran on for 60 s and the test failed)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            start_new_session=how == "Ctrl-C",  # a terminal's foreground group, as an interactive shell makes one
        )
    try:
        deadline = time.monotonic() + 90
        while not any(  # the LC apps have been measured alone, and one of this demo's boards is being profiled
            "deepedge.training.profile" in " ".join(p.info["cmdline"] or []) and _ours(p, workdir)
            for p in psutil.process_iter(["cmdline"])
        ):
            assert time.monotonic() < deadline and proc.poll() is None, "the demo did not get to profiling"
            time.sleep(0.2)
        brokers = [  # mosquitto -c <workdir>/...
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0].endswith("mosquitto") and str(workdir) in " ".join(p.info["cmdline"])
        ]
        assert brokers or MOSQUITTO is None
        assert all(os.getpgid(pid) != os.getpgid(proc.pid) for pid in brokers)
        if how == "Ctrl-C":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT if how == "SIGINT" else signal.SIGTERM)
        # 17-21 s alone on the 2-vCPU VM; over 30 s twice in the full CI suite (2026-12-05), cause
        # not found: a stop that never ends still fails here (and at the test's 120 s timeout)
        assert proc.wait(60) == 130
        if how != "SIGTERM":
            assert "interrupted; stopping the emulated cluster" in err.read_text()
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


def test_forget_decoded_empties_every_boards_decoded_dataset_cache(tmp_path: Path) -> None:
    """A bench empties the caches before each job, so that every controller's job decodes its
    images (the first job of a cluster used to decode and the next ones to load what it kept)."""
    import torch

    from deepedge.demo._cluster import DemoCluster
    from deepedge.training._data_cache import DataCache

    cluster = DemoCluster(tmp_path, cluster_profiles(2))
    x, y = torch.zeros((4, 3, 8, 8), dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    caches = {b.node: DataCache(str(cluster.data_cache(b.node)), 16) for b in cluster.boards}
    for cache in caches.values():
        assert cache.store("k" * 64, x, y, ["a", "b"])
        assert cache.load("k" * 64, ["a", "b"], 4, 8) is not None
    other = tmp_path / "notes.txt"  # anything else in a cache folder, or behind a link, stays
    other.write_text("keep")
    (cluster.data_cache("orin-nx") / "notes.txt").write_text("keep")
    (cluster.data_cache("orin-nx") / "ds-link.pt").symlink_to(other)
    assert cluster.forget_decoded() == 2
    assert all(cache.load("k" * 64, ["a", "b"], 4, 8) is None for cache in caches.values())
    assert cluster.forget_decoded() == 0
    assert other.read_text() == "keep" and (cluster.data_cache("orin-nx") / "notes.txt").exists()


@pytest.mark.timeout(240)
def test_the_demo_cluster_trains_mobilenet_v2_and_resnet18_on_the_cpu(tmp_path: Path) -> None:
    """The demo's job with ``--model``: its cluster (broker, coordinator, two node daemons, real
    workers; no LC apps and no profiling, to keep it short) trains each BatchNorm net, one job
    after the other, for four steps of 64 images at 32x32, split by the planner, every sample
    once. (About 17 s a job with four boards on the 2-vCPU VMs of 2026-11, 73-91 s on the
    slowest, where a worker's start alone takes 4.5 s of CPU: two boards, one cluster.)"""
    import asyncio

    import torch

    from deepedge.demo import DemoCluster, DemoOptions, run_cluster_job
    from deepedge.demo._data import make_image_folder
    from deepedge.training import verify_accounting

    workdir = tmp_path / "demo"
    size = make_image_folder(workdir / "data", 256)
    with DemoCluster(workdir, cluster_profiles(2, with_lc=False)) as cluster:
        for model in ("mobilenet_v2", "resnet18"):
            opts = DemoOptions(
                model=model, epochs=1, images=size, global_batch=64, kill_after_s=None, profile_s=None, timeout_s=100
            )
            output = workdir / f"output-{model}"
            run = asyncio.run(
                run_cluster_job(
                    cluster,
                    opts,
                    job=f"demo-{model.replace('_', '-')}",
                    dataset=workdir / "data",
                    dataset_size=size,
                    output=output,
                    calibrate=False,
                )
            )
            progress = run.watch.progress
            assert progress is not None and progress.state == "completed", (model, progress)
            accounting = verify_accounting(output, size, 1)
            assert accounting == {"ok": True, "missing": 0, "duplicated": 0, "samples": 256}, model
            meta = torch.load(output / "model.pt", weights_only=True)["meta"]
            assert meta["steps"] == 4 and meta["final"], model
            assert all(torch.isfinite(torch.tensor(loss)) for _, loss in meta["loss_curve"]), model


@pytest.mark.timeout(180)
def test_a_demo_job_that_does_not_finish_in_time_is_cancelled(tmp_path: Path) -> None:
    """A job still running at the run's timeout is cancelled (the benches run several jobs on one
    cluster: a job left running held the boards, and the next controller's submit was refused);
    after a restart of the coordinator the next job runs."""
    import asyncio

    from deepedge.demo import DemoCluster, DemoOptions, run_cluster_job
    from deepedge.demo._data import make_image_folder
    from deepedge.demo._run import JobRun

    workdir = tmp_path / "demo"
    size = make_image_folder(workdir / "data", 256)
    opts = DemoOptions(epochs=500, images=size, global_batch=64, kill_after_s=None, profile_s=None, timeout_s=3)
    with DemoCluster(workdir, cluster_profiles(2, with_lc=False)) as cluster:

        def job(name: str, options: DemoOptions) -> JobRun:
            return asyncio.run(
                run_cluster_job(
                    cluster,
                    options,
                    job=name,
                    dataset=workdir / "data",
                    dataset_size=size,
                    output=workdir / f"output-{name}",
                    calibrate=False,
                )
            )

        run = job("demo-slow", opts)
        assert run.finished_ts is None
        progress = run.watch.progress
        assert progress is not None and progress.state == "cancelled", progress
        # the LC bench restarts the coordinator between controllers: the next job runs on it, and
        # what the last one learned of the boards is forgotten (the coordinator's memory restored
        # it, and the second controller inherited the first one's cap limits until 2026-12-06)
        from deepedge.coordinator import JobStore
        from deepedge.errors import DeepEdgeError

        db = workdir / "state" / "coordinator.db"
        store = JobStore(db)
        store.remember({"node:ghost": '{"cap_limit": 0.5}'}, [], now=time.time())
        store.close()
        # ... and the bench's --controllers trend restarts it with its seasonal forecast off;
        # settings the config refuses fail before the coordinator is stopped
        with pytest.raises(DeepEdgeError, match="forecast_season"):
            cluster.restart_coordinator(extra="forecast_season = false\n")
        assert "forecast_season" not in cluster.config_path("coordinator").read_text()
        assert cluster.restart_coordinator(extra="forecast_seasons = false\n") >= 1
        assert "forecast_seasons = false" in cluster.config_path("coordinator").read_text()
        store = JobStore(db)
        assert store.recall(since=0.0) == []
        store.close()
        short = DemoOptions(epochs=1, images=size, global_batch=64, kill_after_s=None, profile_s=None, timeout_s=60)
        again = job("demo-after-restart", short)
    assert again.watch.progress is not None and again.watch.progress.state == "completed", again.watch.progress


@pytest.mark.parametrize(
    ("args", "model", "epochs"),
    [
        ([], "cnn-small", 12),
        (["--model", "resnet18"], "resnet18", 3),
        (["--model", "mobilenet_v2", "--epochs", "1"], "mobilenet_v2", 1),
    ],
)
def test_demo_model_option_reaches_the_job_and_an_unknown_model_is_refused(
    monkeypatch: pytest.MonkeyPatch, args: list[str], model: str, epochs: int
) -> None:
    from typer.testing import CliRunner

    import deepedge.demo
    from deepedge.cli import app

    seen = []

    def run_demo(opts: object, show: object = None) -> None:
        seen.append(opts)
        raise KeyboardInterrupt  # stop before any cluster starts

    monkeypatch.setattr(deepedge.demo, "run_demo", run_demo)
    CliRunner().invoke(app, ["demo", *args])
    assert [(o.model, o.epochs) for o in seen] == [(model, epochs)]  # type: ignore[attr-defined]
    refused = CliRunner().invoke(app, ["demo", "--model", "vgg16"])
    assert refused.exit_code == 2 and "one of cnn-small, resnet18" in refused.output
