"""``deepedge bench makespan --boards namespaces``: the demo's four boards with real boundaries
(``deepedge.netem``: a namespace, a shaped link and a cgroup each; the secure broker on the
bridge), training MobileNetV2 (GroupNorm, ~2.2 M parameters: ~9 MB of float32 gradients a step).

- *makespan*: the same job under the deepedge plan, a uniform split over every board and
  proportional shares over every board (LB-BSP-style: no board left out), with the nano on a
  50 Mb/s link, against the ideal bound that includes the best achievable all-reduce; predicted
  (generation 1's plan) against actual makespan for each.
- *load*: a CPU stressor in one board's cgroup toggled every 10 s; each step's time against a
  per-step oracle that knows the load; plan generations against process-group re-forms.
- *failover*: a participant's cable pulled (``ip link set down``) mid-job, and a participant's
  link degraded to 1 % of its rate: detection, resumption, steps lost.

Before the measured jobs a short warm-up job over every board lets the coordinator learn each
board's rate, link and start-up, as earlier jobs would have on a real cluster."""

from __future__ import annotations

import asyncio
import itertools
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deepedge.broker_schemas import Heartbeat
from deepedge.coordinator.planner import JobModel, NetworkModel, NodeModel, Planner, PlannerConfig, allreduce_s
from deepedge.demo import DemoCluster, DemoOptions, cluster_profiles, run_cluster_job
from deepedge.demo._data import make_image_folder
from deepedge.demo._run import JobRun, gradient_bytes
from deepedge.netem import EmulatedNetwork
from deepedge.training import StepTiming, read_records, step_timing

__all__ = [
    "CommRow",
    "FailoverRow",
    "LinkRow",
    "LoadResult",
    "links_markdown",
    "run_comm_bench",
    "run_link_failover",
    "run_links_makespan",
    "run_load_bench",
]

MODEL = "mobilenet_v2-gn"
BASE_MS = 20.0  # the fastest board's time per sample (the real compute here is ~3-6 ms)
BATCH = 64
LR = 0.02
WARM_IMAGES = 320  # the warm-up job: 5 steps over every board


@dataclass
class LinkRow:
    scenario: str
    split: str
    completed: bool
    makespan_s: float | None  # submission to completion
    training_s: float | None  # first completed step to completion
    predicted_s: float | None  # generation 1's predicted makespan (from submission)
    predicted_last_s: float | None  # the last generation's
    ideal_s: float | None  # steps x the best step any subset could take, all-reduce included
    generations: int
    reforms: int
    participants: tuple[str, ...]
    grad_dtype: str
    timing: StepTiming | None
    left_out: dict[str, str] = field(default_factory=dict)
    predicted_step_s: float | None = None  # generation 1's
    predicted_startup_s: float | None = None  # generation 1's (since its plan)
    startup_s: float | None = None  # actual: from submission to the first step's start


@dataclass
class LoadResult:
    board: str
    steps: int
    median_step_s: float
    median_oracle_s: float
    mean_step_s: float
    mean_oracle_s: float
    generations: int
    reforms: int
    toggles: int
    rates: dict[str, tuple[float, float]]  # board -> (samples/s unloaded, loaded) at full intensity
    completed: bool


@dataclass
class FailoverRow:
    fault: str
    board: str
    detected_s: float | None
    resumed_s: float | None
    steps_lost: int | None
    completed: bool
    note: str = ""


# ---- shared ------------------------------------------------------------------------------------


def _cluster(workdir: Path, data_root: Path) -> DemoCluster:
    boards = cluster_profiles(4, with_lc=False)
    return DemoCluster(workdir, boards, base_sample_ms=BASE_MS, boundaries="namespaces", data_roots=(data_root,))


def _opts(split: str, epochs: int, images: int) -> DemoOptions:
    return DemoOptions(
        epochs=epochs,
        images=images,
        kill_after_s=None,
        split=split,
        model=MODEL,
        global_batch=BATCH,
        base_sample_ms=BASE_MS,
        learning_rate=LR,
        timeout_s=900,
    )


def _job(
    cluster: DemoCluster,
    name: str,
    split: str,
    data: Path,
    size: int,
    epochs: int,
    during: Callable[[JobRun], None] | None = None,
) -> JobRun:
    return asyncio.run(
        run_cluster_job(
            cluster,
            _opts(split, epochs, size),
            job=name,
            dataset=data,
            dataset_size=size,
            output=cluster.workdir / f"out-{name}",
            on_tick=during,
            calibrate=False,
        )
    )


