"""``deepedge demo``: the whole loop on an emulated heterogeneous cluster on this machine.

Start a broker, a coordinator, node daemons for emulated boards and two real LC apps; measure each
LC app alone and give it a deadline; submit a retraining job on generated images; SIGKILL one
board mid-job; show live progress; end with a report whose facts all come from the cluster's
MQTT topics and the job's output (accounting, model)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deepedge import compat
from deepedge.broker_schemas import ArgValue, JobSpec, Topics
from deepedge.demo._boards import BoardProfile, cluster_profiles
from deepedge.demo._cluster import DemoCluster
from deepedge.demo._data import make_image_folder
from deepedge.demo._report import DemoReport, build_report
from deepedge.demo._watch import AppRecord, ClusterWatch
from deepedge.errors import DeepEdgeError
from deepedge.ops import CommandError, run_profile
from deepedge.transport import MqttTransport, Requester

__all__ = ["DEMO_EPOCHS", "DEMO_MODELS", "DemoOptions", "follow_trace", "gradient_bytes", "run_cluster_job", "run_demo"]

TERMINAL = ("completed", "failed", "cancelled")

# The models the demo's job may train (the LC apps keep their own small CNN); each step all-reduces
# its float32 parameters (``gradient_bytes``: cnn-small 40 kB, MobileNetV2 8.9 MB, ResNet-18 44.7 MB
# at the demo's 10 classes), the planner's cost model.
DEMO_MODELS = ("cnn-small", "resnet18", "resnet18-gn", "mobilenet_v2", "mobilenet_v2-gn")
# Default epochs by model: ResNet-18 and MobileNetV2 take about 3 ms a sample at 32x32 on one
# core of the development VM (cnn-small 0.24 ms), so their jobs are shorter.
DEMO_EPOCHS = {"cnn-small": 12}


@dataclass
class DemoOptions:
    nodes: int = 4
    kill_after_s: float | None = 12.0  # seconds after the first training step; None: no kill
    keep: bool = False
    workdir: Path | None = None
    images: int = 3000
    epochs: int = 12
    global_batch: int = 128
    base_sample_ms: float = 2.0  # the fastest board's emulated time per sample
    deadline_factor: float = 3.5  # LC deadline = factor x the app's p95 measured alone (~30 fps for ~8.5 ms)
    with_lc: bool = True
    split: str = "planned"
    broker: str = "auto"
    timeout_s: float = 600.0
    calibrate_s: float = 4.0
    # the p95 alone is the median of this many reports a latency window apart (disjoint windows):
    # one window's p95 varied 2x between the LC bench's runs (7.1 to 13.2 ms for the detector)
    calibrate_windows: int = 1
    profile_s: float | None = 1.5  # seconds per intensity level of each board's profile; None: no profile
    boards: str = "auto"  # auto, namespaces or shared (deepedge.demo.DemoCluster)
    model: str = "cnn-small"  # the job's model (DEMO_MODELS); the LC apps keep theirs
    learning_rate: float = 0.05
    lc_control: str = "forecast"  # the job's lc_control: forecast | reactive | unaware
    lc_trace: str | None = None  # the LC apps' request rate from submission: constant:R | step:.. | diurnal:..
    # the job's trace starts this long before the submission, so the apps' request-rate history
    # already holds it when the job is planned (a season the forecast can find: two periods)
    trace_lead_s: float = 0.0
    # before submitting, the LC apps alone this long under the same trace and deadlines, their
    # reports counted apart (JobRun.alone): the share missed with no job at all (benches)
    alone_s: float = 0.0
    # before the alone period, every board checks the job once (the ``preflight`` command), so the
    # job's own pre-flight is answered from the boards' pre-flight cache: a job these boards
    # trained before, as a recurring retraining is (benches; node.preflight_cache_s)
    checked_before: bool = False


def gradient_bytes(model: str, classes: int = 10) -> int:
    """Bytes of one float32 gradient of ``model`` (what the all-reduce carries per step)."""
    from deepedge.training import build_model

    return 4 * sum(p.numel() for p in build_model(model, classes).parameters() if p.requires_grad)


@dataclass
class JobRun:
    """One job's run on a cluster: what the watch saw, plus the demo's own clock marks."""

    watch: ClusterWatch
    submitted_ts: float = 0.0
    finished_ts: float | None = None
    kill: tuple[str, float] | None = None  # (node, time of SIGKILL)
    calibration: dict[str, float] = field(default_factory=dict)  # app -> p95 alone (ms)
    deadlines: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, float] = field(default_factory=dict)  # node -> profiled samples/s at full intensity
    alone: dict[str, AppRecord] = field(default_factory=dict)  # app -> its reports with no job (DemoOptions.alone_s)
    phase: str = ""  # what the demo is doing before the job (shown by the live view)


def kill_target(boards: list[BoardProfile]) -> str:
    """The fastest board that runs no LC app (its loss matters, and the LC apps keep running);
    else the last board."""
    free = [b for b in boards if not b.lc_app]
    return max(free, key=lambda b: b.speed).node if free else boards[-1].node


async def _wait(predicate: Callable[[], bool], watch: ClusterWatch, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        watch.check()
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeepEdgeError(f"demo: timed out after {timeout:g} s waiting for {what}")
        watch.changed.clear()
        with contextlib.suppress(TimeoutError):
            async with compat.timeout(min(left, 0.5)):
                await watch.changed.wait()


def _latest_p95(watch: ClusterWatch, app: str) -> float:
    latest = watch.apps[app].latest
    assert latest is not None
    return latest.p95_ms


async def calibrate_lc(
    cluster: DemoCluster, watch: ClusterWatch, rpc: Requester, topics: Topics, opts: DemoOptions, run: JobRun
) -> None:
    """Run each LC app alone for a while, then set its deadline to factor x its p95 alone. With a
    request-rate trace, alone at the trace's peak rate (a whole latency window of it): "factor x
    alone" then means at the load the job will meet, not at the apps' default 20 req/s (under the
    step trace 20 -> 40 req/s the apps alone came within 0.8 of deadlines set at 20 req/s)."""
    from deepedge.demo.lc_app import Trace
    from deepedge.profiling._runner import write_rate

    apps = {b.lc_app: b for b in cluster.boards if b.lc_app}
    if not apps:
        return
    cluster.start_lc_apps()
    await _wait(
        lambda: all(
            (r := watch.apps.get(a)) is not None and r.latest is not None and r.latest.count >= 20 for a in apps
        ),
        watch,
        90,
        "the LC apps' first latency reports",
    )
    files = _rate_files(cluster)
    peak = Trace.parse(opts.lc_trace).peak() if opts.lc_trace else None
    try:
        if peak is not None:
            for f in files:
                write_rate(f, peak)
            await asyncio.sleep(cluster.latency_window_s)  # the window then holds the peak rate only
        await asyncio.sleep(opts.calibrate_s)
        alone = {a: [_latest_p95(watch, a)] for a in apps}
        for _ in range(max(1, opts.calibrate_windows) - 1):
            await asyncio.sleep(cluster.latency_window_s)  # the next window shares no request
            for a in apps:
                alone[a].append(_latest_p95(watch, a))
    finally:
        if peak is not None:
            _remove(files)
    for app, board in apps.items():
        run.calibration[app] = statistics.median(alone[app])
        deadline = round(opts.deadline_factor * run.calibration[app], 1)
        run.deadlines[app] = deadline
        reply = await rpc.request(
            topics.node_command(board.node, "set-deadline"), {"app": app, "deadline_ms": deadline}
        )
        if not reply.ok:
            raise DeepEdgeError(f"demo: set-deadline on {board.node} refused: {reply.error}")
    await _wait(lambda: all(watch.apps[a].deadline_ms == run.deadlines[a] for a in apps), watch, 30, "the LC deadlines")


async def apps_alone(cluster: DemoCluster, watch: ClusterWatch, opts: DemoOptions) -> dict[str, AppRecord]:
    """The LC apps alone for ``opts.alone_s`` under the job's trace (from its start, as the job will
    meet it) and deadlines, every report counted as the job's are: the share over the deadline with
    no job at all, the floor a controller's share is read against (this machine's own noise). The
    watch's records start afresh afterwards, and the apps get a latency window at their own rate
    again, so the job's first reports are as they would have been without this."""
    before = watch.counting_lc
    watch.counting_lc = True
    trace = asyncio.create_task(follow_trace(cluster, opts.lc_trace)) if opts.lc_trace else None
    try:
        await asyncio.sleep(opts.alone_s)
    finally:
        watch.counting_lc = before
        if trace is not None:
            trace.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trace
    alone = watch.apps
    watch.apps = {a: AppRecord(r.node, a, r.latest, r.deadline_ms) for a, r in alone.items()}
    await asyncio.sleep(cluster.latency_window_s)
    return alone


