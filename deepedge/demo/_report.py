"""The demo's final report: facts from the cluster's topics and the job's output, a verdict, and
its rendering (rich) and JSON form."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepedge.demo._boards import BoardProfile
from deepedge.training import StepTiming, step_timing, verify_accounting

if TYPE_CHECKING:
    from deepedge.demo._cluster import DemoCluster
    from deepedge.demo._run import DemoOptions, JobRun

__all__ = ["DemoReport", "build_report", "fmt", "plan_generations", "render_report"]

_REASONS = (
    "node.dead",
    "lc.violation",
    "lc.forecast",
    "link.changed",
    "link.stalled",
    "plan.improving",
    "plan.climbing",
    "node.joined",
    "node.drained",
    "node.undrained",
    "node.excluded",
    "node.left_out",
    "plan.infeasible",
    "plan.paused",
)


@dataclass
class Generation:
    generation: int
    at_s: float  # after the submission
    why: str
    shares: dict[str, tuple[int, float]]  # node -> (share, cap)
    predicted_makespan_s: float


@dataclass
class LcResult:
    app: str
    node: str
    alone_p95_ms: float | None
    deadline_ms: float | None
    median_p95_ms: float | None
    worst_p95_ms: float | None
    reports: int  # every report while the job ran, the workers' start included
    violations: int  # reports over the deadline: every one is a miss, the workers' start included
    startup_violations: int  # of which during the workers' start (their window covers it)
    over_at_s: list[float] = field(default_factory=list)  # when reports were over (after submission)


@dataclass
class Failover:
    node: str
    detected_s: float | None  # after the kill: the coordinator's node.dead event
    replanned_s: float | None  # the next plan generation
    resumed_s: float | None  # the first heartbeat of a survivor training in it (heartbeats every 0.5 s)
    steps_redone: int | None


@dataclass
class DemoReport:
    state: str
    steps: int
    total_steps: int
    samples_done: int
    boards: list[dict[str, Any]]
    makespan_s: float | None  # submission to completion
    training_s: float | None  # first completed step to completion
    predicted_first_s: float | None  # generation 1, on profiled (else prior) rates
    predicted_learned_s: float | None  # the last plan without a failure, on learned rates
    ideal_s: float | None  # the last plan before a kill: N epochs / sum of its rates
    generations: list[Generation]
    lc: list[LcResult]
    failover: Failover | None
    accounting: dict[str, Any]
    timing: StepTiming | None  # where the steps' time went (the workers' records)
    model_path: str | None
    loss_first: float | None
    loss_last: float | None
    problems: list[str] = field(default_factory=list)
    prediction: dict[str, Any] = field(
        default_factory=dict
    )  # generation 1's parts of its prediction, and the actual ones
    boundaries: str = ""  # how the boards were emulated (namespaces, or the shared fallback), in words
    namespaced: bool = False
    link_events: list[dict[str, Any]] = field(default_factory=list)  # links cut or changed during the job
    cluster: Any = None  # the DemoCluster, for --keep

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        cluster, self.cluster = self.cluster, None
        try:
            out = asdict(self)
        finally:
            self.cluster = cluster
        out.pop("cluster", None)
        out["ok"] = self.ok
        return out


def plan_generations(run: JobRun) -> list[Generation]:
    """Every plan generation of the run, with why it was made (the event just before it)."""
    w = run.watch
    out: list[Generation] = []
    previous_ts = run.submitted_ts
    for gen in sorted(w.plans):
        p = w.plans[gen]
        causes = [e for e in w.events if e.event in _REASONS and previous_ts - 0.5 <= e.ts <= p.ts]
        why = "submitted" if not out else "no event"
        if out and causes:
            why = f"{causes[-1].event} {causes[-1].node or ''}".strip()
        if causes and causes[-1].event == "lc.violation":
            why += f" ({causes[-1].message[:60]})"
        shares = {a.node: (a.share, a.intensity_cap) for a in p.assignments}
        out.append(Generation(gen, round(p.ts - run.submitted_ts, 2), why, shares, round(p.predicted_makespan_s, 1)))
        previous_ts = p.ts
    return out


def _failover(run: JobRun) -> Failover | None:
    if run.kill is None:
        return None
    node, at = run.kill
    w = run.watch
    dead = w.event("node.dead", node, after=at - 0.1)
    later = [p for g, p in sorted(w.plans.items()) if p.ts >= at and all(a.node != node for a in p.assignments)]
    replan = later[0] if later else None
    resumed = next(
        (
            hb
            for hb in w.beats
            if replan is not None and hb.generation >= replan.generation and hb.state == "training" and hb.ts >= at
        ),
        None,
    )
    before = [hb.step for hb in w.beats if hb.ts <= at]
    redone = max(0, max(before) - (resumed.step - 1)) if before and resumed is not None else None
    return Failover(
        node,
        round(dead.ts - at, 2) if dead else None,
        round(replan.ts - at, 2) if replan else None,
        round(resumed.ts - at, 2) if resumed else None,
        redone,
    )


def build_report(run: JobRun, cluster: DemoCluster, opts: DemoOptions, dataset_size: int, output: Path) -> DemoReport:
    w = run.watch
    prog = w.progress
    gens = plan_generations(run)
    kill_at = run.kill[1] if run.kill else None
    before_kill = [w.plans[g.generation] for g in gens if kill_at is None or w.plans[g.generation].ts < kill_at]
    learned = [p for p in before_kill if p.generation > 1]
    first_plan = w.plans.get(min(w.plans)) if w.plans else None
    first_step = w.first_step_ts()
    lc = []
    for b in cluster.boards:
        if not b.lc_app or b.lc_app not in w.apps:
            continue
        rec = w.apps[b.lc_app]
        lc.append(
            LcResult(
                b.lc_app,
                b.node,
                run.calibration.get(b.lc_app),
                rec.deadline_ms,
                round(statistics.median(rec.p95s), 2) if rec.p95s else None,
                round(rec.worst_p95_ms, 2) if rec.p95s else None,
                rec.reports,
                rec.violations,
                rec.startup_violations,
                [round(ts - run.submitted_ts, 1) for ts, _ in rec.over],
            )
        )
    accounting = verify_accounting(output, dataset_size, opts.epochs)
    model = output / "model.pt"
    loss_first = loss_last = None
    if model.exists():
        import torch

        meta = torch.load(model, map_location="cpu", weights_only=True)["meta"]
        curve = meta.get("loss_curve") or []
        if curve:
            loss_first, loss_last = float(curve[0][1]), float(curve[-1][1])
    report = DemoReport(
        state=prog.state if prog else "unknown",
        steps=prog.step if prog else 0,
        total_steps=prog.total_steps if prog else 0,
        samples_done=prog.samples_done if prog else 0,
        boards=[_board(b, opts, cluster, run) for b in cluster.boards],
        makespan_s=round(run.finished_ts - run.submitted_ts, 1) if run.finished_ts else None,
        training_s=round(run.finished_ts - first_step, 1) if run.finished_ts and first_step else None,
        predicted_first_s=round(first_plan.predicted_makespan_s, 1) if first_plan else None,
        predicted_learned_s=round(learned[-1].predicted_makespan_s, 1) if learned else None,
        ideal_s=round(before_kill[-1].ideal_makespan_s, 1) if before_kill else None,
        generations=gens,
        lc=lc,
        failover=_failover(run),
        accounting=accounting,
        timing=step_timing(output),
        model_path=str(model) if model.exists() else None,
        loss_first=loss_first,
        loss_last=loss_last,
        boundaries=cluster.mode_note,
        namespaced=cluster.namespaced,
        link_events=[
            {"at_s": round(at - run.submitted_ts, 2), "node": n, "what": what} for at, n, what in cluster.link_events
        ],
    )
    report.prediction = _prediction(run, first_plan, report)
    report.problems = _problems(report, opts)
    return report


def _prediction(run: JobRun, plan: Any, r: DemoReport) -> dict[str, Any]:
    """Generation 1's predicted makespan in its parts (the time to its plan, the start-up, the
    steps at its predicted step time) against what happened (start-up: submission to the first
    step's start; the median step)."""
    if plan is None:
        return {}
    first = run.watch.first_step_ts()
    step = r.timing.median_interval_ms / 1000 if r.timing else None
    return {
        "predicted_s": round(plan.predicted_makespan_s, 1),
        "predicted_startup_s": round(plan.ts - run.submitted_ts + plan.predicted_startup_s, 1),
        "predicted_step_ms": round(plan.predicted_step_s * 1000, 1),
        "actual_s": r.makespan_s,
        "actual_startup_s": round(first - run.submitted_ts - step, 1) if first and step else None,
        "actual_step_ms": round(step * 1000, 1) if step else None,
    }


def _board(b: BoardProfile, opts: DemoOptions, cluster: DemoCluster, run: JobRun) -> dict[str, Any]:
    return {
        "node": b.node,
        "kind": b.kind,
        "speed": b.speed,
        "memory_mb": b.memory_mb,
        "cpu": b.cpu,
        "lc_app": b.lc_app,
        "sample_ms": round(b.sample_ms(opts.base_sample_ms), 3),
        "killed": b.node in cluster.killed,
        "profiled_samples_per_s": round(run.profiles[b.node], 1) if b.node in run.profiles else None,
        "link": b.link.describe() if cluster.namespaced else None,
        "address": cluster.net.boards[b.node].address if cluster.net is not None else None,
        "limits": cluster.net.boards[b.node].limits.describe()
        if cluster.net is not None and cluster.net.cgroups is not None
        else None,
        "not_emulated": list(cluster.net.boards[b.node].shaping.missing) if cluster.net is not None else [],
    }


def _problems(r: DemoReport, opts: DemoOptions) -> list[str]:
    out = []
    if r.state != "completed":
        out.append(f"the job ended {r.state}, not completed")
    if not r.accounting.get("ok"):
        out.append(
            f"accounting: {r.accounting.get('missing')} samples missing, {r.accounting.get('duplicated')} duplicated"
        )
    for a in r.lc:
        if a.violations:
            during = f" ({a.startup_violations} during the workers' start)" if a.startup_violations else ""
            out.append(f"LC app {a.app}: {a.violations} reports over its {a.deadline_ms} ms deadline{during}")
    if opts.kill_after_s is not None:
        if r.failover is None:
            out.append("no board was killed (the job ended before --kill-after)")
        elif r.failover.resumed_s is None:
            out.append(f"the survivors did not resume after {r.failover.node} was killed")
    if r.model_path is None and r.state == "completed":
        out.append("no model.pt was written")
    return out


def fmt(x: float | None, unit: str = " s", digits: int = 1) -> str:
    """``x`` with ``digits`` decimals and ``unit`` (seconds by default); "-" for None."""
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def render_report(r: DemoReport, console: Any) -> None:
    """The report on ``console``: tables at their natural width and lines unwrapped when it is
    not a terminal (deepedge.ops.show / say); names, reasons and paths printed as they are."""
    from rich.table import Table

    from deepedge.ops import esc, say, show

    console.rule("[bold]deepedge demo: report")
    say(
        console,
        f"job [bold]{esc(r.state)}[/]: {r.steps}/{r.total_steps} steps, {r.samples_done} samples; "
        f"loss {fmt(r.loss_first, '', 3)} -> {fmt(r.loss_last, '', 3)}",
    )
    t = Table(title="makespan", show_header=True)
    for col in (
        "actual (submit to done)",
        "training (first step to done)",
        "predicted, gen 1 (profiled rates)",
        "predicted, re-planned on learned rates",
        "ideal bound (last plan's rates)",
    ):
        t.add_column(col, justify="right")
    t.add_row(*(fmt(v) for v in (r.makespan_s, r.training_s, r.predicted_first_s, r.predicted_learned_s, r.ideal_s)))
    show(console, t)
    p = r.prediction
    if p and p.get("actual_s"):
        say(
            console,
            f"predicted by generation 1: start-up {fmt(p['predicted_startup_s'])} + steps of "
            f"{p['predicted_step_ms']:.0f} ms = {fmt(p['predicted_s'])}; "
            f"actual: start-up {fmt(p['actual_startup_s'])}, "
            f"steps of {p['actual_step_ms'] or 0:.0f} ms (median), {fmt(p['actual_s'])} "
            f"(predicted / actual {p['predicted_s'] / p['actual_s']:.2f})",
        )
    if r.timing is not None:
        st = r.timing
        say(
            console,
            f"a step (median of {st.steps}): {st.median_interval_ms:.1f} ms = slowest board's compute "
            f"{st.median_compute_ms:.1f} + all-reduce {st.median_allreduce_ms:.1f} + the rest {st.median_rest_ms:.1f}",
        )
    if r.boundaries:
        say(console, f"boards: {esc(r.boundaries)}")
    if r.namespaced:
        t = Table()
        for col in ("board", "emulates", "speed", "address", "link", "cgroup"):
            t.add_column(col, justify="right" if col == "speed" else "left")
        for b in r.boards:
            link = b["link"] + (f" ({', '.join(b['not_emulated'])} not emulated)" if b["not_emulated"] else "")
            cells = (b["node"], b["kind"], f"{b['speed']:.2f}", b["address"], link, b["limits"] or "-")
            t.add_row(*(esc(c) for c in cells))
        show(console, t)
    for e in r.link_events:
        say(console, f"link of {esc(e['node'])} at {e['at_s']:.1f} s: {esc(e['what'])}")
    profiled = [f"{b['node']} {b['profiled_samples_per_s']:.0f}" for b in r.boards if b["profiled_samples_per_s"]]
    if profiled:
        say(console, f"boards profiled before the job (samples/s at full intensity): {esc(', '.join(profiled))}")
    say(console, "shares per plan generation (samples of each global batch @ intensity cap)")
    t = Table()
    nodes = [b["node"] for b in r.boards]
    t.add_column("gen")
    t.add_column("at", justify="right")
    t.add_column("why")
    for n in nodes:
        t.add_column(esc(n), justify="right")
    for g in r.generations:
        t.add_row(
            str(g.generation),
            fmt(g.at_s),
            esc(g.why),
            *[f"{g.shares[n][0]}@{g.shares[n][1]:.2f}" if n in g.shares else "-" for n in nodes],
        )
    show(console, t)
    if r.lc:
        say(
            console,
            "LC apps: p95 over each 5 s window, reported every 0.5 s while the job runs; 'over' counts every "
            "report over the deadline (each is a miss), 'of which start-up' those whose window covers the "
            "workers' start",
        )
        t = Table()
        for col in (
            "app",
            "node",
            "alone p95",
            "deadline",
            "median p95",
            "worst p95",
            "reports",
            "over",
            "of which start-up",
        ):
            t.add_column(col, justify="right" if col not in ("app", "node") else "left")
        for a in r.lc:
            t.add_row(
                esc(a.app),
                esc(a.node),
                fmt(a.alone_p95_ms, " ms"),
                fmt(a.deadline_ms, " ms"),
                fmt(a.median_p95_ms, " ms"),
                fmt(a.worst_p95_ms, " ms"),
                str(a.reports),
                str(a.violations),
                str(a.startup_violations),
            )
        show(console, t)
    if r.failover:
        f = r.failover
        say(
            console,
            f"failover: SIGKILL {esc(f.node)} at 0.00 s -> detected {fmt(f.detected_s)} -> re-planned "
            f"{fmt(f.replanned_s)} -> resumed {fmt(f.resumed_s)}; steps redone: {f.steps_redone}",
        )
    acc = r.accounting
    say(
        console,
        f"accounting: {acc.get('samples')} sample-epochs trained, {acc.get('missing')} missing, "
        f"{acc.get('duplicated')} twice -> {'every sample once' if acc.get('ok') else 'NOT exact'}",
    )
    say(console, f"model: {esc(r.model_path or '(none)')}")
    if r.ok:
        failover = "failover recovered, " if r.failover is not None else "(no board killed: --no-kill), "
        say(console, f"[bold green]PASS[/]: completed, every sample trained once, {failover}no LC deadline missed")
    else:
        for problem in r.problems:
            say(console, f"[bold red]FAIL[/]: {esc(problem)}")