def _warm_up(cluster: DemoCluster, root: Path) -> None:
    data = root / "warm"
    if not data.exists():
        make_image_folder(data, WARM_IMAGES)
    _job(cluster, "warm-up", "proportional", data, WARM_IMAGES, 1)


def _data(root: Path, images: int) -> tuple[Path, int]:
    data = root / "data"
    if not data.exists():
        make_image_folder(data, images)
    return data, images


def _completed(run: JobRun) -> bool:
    p = run.watch.progress
    return p is not None and p.state == "completed"


def _rates(runs: list[JobRun]) -> dict[str, float]:
    per: dict[str, list[float]] = {}
    for run in runs:
        for hb in run.watch.beats:
            if hb.state == "training" and hb.intensity > 0.05 and hb.samples_per_s > 0 and hb.pending_s == 0:
                per.setdefault(hb.node, []).append(hb.samples_per_s / hb.intensity)
    return {n: statistics.median(v) for n, v in per.items()}


def _links(runs: list[JobRun]) -> dict[str, float]:
    per: dict[str, list[float]] = {}
    for run in runs:
        for hb in run.watch.beats:
            if hb.link_bps > 0:
                per.setdefault(hb.node, []).append(hb.link_bps)
    return {n: statistics.median(v) for n, v in per.items()}


def ideal_with_allreduce(rates: dict[str, float], links: dict[str, float], steps: int, model_bytes: int) -> float:
    """``steps`` x the shortest step any subset of the boards could take (the steps after the
    first, as "training" counts from the first step's end): its batch perfectly
    balanced over its rates, plus the cheapest all-reduce deepedge can do over its links as
    probed (float16, no latency, no overhead)."""
    best = float("inf")
    nodes = [n for n in rates if n in links]
    for k in range(1, len(nodes) + 1):
        for subset in itertools.combinations(nodes, k):
            compute = BATCH / sum(rates[n] for n in subset)
            ar = allreduce_s(k, model_bytes / 2, min(links[n] for n in subset), 0.0)
            best = min(best, compute + ar)
    return steps * best


def _row(scenario: str, split: str, run: JobRun, ideal: float | None, output: Path) -> LinkRow:
    w = run.watch
    first, done = w.first_step_ts(), run.finished_ts
    plans = [w.plans[g] for g in sorted(w.plans)]
    left: dict[str, str] = {}
    for e in w.events:
        if e.event == "node.left_out" and e.node:
            left[e.node] = e.message
    timing = step_timing(output)
    started = None
    if first is not None and timing is not None:
        started = round(first - run.submitted_ts - timing.median_interval_ms / 1000, 1)
    return LinkRow(
        scenario,
        split,
        _completed(run),
        round(done - run.submitted_ts, 1) if done else None,
        round(done - first, 1) if done and first else None,
        round(plans[0].predicted_makespan_s, 1) if plans else None,
        round(plans[-1].predicted_makespan_s, 1) if plans else None,
        round(ideal, 1) if ideal else None,
        len(plans),
        sum(not p.same_group for p in plans),
        tuple(a.node for a in plans[-1].assignments) if plans else (),
        plans[-1].grad_dtype if plans else "",
        timing,
        left,
        round(plans[0].predicted_step_s, 3) if plans else None,
        round(plans[0].predicted_startup_s + (plans[0].ts - run.submitted_ts), 1) if plans else None,
        started,
    )


# ---- makespan ----------------------------------------------------------------------------------