async def profile_boards(
    cluster: DemoCluster, rpc: Requester, topics: Topics, opts: DemoOptions, run: JobRun, model: str
) -> None:
    """``deepedge profile`` on every board, as an operator would before retraining: boards without
    LC apps at full intensity only, all at once; then each board with an LC app alone at three
    intensities (its app's p95 at each), so no other profile disturbs the measurement."""
    if opts.profile_s is None:
        return

    async def one(b: BoardProfile) -> None:
        assert opts.profile_s is not None
        args: dict[str, ArgValue] = {"model": model, "seconds": opts.profile_s}
        args["levels"] = "1,0.5,0.25" if b.lc_app else "1"
        try:
            result = await run_profile(rpc, topics, b.node, args, timeout_s=120)
        except CommandError as exc:
            raise DeepEdgeError(f"demo: profiling {b.node} failed: {exc}") from None
        run.profiles[b.node] = float(result["samples_per_s"])

    await asyncio.gather(*(one(b) for b in cluster.boards if not b.lc_app))
    for b in cluster.boards:
        if b.lc_app:
            await one(b)


async def follow_trace(cluster: DemoCluster, spec: str) -> None:
    """Make every LC app follow the request-rate trace ``spec`` from now on, through the rate
    file each reads (``deepedge.demo.lc_app``); removed at the end (the apps go back to 20/s)."""
    from deepedge.demo.lc_app import Trace
    from deepedge.profiling._runner import write_rate

    trace = Trace.parse(spec)
    files = _rate_files(cluster)
    t0 = time.monotonic()
    try:
        while True:
            rate = trace.rate_at(time.monotonic() - t0)
            for f in files:
                write_rate(f, rate)
            await asyncio.sleep(0.25)
    finally:
        _remove(files)


