"""``deepedge bench makespan --scenarios tight,step,diurnal``: the "no LC deadline missed" promise
against the naive choices, on the demo's emulated boards, in one run. Two boards by default, one
per vCPU, each with its LC app: on the demo's 4 boards two boards share a vCPU, so one board's
training slows another board's LC app, which no cap of that app's own board can prevent (the
emulation's artefact: real boards do not share CPUs).

- ``tight``: deadlines of ``tight_factor`` x each LC app's p95 alone (the demo's 3.5x is loose
  enough that full-intensity training never breaks it). The same job under the uniform split
  (torchrun's), an LC-unaware proportional split (the deepedge planner with LC apps ignored:
  shares by rate, every cap 1) and deepedge (the knowledge base's surrogate, the forecast).
- ``step`` / ``diurnal``: the LC apps' request rate follows a trace from submission (20 -> 40
  req/s; a compressed day 10 .. 40 req/s), deepedge with its forecast against today's
  miss-then-back-off controller (``lc_control = "reactive"``).

Before the jobs the LC boards are profiled for interference through their node daemons
(``deepedge profile NODE --interference``, a small budget) into the coordinator's knowledge base.
Every report over its deadline is a miss, the workers' start included."""

from __future__ import annotations

import asyncio
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepedge.bench._makespan import full_intensity_rates
from deepedge.config import ClusterConfig, Config
from deepedge.demo import DemoCluster, DemoOptions, cluster_profiles, run_cluster_job
from deepedge.demo._data import make_image_folder
from deepedge.demo._report import fmt, plan_generations
from deepedge.demo._run import JobRun
from deepedge.demo.lc_app import Trace
from deepedge.errors import DeepEdgeError
from deepedge.profiling._design import Space
from deepedge.profiling._forecast import ENVELOPE_FACTOR
from deepedge.profiling._remote import profile_interference

__all__ = ["LcRow", "lc_markdown", "run_lc_scenarios"]

STEP = "step:20,40,12"
DIURNAL = "diurnal:10,40,30"
TRACES = {"step": STEP, "diurnal": DIURNAL}  # the scenarios that follow a request-rate trace
# the controllers a trace scenario may run (--controllers), by key: (row name, lc_control, the
# coordinator's settings); "trend" is deepedge with its seasonal forecast off, the season's A/B
CONTROLLERS = {
    "forecast": ("deepedge (forecast)", "forecast", ""),
    "trend": ("deepedge (trend only)", "forecast", "forecast_seasons = false\n"),
    "reactive": ("miss-then-back-off (today)", "reactive", ""),
}
DEFAULT_CONTROLLERS = ("forecast", "reactive")


def check_controllers(controllers: tuple[str, ...]) -> None:
    """A ValueError unless ``controllers`` are keys of CONTROLLERS, at least one, each once."""
    if not controllers or any(c not in CONTROLLERS for c in controllers) or len(set(controllers)) != len(controllers):
        raise ValueError(f"controllers: each of {', '.join(CONTROLLERS)} at most once, not {controllers}")


@dataclass
class LcRow:
    scenario: str
    controller: str
    completed: bool
    makespan_s: float | None
    training_s: float | None
    ideal_s: float | None  # epochs x N / sum of full-intensity rates (heartbeats of the run)
    capped_ideal_s: float | None  # the last plan's own bound: with its caps
    reports: int
    misses: int
    startup_misses: int
    worst_over_ms: float  # the worst p95 over the deadline (0 if none)
    generations: int
    replans: tuple[str, ...]
    worst_ratio: float = 0.0  # the worst p95 / its deadline over every report of the job
    median_ratio: float = 0.0  # the median p95 / deadline
    rates: dict[str, float] | None = None  # node -> full-intensity samples/s seen in this run
    refused: str = ""  # why the coordinator refused the job at submit (it could not promise the deadlines)
    untrained_misses: int = 0  # misses whose window saw no worker of the job training anywhere
    offboard_misses: int = 0  # misses whose app's board was in none of the job's plans during the window
    alone_reports: int = 0  # the LC apps alone just before, same trace and deadlines, no job
    alone_misses: int = 0
    timeline: dict[str, object] | None = None  # what happened when (:func:`timeline`), for --timeline
    knowledge: dict[str, dict[str, Any]] | None = None  # the LC apps' models at start (knowledge_summary)