def run_links_makespan(
    epochs: int = 2, images: int = 1280, progress: bool = True, workdir: Path | None = None
) -> list[LinkRow]:
    root = workdir or Path(tempfile.mkdtemp(prefix="deepedge-bench-links-"))
    data, size = _data(root, images)
    scenario = "nano on 50 Mb/s Wi-Fi, the others wired 1 Gb/s"
    rows: list[LinkRow] = []
    with _cluster(root / "makespan", root) as cluster:
        _warm_up(cluster, root)
        runs: dict[str, JobRun] = {}
        for split in ("proportional", "uniform", "planned"):
            t0 = time.monotonic()
            runs[split] = _job(cluster, f"bench-{split}", split, data, size, epochs)
            if progress:
                r = runs[split]
                took = round(r.finished_ts - r.submitted_ts, 1) if r.finished_ts else None
                print(f"  {split}: {took} s ({time.monotonic() - t0:.0f} s)", flush=True)
        steps = epochs * -(-size // BATCH) - 1  # "training" runs from the first step's end
        ideal = ideal_with_allreduce(
            _rates(list(runs.values())), _links(list(runs.values())), steps, gradient_bytes(MODEL)
        )
        for split, run in runs.items():
            rows.append(_row(scenario, split, run, ideal, cluster.workdir / f"out-bench-{split}"))
    return rows


# ---- background load ---------------------------------------------------------------------------


def _stressor() -> list[str]:
    found = shutil.which("stress-ng")
    if found:
        return [found, "--cpu", "1", "--cpu-method", "loop", "--quiet"]
    return [sys.executable, "-c", "while True: pass"]


def run_load_bench(
    epochs: int = 2, images: int = 1920, period_s: float = 10.0, board: str = "xavier-nx", workdir: Path | None = None
) -> LoadResult:
    root = workdir or Path(tempfile.mkdtemp(prefix="deepedge-bench-load-"))
    data, size = _data(root, images)
    toggles: list[tuple[float, bool]] = []  # (time.time(), stressor on)

    def during(run: JobRun) -> None:
        first = run.watch.first_step_ts()
        if first is None or run.finished_ts is not None:
            return
        phase = int((time.time() - first) // period_s)
        on = phase % 2 == 1
        if (toggles[-1][1] if toggles else False) != on:
            if on:
                cluster.start_process("stressor", _stressor(), board)
            else:
                cluster.stop_process("stressor")
            toggles.append((time.time(), on))

    with _cluster(root / "load", root) as cluster:
        _warm_up(cluster, root)
        run = _job(cluster, "bench-load", "planned", data, size, epochs, during)
        cluster.stop_process("stressor")
        output = cluster.workdir / "out-bench-load"
    return _load_result(run, toggles, board, output)


def _loaded(at: float, toggles: list[tuple[float, bool]]) -> bool:
    state = False
    for ts, on in toggles:
        if ts <= at:
            state = on
    return state


def _load_result(run: JobRun, toggles: list[tuple[float, bool]], board: str, output: Path) -> LoadResult:
    """Each step's interval against the oracle's step for the load at that moment: the
    planner's best step (the same model the coordinator plans with) on the rates measured with
    and without the load, the links as probed, the overhead and the all-reduce's efficiency as
    measured in this run."""
    w = run.watch
    beats = [hb for hb in w.beats if hb.state == "training" and hb.intensity > 0.05 and hb.pending_s == 0]
    rates: dict[str, tuple[float, float]] = {}
    for node in {hb.node for hb in beats}:
        free = [
            hb.samples_per_s / hb.intensity for hb in beats if hb.node == node and not _loaded(hb.ts - 1.5, toggles)
        ]
        busy = [hb.samples_per_s / hb.intensity for hb in beats if hb.node == node and _loaded(hb.ts - 1.5, toggles)]
        unloaded = statistics.median(free) if free else 0.0
        rates[node] = (unloaded, statistics.median(busy) if busy and node == board else unloaded)
    links = _links([run])
    overhead = {
        n: statistics.median([max(0.0, hb.step_s - hb.compute_s - hb.allreduce_s) for hb in beats if hb.node == n])
        for n in rates
    }
    steps_total = run.watch.progress.total_steps if run.watch.progress else 0
    model_bytes = gradient_bytes(MODEL)
    planner = Planner(PlannerConfig(allow_half=True))
    net = NetworkModel(latency_s=max((hb.link_latency_s for hb in beats), default=0.0005))
    efficiency = _efficiency(beats, links)
    oracle: dict[bool, float] = {}
    for loaded in (False, True):
        nodes = [
            NodeModel(
                n,
                rate=r[1] if loaded else r[0],
                max_share=BATCH,
                overhead_s=overhead[n],
                bandwidth_bps=links.get(n, 1e9) / efficiency,
            )
            for n, r in rates.items()
            if r[0] > 0
        ]
        oracle[loaded] = planner.plan(nodes, JobModel(BATCH, steps_total * BATCH, 1, model_bytes), net).step_s
    intervals, oracles = [], []
    ends = _step_ends(output)
    for s in sorted(ends):
        if s - 1 in ends:
            intervals.append(ends[s] - ends[s - 1])
            oracles.append(oracle[_loaded(ends[s - 1], toggles)])
    plans = [w.plans[g] for g in sorted(w.plans)]
    return LoadResult(
        board,
        len(intervals),
        round(statistics.median(intervals), 3) if intervals else 0.0,
        round(statistics.median(oracles), 3) if oracles else 0.0,
        round(statistics.fmean(intervals), 3) if intervals else 0.0,
        round(statistics.fmean(oracles), 3) if oracles else 0.0,
        len(plans),
        sum(not p.same_group for p in plans),
        len(toggles),
        {n: (round(a, 1), round(b, 1)) for n, (a, b) in rates.items()},
        _completed(run),
    )


def _step_ends(output: Path) -> dict[int, float]:
    """When each step was done (the last rank's record of the generation that counts)."""
    kept: dict[int, tuple[int, float]] = {}  # step -> (generation, end)
    for rows in read_records(output).values():
        for row in rows:
            s, g, t = int(row["step"]), int(row["gen"]), float(row["t"])
            old = kept.get(s)
            if old is None or g > old[0]:
                kept[s] = (g, t)
            elif g == old[0]:
                kept[s] = (g, max(t, old[1]))
    return {s: t for s, (_, t) in kept.items()}


def _efficiency(beats: list[Heartbeat], links: dict[str, float]) -> float:
    """Measured / modelled all-reduce time of this run's steps (as the coordinator learns it)."""
    by_gen: dict[tuple[int, int], list[Heartbeat]] = {}
    for hb in beats:
        if hb.allreduce_s > 0 and hb.comm_bytes > 0:
            by_gen.setdefault((hb.generation, hb.step), []).append(hb)
    ratios = []
    for group in by_gen.values():
        k = len({hb.node for hb in group})
        if k < 2 or any(hb.node not in links for hb in group):
            continue
        modelled = allreduce_s(k, group[0].comm_bytes, min(links[hb.node] for hb in group), 0.0)
        ratios.append(min(hb.allreduce_s for hb in group) / modelled)
    return statistics.median(ratios) if ratios else 1.0


# ---- failover ------------------------------------------------------------------------------------


def run_link_failover(
    epochs: int = 2, images: int = 1280, after_s: float = 8.0, workdir: Path | None = None
) -> list[FailoverRow]:
    """tx2 (a participant of the deepedge plan) loses its link ``after_s`` into training: its
    cable pulled, then, in a second job, its link degraded to 1 % of its rate."""
    root = workdir or Path(tempfile.mkdtemp(prefix="deepedge-bench-linkfail-"))
    data, size = _data(root, images)
    rows = []
    target = "tx2"
    for fault in ("cut", "degrade"):
        struck: list[float] = []

        def during(run: JobRun, fault: str = fault, struck: list[float] = struck) -> None:
            first = run.watch.first_step_ts()
            if struck or first is None or time.time() - first < after_s or run.finished_ts is not None:
                return
            plan = run.watch.plan
            if plan is None or all(a.node != target for a in plan.assignments):
                return
            if fault == "cut":
                struck.append(cluster.cut_link(target))
            else:
                link = cluster.net.boards[target].link if cluster.net else None
                assert link is not None
                struck.append(cluster.set_link(target, link.scaled(0.01)))

        with _cluster(root / f"fail-{fault}", root) as cluster:
            _warm_up(cluster, root)
            run = _job(cluster, f"bench-{fault}", "planned", data, size, epochs, during)
        rows.append(_failover_row(fault, target, run, struck[0] if struck else None))
    return rows


def _failover_row(fault: str, node: str, run: JobRun, at: float | None) -> FailoverRow:
    w = run.watch
    if at is None:
        return FailoverRow(fault, node, None, None, None, _completed(run), "the fault was never injected")
    reactions = [
        e.ts
        for e in w.events
        if e.ts >= at
        and (
            (e.event == "node.dead" and e.node == node)
            or e.event in ("link.stalled",)
            or (e.event == "plan.improving")
            or (e.event == "plan.published" and e.ts > at)
        )
    ]
    detected = min(reactions) - at if reactions else None
    after = [p for g, p in sorted(w.plans.items()) if p.ts >= at and all(a.node != node for a in p.assignments)]
    gen = after[0].generation if after else None
    resumed_hb = next(
        (hb for hb in w.beats if gen is not None and hb.generation >= gen and hb.state == "training" and hb.ts >= at),
        None,
    )
    before = [hb.step for hb in w.beats if hb.ts <= at and hb.state == "training"]
    lost = max(0, max(before) - (resumed_hb.step - 1)) if before and resumed_hb is not None else None
    note = "" if after else f"{node} was never left out"
    return FailoverRow(
        fault,
        node,
        round(detected, 2) if detected is not None else None,
        round(resumed_hb.ts - at, 2) if resumed_hb else None,
        lost,
        _completed(run),
        note,
    )


# ---- markdown ------------------------------------------------------------------------------------


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def links_markdown(
    rows: list[LinkRow],
    load: LoadResult | None,
    failover: list[FailoverRow],
    command: str,
    comm: list[CommRow] | None = None,
) -> str:
    lines = [
        f"Command: `{command}`. Machine: {platform.machine()}, {platform.python_version()}; the demo's four boards "
        "in their own network namespaces and cgroups (deepedge.netem), links shaped with tc, the broker as "
        f"`deepedge deploy` sets it up; {MODEL} on generated 32x32 images, global batch {BATCH}, each sample paced "
        f"to at least {BASE_MS:g} ms / speed (speeds 1.0 / 0.6 / 0.4 / 0.25).",
        "",
    ]
    if rows:
        lines += [
            "Makespan is from submission to completion; training from the first completed step. Predicted: the "
            "first plan's predicted makespan (time since submission + start-up + steps x predicted step). The ideal "
            "bound is the steps x the shortest step any subset of the boards could take at their measured rates with "
            "the cheapest all-reduce over their probed links (float16, no latency, no overhead).",
            "",
            "| scenario | split | completed | makespan | predicted (gen 1) | predicted / actual | training "
            "| ideal bound | vs uniform | vs proportional | training / ideal | plans / re-forms | trained on | dtype |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            uni = next((u for u in rows if u.split == "uniform" and u.scenario == r.scenario), None)
            pro = next((u for u in rows if u.split == "proportional" and u.scenario == r.scenario), None)

            def ratio(a: float | None, b: float | None) -> str:
                return f"{a / b:.2f}x" if a and b else "-"

            lines.append(
                f"| {r.scenario} | {r.split} | {'yes' if r.completed else 'NO'} | {_s(r.makespan_s)} "
                f"| {_s(r.predicted_s)} | {ratio(r.predicted_s, r.makespan_s)} | {_s(r.training_s)} | {_s(r.ideal_s)} "
                f"| {ratio(uni.makespan_s if uni else None, r.makespan_s)} "
                f"| {ratio(pro.makespan_s if pro else None, r.makespan_s)} | {ratio(r.training_s, r.ideal_s)} "
                f"| {r.generations} / {r.reforms} | {', '.join(r.participants)} | {r.grad_dtype} |"
            )
        lines += [
            "",
            "Where the time went (medians of the workers' step records), and the first plan's prediction of it: "
            "start-up is from submission to the first step's start (pre-flight, workers starting, the group "
            "forming).",
            "",
            "| split | steps | interval | compute | all-reduce | rest | predicted step | start-up "
            "| predicted start-up |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            t = r.timing
            if t is not None:
                pred = f"{r.predicted_step_s * 1000:.0f} ms" if r.predicted_step_s else "-"
                lines.append(
                    f"| {r.split} | {t.steps} | {t.median_interval_ms:.0f} ms | {t.median_compute_ms:.0f} ms "
                    f"| {t.median_allreduce_ms:.0f} ms | {t.median_rest_ms:.0f} ms | {pred} | {_s(r.startup_s)} "
                    f"| {_s(r.predicted_startup_s)} |"
                )
        for r in rows:
            for node, why in r.left_out.items():
                lines.append(f"\n{r.split}: {node} left out: {why}")
    if load is not None:
        rates = ", ".join(f"{n} {a:g} -> {b:g}" for n, (a, b) in load.rates.items() if a != b)
        lines += [
            "",
            f"Background load: a CPU stressor in {load.board}'s cgroup, on and off every 10 s ({load.toggles} "
            f"toggles; its rate at full intensity, samples/s unloaded -> loaded: {rates or '-'}). Each step against "
            "the oracle's step for the load at that moment (the planner's best plan on the rates measured with and "
            "without the load).",
            "",
            "| steps | median step | median oracle | ratio | mean step | mean oracle | plan generations | re-forms "
            "| completed |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {load.steps} | {load.median_step_s * 1000:.0f} ms | {load.median_oracle_s * 1000:.0f} ms "
            f"| {load.median_step_s / max(1e-9, load.median_oracle_s):.2f}x | {load.mean_step_s * 1000:.0f} ms "
            f"| {load.mean_oracle_s * 1000:.0f} ms | {load.generations} | {load.reforms} "
            f"| {'yes' if load.completed else 'NO'} |",
        ]
    if comm:
        lines += [
            "",
            "Float16 communication, measured before it was adopted: the gradient all-reduce of MobileNetV2 "
            f"({gradient_bytes(MODEL) / 1e6:.1f} MB in float32) between the namespaced boards, gloo, median of 5 "
            "(the slowest rank's; float16 includes the casts there and back).",
            "",
            "| boards | slowest link | float32 | float16 | float16 / float32 |",
            "|---|---|---|---|---|",
        ]
        for c in comm:
            lines.append(
                f"| {', '.join(c.boards)} | {c.slowest_link} | {c.float32_s * 1000:.0f} ms "
                f"| {c.float16_s * 1000:.0f} ms | {c.float16_s / c.float32_s:.2f} |"
            )
    if failover:
        lines += [
            "",
            "Failover on namespaced boards: tx2 (training in the deepedge plan) loses its link mid-job. Detected: the "
            "coordinator's first reaction (node.dead, link.stalled, a new plan); resumed: the first step of a "
            "survivor in a plan without tx2; steps lost: steps redone.",
            "",
            "| fault | detected | resumed | steps lost | completed | note |",
            "|---|---|---|---|---|---|",
        ]
        for f in failover:
            what = "cable pulled (ip link set down)" if f.fault == "cut" else "link degraded to 1 % of its rate"
            lines.append(
                f"| {what} | {_s(f.detected_s)} | {_s(f.resumed_s)} | {'-' if f.steps_lost is None else f.steps_lost} "
                f"| {'yes' if f.completed else 'NO'} | {f.note} |"
            )
    return "\n".join(lines) + "\n"


# ---- communication: float32 vs float16 ------------------------------------------------------------

_ALLREDUCE = r"""
import datetime, json, os, statistics, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch, torch.distributed as dist
from deepedge.training._rendezvous import interface_of
rank, world, port, n = (int(x) for x in sys.argv[1:5])
host, me = sys.argv[5], sys.argv[6]
iface = interface_of(me)
if iface:
    os.environ["GLOO_SOCKET_IFNAME"] = iface
store = dist.TCPStore(host, port, world, is_master=rank == 0, timeout=datetime.timedelta(seconds=60))
dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
torch.set_num_threads(1)
grads = torch.randn(n)
out = {}
for dtype in ("float32", "float16"):
    times = []
    for i in range(6):
        dist.barrier()
        t = time.perf_counter()
        flat = grads.div(64).half() if dtype == "float16" else grads.clone()
        dist.all_reduce(flat)
        flat = flat.float()
        times.append(time.perf_counter() - t)
    out[dtype] = statistics.median(times[1:])
print(json.dumps(out), flush=True)
dist.destroy_process_group()
"""


def _args(rank: int, world: int, port: int, n: int, host: str, net: EmulatedNetwork, board: str) -> list[str]:
    return [str(rank), str(world), str(port), str(n), host, net.boards[board].address]


@dataclass
class CommRow:
    boards: tuple[str, ...]
    slowest_link: str
    float32_s: float
    float16_s: float


def run_comm_bench(elements: int = 0) -> list[CommRow]:
    """The gradient all-reduce of MobileNetV2 (its float32 size) over namespaced boards' links,
    in float32 and in float16 (the cast and back included): three wired boards, then with the
    nano's 50 Mb/s link."""
    import subprocess

    n = elements or gradient_bytes(MODEL) // 4
    boards = cluster_profiles(4, with_lc=False)
    rows = []
    with EmulatedNetwork([b.spec() for b in boards]) as net:
        for names in (("orin-nx", "xavier-nx", "tx2"), ("orin-nx", "xavier-nx", "tx2", "nano")):
            host = net.boards[names[0]].address
            port = 29400 + len(names)
            procs = [
                subprocess.Popen(
                    net.argv(b, [sys.executable, "-c", _ALLREDUCE, *_args(i, len(names), port, n, host, net, b)]),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    preexec_fn=net.preexec(b),
                )
                for i, b in enumerate(names)
            ]
            outs = [p.communicate(timeout=300)[0] for p in procs]
            import json

            results = [json.loads(o.strip().splitlines()[-1]) for o in outs if o.strip()]
            slowest = min((net.boards[b].link for b in names), key=lambda lk: lk.rate_bps)
            rows.append(
                CommRow(
                    names,
                    slowest.describe(),
                    round(max(r["float32"] for r in results), 3),
                    round(max(r["float16"] for r in results), 3),
                )
            )
    return rows