def _rate_files(cluster: DemoCluster) -> list[Path]:
    """The rate file each LC app of the cluster reads (``deepedge.demo.lc_app --rate-file``)."""
    from deepedge.profiling._runner import rate_file_for

    return [rate_file_for(cluster.socket(b.node), b.lc_app) for b in cluster.boards if b.lc_app]


def _remove(files: list[Path]) -> None:
    """Remove the rate files: each app goes back to its own rate."""
    for f in files:
        with contextlib.suppress(OSError):
            f.unlink()


async def check_before(cluster: DemoCluster, rpc: Requester, topics: Topics, spec: dict[str, ArgValue]) -> None:
    """Every board's pre-flight of the job (``DemoOptions.checked_before``), as the coordinator
    sends it at a submission; a refusal or a check not cached fails the run."""
    args = {k: v for k, v in spec.items() if k in JobSpec.__struct_fields__} | {"job": f"{spec['job']}-before"}
    replies = await asyncio.gather(
        *(rpc.request(topics.node_command(b.node, "preflight"), args) for b in cluster.boards)
    )
    for b, reply in zip(cluster.boards, replies, strict=True):
        if not reply.ok or not reply.result.get("ok") or reply.result.get("cache") not in ("stored", "hit"):
            raise DeepEdgeError(f"demo: {b.node}'s pre-flight before the job: {reply.error or reply.result}")