def timeline(run: JobRun) -> dict[str, object]:
    """One job's run in time, seconds from its submission: every LC report counted (its p95 and
    whether a worker of the job trained in its window), those of the apps alone before it, the
    plans (each node's share and cap), the events, each node's worker states from its heartbeats
    (where they changed) and the LC models each plan's caps came from. What the table's counts
    are made of, to see where misses fall against the workers' start, the trace's steps and the
    re-plans, and why a cap was what it was."""
    w, t0 = run.watch, run.submitted_ts

    def rel(ts: float) -> float:
        return round(ts - t0, 2)

    states: dict[str, list[list[object]]] = {}
    for hb in w.beats:
        seen = states.setdefault(hb.node, [])
        now = [str(hb.state), hb.generation, hb.step >= 1]  # (state, generation, stepped)
        if not seen or seen[-1][1:] != now:
            seen.append([rel(hb.ts), *now])
    first = w.first_step_ts()
    return {
        "submitted_ts": round(t0, 3),
        "first_step_s": rel(first) if first else None,
        "finished_s": rel(run.finished_ts) if run.finished_ts else None,
        "apps": {
            name: {
                "node": a.node,
                "deadline_ms": a.deadline_ms,
                "reports": [[rel(ts), round(p, 2), trained] for ts, p, trained in a.series],
                "alone": [[rel(ts), round(p, 2)] for ts, p, _ in run.alone[name].series] if name in run.alone else [],
            }
            for name, a in w.apps.items()
        },
        "plans": [
            [g, rel(p.ts), {x.node: [x.share, round(x.intensity_cap, 3)] for x in p.assignments}]
            for g, p in sorted(w.plans.items())
        ],
        "events": [[rel(e.ts), e.event, e.node, e.message[:200]] for e in w.events if e.ts >= t0 - 1.0],
        # generation -> the LC models its caps were planned from (plan.published's lc_models)
        "lc_models": {
            str(e.fields.get("generation")): e.fields.get("lc_models")
            for e in w.events
            if e.event == "plan.published" and e.fields.get("lc_models")
        },
        "worker_states": states,  # node -> [[t, state, generation, stepped], ...] where any changed
    }


def _row(scenario: str, controller: str, run: JobRun, epochs: int, size: int, boards: int) -> LcRow:
    w = run.watch
    first, done = w.first_step_ts(), run.finished_ts
    rates = full_intensity_rates(run)
    plan = w.plan
    worst = max((p - (a.deadline_ms or 0.0) for a in w.apps.values() for _, p in a.over), default=0.0)
    ratios = [p / a.deadline_ms for a in w.apps.values() if a.deadline_ms for p in a.p95s]
    return LcRow(
        scenario,
        controller,
        w.progress is not None and w.progress.state == "completed",
        round(done - run.submitted_ts, 1) if done else None,
        round(done - first, 1) if done and first else None,
        round(epochs * size / sum(rates.values()), 1) if len(rates) == boards else None,
        round(plan.ideal_makespan_s, 1) if plan and plan.ideal_makespan_s else None,
        sum(a.reports for a in w.apps.values()),
        sum(a.violations for a in w.apps.values()),
        sum(a.startup_violations for a in w.apps.values()),
        round(worst, 1),
        len(w.plans),
        tuple(g.why for g in plan_generations(run)[1:]),
        round(max(ratios, default=0.0), 3),
        round(statistics.median(ratios), 3) if ratios else 0.0,
        rates,
        untrained_misses=sum(a.untrained_violations for a in w.apps.values()),
        offboard_misses=sum(a.offboard_violations for a in w.apps.values()),
        alone_reports=sum(a.reports for a in run.alone.values()),
        alone_misses=sum(a.violations for a in run.alone.values()),
        timeline=timeline(run),
    )