async def run_cluster_job(
    cluster: DemoCluster,
    opts: DemoOptions,
    *,
    job: str,
    dataset: Path,
    dataset_size: int,
    output: Path,
    on_tick: Callable[[JobRun], None] | None = None,
    calibrate: bool = True,
    submit: bool = True,
) -> JobRun:
    """Submit one job to a running cluster and follow it to the end (killing a board if told).
    ``submit=False``: only set the LC deadlines and profile the boards (``calibrate``)."""
    topics = Topics(cluster.cluster)
    watch = ClusterWatch(topics, job=job)
    run = JobRun(watch)
    # before the MQTT clients connect: the first call imports torch in this process, which held
    # the event loop past the clients' keepalive on a slow VM (2026-12-05: the broker dropped both,
    # and the submit found the operator's connection gone)
    model_bytes = gradient_bytes(opts.model) if submit else 0

    def tell(phase: str) -> None:
        run.phase = phase
        if on_tick is not None:
            on_tick(run)

    async with contextlib.AsyncExitStack() as stack:
        watching = MqttTransport(cluster.watch_config(), client_id=f"deepedge-demo-{job}"[:64])
        t = await stack.enter_async_context(watching)
        ops = t
        if cluster.operator_config() != cluster.watch_config():  # commands as the operator "demo"
            ops = await stack.enter_async_context(MqttTransport(cluster.operator_config()))
        watcher = asyncio.create_task(watch.run(t))
        try:
            async with Requester(ops, topics, timeout_s=90 if cluster.namespaced else 15, sender="demo") as rpc:
                tell("waiting for the coordinator and every node to be online")
                await _wait(
                    lambda: watch.coordinator_online and all(watch.alive.get(b.node) for b in cluster.boards),
                    watch,
                    90,
                    "the coordinator and every node to be online",
                )
                if calibrate:
                    tell(f"measuring the LC apps alone ({opts.calibrate_s:g} s), then setting their deadlines")
                    await calibrate_lc(cluster, watch, rpc, topics, opts, run)
                    if opts.profile_s is not None:
                        tell("profiling the boards (deepedge profile: rate alone, LC p95 per intensity)")
                    await profile_boards(cluster, rpc, topics, opts, run, opts.model)
                if not submit:
                    return run
                spec: dict[str, ArgValue] = {
                    "job": job,
                    "model": opts.model,
                    "dataset": str(dataset),
                    "dataset_size": dataset_size,
                    "output": str(output),
                    "epochs": opts.epochs,
                    "global_batch": opts.global_batch,
                    "learning_rate": opts.learning_rate,
                    "seed": 7,
                    "split": opts.split,
                    "model_bytes": model_bytes,
                    "lc_control": opts.lc_control,
                }
                if opts.checked_before:
                    tell("every board checks the job once (its pre-flight cached, as for a job trained before)")
                    await check_before(cluster, rpc, topics, spec)
                if opts.alone_s > 0:
                    if opts.checked_before:
                        # a latency window for the checks' torch imports to leave the apps'
                        # windows: the alone period's first reports held them (p95 ~2x alone for
                        # ~5 s at 06:44 on 2026-12-04: up to 11 % of its reports over, no job)
                        await asyncio.sleep(cluster.latency_window_s)
                    tell(f"the LC apps alone ({opts.alone_s:g} s, the job's trace and deadlines): the floor of misses")
                    run.alone = await apps_alone(cluster, watch, opts)
                trace = asyncio.create_task(follow_trace(cluster, opts.lc_trace)) if opts.lc_trace else None
                if trace is not None and opts.trace_lead_s > 0:
                    tell(f"the LC apps follow the job's trace for {opts.trace_lead_s:g} s before its submission")
                    await asyncio.sleep(opts.trace_lead_s)
                tell("submitting the job")
                watch.counting_lc = True
                run.submitted_ts = time.time()
                # (the coordinator asks every board for its pre-flight first)
                reply = await rpc.request(topics.coordinator_command("submit"), spec, timeout_s=60)
                if not reply.ok:
                    if trace is not None:
                        trace.cancel()
                    raise DeepEdgeError(f"demo: submit refused: {reply.error}")
                deadline = time.monotonic() + opts.timeout_s
                while watch.progress is None or watch.progress.state not in TERMINAL:
                    if time.monotonic() > deadline or watch.failed is not None:
                        break
                    first = watch.first_step_ts()
                    if (
                        opts.kill_after_s is not None
                        and run.kill is None
                        and first is not None
                        and time.time() - first >= opts.kill_after_s
                    ):
                        node = kill_target(cluster.boards)
                        run.kill = (node, cluster.kill_board(node))
                    if on_tick is not None:
                        on_tick(run)
                    watch.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with compat.timeout(0.5):
                            await watch.changed.wait()
                run.finished_ts = time.time() if watch.progress and watch.progress.state in TERMINAL else None
                watch.counting_lc = False
                if run.finished_ts is None:  # timed out: cancel it, or its workers hold the boards
                    why = (
                        "its watch of the cluster stopped"
                        if watch.failed
                        else f"not finished after {opts.timeout_s:g} s"
                    )
                    await _cancel(rpc, topics, job, f"demo: {why}", watch)
                    watch.check()
                if trace is not None:
                    trace.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await trace
                await asyncio.sleep(0.3)  # the last events
                if on_tick is not None:
                    on_tick(run)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
    return run