def knowledge_summary(path: Path, deadlines: dict[str, float], rate: float) -> dict[str, dict[str, Any]]:
    """Each LC app's knowledge-base model as the planner first meets it at ``rate`` (req/s) with
    no background load: its kind and cross-validated figures, the width of its upper bound (upper
    / median at u = 0.6), and the table's cap: what the planner's first plan reads from it, the
    highest intensity whose upper p95 (the curve the coordinator hands the planner, no live reports
    yet) stays under (1 - PLAN_HEADROOM) x the app's deadline, by the planner's bisection (0 if
    none). The caps a job starts from; the live reports move them later. What makes one run's caps
    differ from another's."""
    from deepedge.coordinator._learning import PLAN_HEADROOM, InterferenceModel
    from deepedge.coordinator.planner._caps import largest_within
    from deepedge.profiling import CapTable, KnowledgeBase

    kb = KnowledgeBase(path)
    out: dict[str, dict[str, Any]] = {}
    for s in kb.profiles():
        app = s.key.app
        doc = kb.show(s.id) or {}
        model = doc.get("model")
        if app not in deadlines or not model:
            continue
        table = CapTable.from_dict(model["cap_table"])
        limit = (1 - PLAN_HEADROOM) * deadlines[app]
        upper, median = table.upper_ms(0.6, rate), table.median_ms(0.6, rate)
        first = InterferenceModel().surrogate_model(app, deadlines[app], table, rate, 0.0)
        mix = model["cv"].get("mix_median_ape")
        out[app] = {
            "kind": model["kind"],
            "runs": s.runs,
            "cv_median_ape": round(float(model["cv"]["median_ape"]), 4),
            "cv_coverage": round(float(model["cv"]["coverage"]), 3),
            # leave-one-mix-out (what the choice was made on); None in profiles from before it
            "cv_mix_ape": None if mix is None else round(float(mix), 4),
            "rate": rate,
            "median_ms_at_0.6": round(median, 2),
            "upper_ms_at_0.6": round(upper, 2),
            "width_at_0.6": round(upper / max(median, 1e-9), 3),
            "deadline_ms": round(deadlines[app], 2),
            "table_cap": round(largest_within(first.predict_ms, limit), 3),
        }
    return out


def knowledge_line(scenario: str, knowledge: dict[str, dict[str, Any]]) -> str:
    """One sentence of :func:`knowledge_summary` for the markdown."""
    parts = [
        f"{app} {k['kind']} (CV median error {k['cv_median_ape']:.1%}"
        + ("" if k.get("cv_mix_ape") is None else f", leaving each stressor mix out {k['cv_mix_ape']:.1%}")
        + f", coverage {k['cv_coverage']:.0%}; "
        f"at u 0.6 and {k['rate']} req/s {k['median_ms_at_0.6']} ms median, upper bound "
        f"{k['width_at_0.6']:.2f}x; table cap {k['table_cap']:.2f} for {k['deadline_ms']} ms)"
        for app, k in sorted(knowledge.items())
    ]
    return f"{scenario}: " + "; ".join(parts) if parts else f"{scenario}: no knowledge-base model"


# deadlines from the median p95 alone of 3 disjoint latency windows: from one window they varied
# 2x between runs (the detector's 14.2 to 26.3 ms at the same 2x), and every figure with them
CALIBRATE_WINDOWS = 3
DEFAULT_LC_RATE = 20.0  # req/s of the demo's LC apps with no trace (lc_app --period-ms 50)
AFTER_PROFILE_S = 20.0  # a latency window (5 s) and the coordinator's anchor (30 reports, 15 s)
# The profiles' request rates reach past the traces' peak by what the coordinator may plan for:
# its forecast's envelope (ENVELOPE_FACTOR x the last minute's highest rate) over reports that
# are themselves noisy (a Poisson count over 5 s: about +-7 % at 40 req/s). Profiled only to
# 45 req/s, every plan after the step trace's rise (51-52 req/s planned) was an extrapolation of
# the table beyond its grid, where the upper bound put an app with no training over its deadline.
RATE_REACH = ENVELOPE_FACTOR * 1.2


def profile_rate_max(traces: tuple[str, ...]) -> float:
    """The highest request rate the LC boards are profiled at for these traces (at least 45)."""
    peak = max((Trace.parse(t).peak() for t in traces), default=0.0)
    return max(45.0, round(RATE_REACH * peak, 1))