async def _cancel(rpc: Requester, topics: Topics, job: str, reason: str, watch: ClusterWatch) -> None:
    """Cancel a job that did not finish and wait (15 s at most) until the coordinator says so."""
    with contextlib.suppress(DeepEdgeError, TimeoutError):
        await rpc.request(topics.coordinator_command("cancel"), {"job": job, "reason": reason}, timeout_s=15)
        await _wait(lambda: watch.progress is not None and watch.progress.state in TERMINAL, watch, 15.0, "the cancel")


def _stop_after(exc: BaseException, cluster: DemoCluster) -> None:
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (the CLI makes it one)
        print("deepedge demo: interrupted; stopping the emulated cluster", file=sys.stderr, flush=True)
    cluster.stop()


def run_demo(opts: DemoOptions, show: Callable[[JobRun, DemoCluster], None] | None = None) -> DemoReport:
    """The whole demo; the cluster is stopped before returning unless ``opts.keep``."""
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="deepedge-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    size = make_image_folder(data, opts.images)
    boards = cluster_profiles(opts.nodes, with_lc=opts.with_lc)
    cluster = DemoCluster(
        workdir, boards, base_sample_ms=opts.base_sample_ms, broker_kind=opts.broker, boundaries=opts.boards
    )
    try:
        cluster.start()
    except BaseException as exc:
        _stop_after(exc, cluster)
        raise
    try:
        run = asyncio.run(
            run_cluster_job(
                cluster,
                opts,
                job="retrain-demo",
                dataset=data,
                dataset_size=size,
                output=workdir / "output",
                on_tick=(lambda r: show(r, cluster)) if show else None,
            )
        )
        report = build_report(run, cluster, opts, size, workdir / "output")
    except BaseException as exc:
        _stop_after(exc, cluster)
        raise
    if not opts.keep:
        cluster.stop()
    report.cluster = cluster
    return report