async def _profile_lc_boards(cluster: DemoCluster, budget: int, seconds: float, rate_max: float = 45.0) -> None:
    config = Config(cluster=ClusterConfig(name=cluster.cluster), broker=cluster.operator_config())
    kb = cluster.workdir / "state" / "knowledge.db"  # beside coordinator.db: what the coordinator reads
    for b in cluster.boards:
        if b.lc_app:
            await profile_interference(
                config,
                b.node,
                kb,
                app=b.lc_app,
                budget=budget,
                adaptive=max(1, budget // 6),
                seconds=seconds,
                space=Space(rate_min=10.0, rate_max=rate_max),
            )


async def _set_deadlines(cluster: DemoCluster, deadlines: dict[str, float]) -> None:
    from deepedge.broker_schemas import Topics
    from deepedge.transport import MqttTransport, Requester

    topics = Topics(cluster.cluster)
    async with MqttTransport(cluster.operator_config()) as t, Requester(t, topics, timeout_s=15) as rpc:
        for b in cluster.boards:
            if b.lc_app in deadlines:
                reply = await rpc.request(
                    topics.node_command(b.node, "set-deadline"),
                    {"app": b.lc_app, "deadline_ms": round(deadlines[b.lc_app], 1)},
                )
                if not reply.ok:
                    raise RuntimeError(f"set-deadline on {b.node}: {reply.error}")
    await asyncio.sleep(1.0)  # the next latency reports carry them


def run_lc_scenarios(
    scenarios: tuple[str, ...] = ("tight", "step", "diurnal"),
    epochs: int = 6,
    images: int = 3000,
    tight_factor: float = 1.5,
    trace_factor: float = 2.0,
    nodes: int = 2,
    profile_budget: int = 40,
    profile_seconds: float = 2.5,
    alone_s: float = 40.0,
    progress: bool = True,
    workdir: Path | None = None,
    checked_before: bool = True,
    trace_lead_s: float = 0.0,
    controllers: tuple[str, ...] = DEFAULT_CONTROLLERS,
) -> list[LcRow]:
    """Each scenario on a fresh cluster (what the LC feedback taught in one run must not carry
    into the next), deepedge first; the knowledge base profiled once, on the first cluster, and
    copied to the others (every board of the same model reuses it). Before each job, the LC apps
    alone for ``alone_s`` under the same trace and deadlines: the share they miss with no job.
    ``checked_before``: every board checks each job once before its alone period, so that every
    controller's job meets the boards' pre-flight cache alike (a retraining these boards ran
    before); without it the first job of each cluster pays the check's torch part and the next
    ones do not. ``trace_lead_s``: the traces start this long before each submission (the apps'
    request-rate history holds them when the job is planned). Every job decodes its images: the
    boards' decoded-dataset caches are emptied before each (until 2026-12-04 the first job of a
    cluster, deepedge's, decoded them and the next ones loaded what it kept: a start that cost
    only the first controller). ``controllers``: under the traces, the controllers run, in this
    order (keys of CONTROLLERS; "trend": deepedge with its coordinator's seasonal forecast off,
    ``coordinator.forecast_seasons = false``, the seasonal forecast's A/B; the order is the
    caller's, so that a series of runs can swap it)."""
    check_controllers(controllers)
    root = workdir or Path(tempfile.mkdtemp(prefix="deepedge-bench-lc-"))
    boards = cluster_profiles(nodes, with_lc=True)
    rows: list[LcRow] = []
    runs: dict[str, list[tuple[str, DemoOptions, str]]] = {}  # (controller, options, coordinator settings)
    if "tight" in scenarios:
        for name, split, control in (
            ("deepedge", "planned", "forecast"),
            ("LC-unaware proportional", "planned", "unaware"),
            ("uniform", "uniform", "unaware"),  # (unaware: its misses must not lower the next run's caps)
        ):
            opts = DemoOptions(epochs=epochs, images=images, kill_after_s=None, split=split, lc_control=control)
            opts.deadline_factor, opts.alone_s, opts.checked_before = tight_factor, alone_s, checked_before
            opts.calibrate_windows = CALIBRATE_WINDOWS
            runs.setdefault("tight", []).append((name, opts, ""))
    for scenario, trace in TRACES.items():
        if scenario in scenarios:
            for name, control, settings in (CONTROLLERS[c] for c in controllers):
                opts = DemoOptions(epochs=epochs, images=images, kill_after_s=None, lc_control=control)
                opts.deadline_factor, opts.lc_trace, opts.alone_s = trace_factor, trace, alone_s
                opts.checked_before, opts.calibrate_windows = checked_before, CALIBRATE_WINDOWS
                opts.trace_lead_s = trace_lead_s
                runs.setdefault(scenario, []).append((name, opts, settings))
    t0 = time.monotonic()
    kb: Path | None = None
    for scenario, jobs in runs.items():
        work = root / f"cluster-{scenario}"
        data = work / "data"  # inside the boards' training.data_roots (the cluster's workdir)
        size = make_image_folder(data, images)
        # the shared boards, as designed (board i and its LC app on vCPU i mod 2), also as root
        with DemoCluster(work, boards, boundaries="shared") as cluster:
            # the LC apps alone (their p95 sets the deadlines), the boards' rate profiles, and the
            # knowledge base: profiled through the LC boards' daemons on the first cluster
            calibration = asyncio.run(
                run_cluster_job(
                    cluster,
                    jobs[0][1],
                    job="bench-lc-calibrate",
                    dataset=data,
                    dataset_size=size,
                    output=cluster.workdir / "out-calibrate",
                    calibrate=True,
                    submit=False,
                )
            ).calibration
            target = cluster.workdir / "state" / "knowledge.db"  # beside coordinator.db
            if kb is None and profile_budget:
                if progress:
                    print(f"  profiling the LC boards ({profile_budget} runs each) ...", flush=True)
                traces = tuple(TRACES[s] for s in runs if s in TRACES)
                asyncio.run(_profile_lc_boards(cluster, profile_budget, profile_seconds, profile_rate_max(traces)))
                kb = target
                # the boards share this machine: each profile's stressors loaded the other LC
                # board too; let the coordinator see the apps' own load again before a job
                time.sleep(AFTER_PROFILE_S)
            elif kb is not None:
                shutil.copyfile(kb, target)
            for k, (name, opts, settings) in enumerate(jobs):
                # each controller starts from the same knowledge, on a coordinator restarted
                # with its own settings and its memory deleted: the first one too, whose
                # coordinator had otherwise run through the calibration and the profile
                # (until 2026-12-06 16:50 only the controllers after the first were restarted)
                cluster.restart_coordinator(extra=settings)
                cluster.forget_decoded()  # and decodes its images, as the first job did
                deadlines = {a: opts.deadline_factor * p for a, p in calibration.items()}
                asyncio.run(_set_deadlines(cluster, deadlines))
                rate = Trace.parse(opts.lc_trace).peak() if opts.lc_trace else DEFAULT_LC_RATE
                knowledge = knowledge_summary(target, deadlines, rate) if target.exists() else {}
                try:
                    run = asyncio.run(
                        run_cluster_job(
                            cluster,
                            opts,
                            job=f"bench-lc-{k}",
                            dataset=data,
                            dataset_size=size,
                            output=cluster.workdir / f"out-{k}",
                            calibrate=False,
                        )
                    )
                except DeepEdgeError as exc:
                    if "submit refused" not in str(exc):
                        raise
                    refused = LcRow(scenario, name, False, None, None, None, None, 0, 0, 0, 0.0, 0, ())
                    refused.refused = str(exc).split("submit refused: ", 1)[-1][:400]
                    rows.append(refused)
                    if progress:
                        print(f"  {scenario}, {name}: refused at submit", flush=True)
                    continue
                row = _row(scenario, name, run, epochs, size, len(boards))
                row.knowledge = knowledge
                if row.timeline is not None:
                    row.timeline["knowledge"] = knowledge
                rows.append(row)
                if progress:
                    print(
                        f"  {scenario}, {name}: training {fmt(row.training_s)}, {row.misses} of {row.reports} reports "
                        f"over the deadline ({time.monotonic() - t0:.0f} s)",
                        flush=True,
                    )
    # the ideal bound needs every board's full-intensity rate: a plan that keeps a board idle (cap
    # 0) does not measure it, so the rates are pooled over every run of the bench (board properties)
    pooled: dict[str, list[float]] = {}
    for r in rows:
        for n, v in (r.rates or {}).items():
            pooled.setdefault(n, []).append(v)
    if len(pooled) == len(boards):
        ideal = round(epochs * size / sum(statistics.median(v) for v in pooled.values()), 2)
        for r in rows:
            r.ideal_s = ideal
    return rows


def lc_markdown(
    rows: list[LcRow],
    command: str,
    tight_factor: float,
    trace_factor: float,
    profile: tuple[int, float] = (40, 2.5),
    checked_before: bool = True,
    trace_lead_s: float = 0.0,
) -> str:
    since = f"from {trace_lead_s:g} s before the submission" if trace_lead_s > 0 else "from submission"
    ideal = next((r.ideal_s for r in rows if r.ideal_s), None)
    rate_max = profile_rate_max(tuple(TRACES[s] for s in {r.scenario for r in rows} if s in TRACES))
    lines = [
        f"Command: `{command}`. Machine: {platform.machine()}, Python {platform.python_version()}; the demo's "
        "emulated boards (relative speeds 1.0 / 0.6 / 0.4 / 0.25 from the first; board i and its LC app on vCPU "
        "i mod 2), two LC apps (detector on orin-nx, tracker on xavier-nx); each scenario on a fresh cluster. "
        f"Deadlines (from each app's p95 alone, the median of {CALIBRATE_WINDOWS} disjoint 5 s windows): "
        f"{tight_factor:g}x that in "
        f"`tight`, {trace_factor:g}x under the traces, alone at the trace's peak rate (`step` = `{STEP}`, "
        f"`diurnal` = `{DIURNAL}`: req/s, {since}). The LC boards were profiled for interference into "
        "the coordinator's knowledge base first "
        f"({profile[0]} runs of {profile[1]:g} s per app at 10-{rate_max:g} req/s, through their daemons). "
        + (
            "Every board checked each job once before its alone period, so the job's own pre-flight was answered "
            "from the boards' pre-flight cache (a retraining these boards ran before; `node.preflight_cache_s`)."
            if checked_before
            else "No board checked a job before (`--cold-preflight`): each cluster's first job paid its pre-flight's "
            "torch part, the next ones found it in the boards' pre-flight cache."
        )
        + " Every job decoded its images (the boards' decoded-dataset caches emptied before it, as for a "
        "retraining on new data).",
        "",
        "A miss is any latency report (p95 over a 5 s window, every 0.5 s) over its deadline while the job runs, "
        "the workers' start included; in brackets, those during the workers' start, and those whose window "
        "saw no worker of the job training on any board (at start-up, the workers importing torch and loading "
        "data; later, the job waiting for room, or the app's own noise: not a capped worker's training), and "
        "those whose app's own board was in none of the job's plans during the window (on separate boards the "
        "job could not cause those; here the boards share one machine's two vCPUs, and it may). "
        "Alone: the LC apps just before each job, with no job, under the same trace and deadlines for the "
        "`--alone-seconds` (every report counted the same way): the share this machine misses on its own. "
        "Ideal: epochs x N / sum of the boards' full-intensity rates (no LC "
        "constraint; the boards' rates pooled over the bench's runs)" + (f": {ideal:.2f} s." if ideal else "."),
        "",
        "| scenario | controller | completed | training | makespan | vs ideal | vs LC-unaware | reports "
        "| misses (start-up; nothing training; board out of the job) | share missed | alone: missed "
        "| p95 / deadline: median, worst | plans |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        unaware = next((u for u in rows if u.scenario == r.scenario and u.controller.startswith("LC-unaware")), None)
        vs_unaware = (
            f"{r.training_s / unaware.training_s:.2f}x" if unaware and unaware.training_s and r.training_s else "-"
        )
        vs_ideal = f"{r.training_s / r.ideal_s:.2f}x" if r.training_s and r.ideal_s else "-"
        share = f"{r.misses / r.reports:.1%}" if r.reports else "-"
        alone = f"{r.alone_misses / r.alone_reports:.1%} of {r.alone_reports}" if r.alone_reports else "-"
        if r.refused:
            lines.append(f"| {r.scenario} | {r.controller} | refused at submit |" + " - |" * 10)
            continue
        lines.append(
            f"| {r.scenario} | {r.controller} | {'yes' if r.completed else 'NO'} "
            f"| {fmt(r.training_s)} | {fmt(r.makespan_s)} "
            f"| {vs_ideal} | {vs_unaware} | {r.reports} "
            f"| {r.misses} ({r.startup_misses}; {r.untrained_misses}; {r.offboard_misses}) | {share} | {alone} "
            f"| {r.median_ratio:.2f}, {r.worst_ratio:.2f} "
            f"| {r.generations}{' (' + ', '.join(r.replans) + ')' if r.replans else ''} |"
        )
    for r in rows:
        if r.refused:
            lines += ["", f"{r.scenario}, {r.controller}: refused — {r.refused}"]
    seen = {r.scenario: r.knowledge for r in rows if r.knowledge is not None}
    if seen:
        lines += ["", "The knowledge base at each scenario's start (the trace's peak rate, no background load):", ""]
        lines += [f"- {knowledge_line(s, k)}" for s, k in seen.items()]
    return "\n".join(lines) + "\n"
