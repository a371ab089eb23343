"""``deepedge bench interference``: how well the surrogate predicts an LC app's p95 in co-location
scenarios it was not fitted on, on this machine, with the real LC process (``deepedge.demo.lc_app``),
real stressors (stress-ng) and the real training step code.

1. A profiling session with a design budget (Latin hypercube over training intensity, LC request
   rate and the four stressors, at most ``max_mix`` stressors on at once (3 by default, as
   ``deepedge profile``), plus an adaptive step) picks a surrogate by cross-validated error and
   stores everything in a knowledge base.
2. Held-out scenarios: stressor mixes of three or four stressors at once, at levels the design
   never had (all four at once is never in the design; three at once is, at other levels, unless
   ``max_mix`` is 2), each at several intensities and request rates, are measured and predicted.
3. Figures: median absolute percentage error over all held-out runs and per scenario, the share
   of held-out runs inside the 95 % prediction interval, runs used against the full grid, for the
   chosen model, every other candidate and today's linear model, all fitted on the same runs.

Every run is kept in the knowledge base (``--kb``), so ``--refit`` recomputes the figures from a
previous run's measurements without measuring again."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepedge.profiling import KnowledgeBase, Point, ProfileKey, Run, versions_key
from deepedge.profiling._design import Space
from deepedge.profiling._runner import LatencySink, PointRunner, RunnerConfig, rate_file_for
from deepedge.profiling._session import DEFAULT_KINDS, ProfileSession
from deepedge.profiling._space import FEATURES
from deepedge.profiling._surrogate import Surrogate, choose, fit

__all__ = [
    "APP",
    "HELDOUT",
    "InterferenceResult",
    "evaluate",
    "interference_markdown",
    "refit_figures",
    "run_interference_bench",
    "split_export",
]

APP = "bench-lc"
# Held-out co-location scenarios: mixes of 3-4 stressors at once (the design has at most 2)
HELDOUT: dict[str, dict[str, float]] = {
    "cpu+cache+mem": {"cpu": 0.5, "cache": 0.5, "mem": 0.6},
    "cache+mem+io": {"cache": 0.6, "mem": 0.5, "io": 0.5},
    "cpu+mem+io": {"cpu": 0.6, "mem": 0.4, "io": 0.6},
    "cpu+cache+io": {"cpu": 0.4, "cache": 0.4, "io": 0.7},
    "all four": {"cpu": 0.3, "cache": 0.3, "mem": 0.3, "io": 0.3},
    "all four, heavy": {"cpu": 0.7, "cache": 0.6, "mem": 0.7, "io": 0.5},
}
# The point measured again and again over the session: the measurement's own noise and drift
REFERENCE = Point(0.5, 40.0, cpu=0.3, mem=0.3)


# Other features than the model's, compared when the runs measured the machine's CPU pressure
# before training (RunnerConfig.background_s): do features that do not name the stressors carry
# to mixes the design never had? (Fitted and chosen as the model is; reported, never used.)
_PRESSURE = ("bg_psi", "bg_runnable")
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "the model's (u, rate, background CPU, stressor levels)": FEATURES,
    "the model's + CPU pressure": (*FEATURES, *_PRESSURE),
    "u, rate, background CPU (the cap table's axes)": ("intensity", "rate", "cpu"),
    "u, rate, background CPU + CPU pressure": ("intensity", "rate", "cpu", *_PRESSURE),
    "u, rate, runnable tasks": ("intensity", "rate", "bg_runnable"),
    "u, rate, PSI": ("intensity", "rate", "bg_psi"),
}


@dataclass
class FeatureFigures:
    features: str
    kind: str
    cv_median_ape: float
    median_ape: float  # held-out
    worst_scenario_ape: float


@dataclass
class ModelFigures:
    kind: str
    cv_median_ape: float
    cv_coverage: float
    cv_mix_ape: float | None  # leave-one-mix-out: what the choice is made on
    median_ape: float  # held-out
    worst_scenario_ape: float  # the worst scenario's median
    coverage: float  # held-out runs inside the 95 % interval
    per_scenario: dict[str, float] = field(default_factory=dict)
    # held-out median error by whether the run's stressor set (which are on, not their levels) was
    # in the fitted runs: "seen set" / "new set" (only where the design had mixes of 3 or more)
    by_set: dict[str, float] = field(default_factory=dict)


@dataclass
class InterferenceResult:
    chosen: str
    design_runs: int
    adaptive_runs: int
    heldout_runs: int
    full_grid: int
    seconds: float
    figures: list[ModelFigures]
    kb: str
    profile_id: int | None
    wall_s: float
    noise_ape: float | None  # repeat runs of one point: the measurement's own spread
    feature_sets: list[FeatureFigures] = field(default_factory=list)
    repeat_span_s: float = 0.0  # from the first repeat run to the last (spread over the session, or not)
    repeat_ape: float | None = None  # the chosen model's median error on the repeat runs
    max_mix: int = 3  # stressors on at once in a design point (Space.max_mix)


def _errors(
    s: Surrogate, heldout: list[Run], columns: tuple[str, ...] = FEATURES
) -> tuple[np.ndarray, dict[str, float]]:
    """Each held-out run's |predicted - measured| / measured, and each scenario's median."""
    y = np.array([r.p95_ms for r in heldout])
    ape = np.abs(s.median_ms([r.features(columns) for r in heldout]) - y) / y
    per: dict[str, list[float]] = {}
    for r, e in zip(heldout, ape, strict=True):
        per.setdefault(r.scenario, []).append(float(e))
    return ape, {k: float(np.median(v)) for k, v in per.items()}


def _by_set(ape: np.ndarray, heldout: list[Run], fitted_on: list[Run]) -> dict[str, float]:
    """The held-out median error apart for runs whose stressor set was in ``fitted_on`` (at other
    levels) and runs whose set never was; empty unless both kinds are there."""
    seen = {r.asked.mix() for r in fitted_on}
    groups: dict[str, list[float]] = {}
    for r, e in zip(heldout, ape, strict=True):
        groups.setdefault("seen set" if r.asked.mix() in seen else "new set", []).append(float(e))
    return {k: float(np.median(v)) for k, v in sorted(groups.items(), reverse=True)} if len(groups) == 2 else {}


def _figures(s: Surrogate, heldout: list[Run], fitted_on: list[Run]) -> ModelFigures:
    kind = s.kind
    y = np.array([r.p95_ms for r in heldout])
    lo, hi = s.interval_ms([r.features() for r in heldout], 0.95)
    ape, per_med = _errors(s, heldout)
    return ModelFigures(
        kind,
        s.cv.median_ape,
        s.cv.coverage,
        s.cv.mix_median_ape,
        float(np.median(ape)),
        max(per_med.values()),
        float(np.mean((y >= lo) & (y <= hi))),
        per_med,
        _by_set(ape, heldout, fitted_on),
    )


def _split(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """The runs models are fitted on (design, adaptive) and the held-out runs that got reports."""
    return (
        [r for r in runs if r.phase in ("design", "adaptive")],
        [r for r in runs if r.phase == "heldout" and r.count > 0],
    )


def split_export(path: Path) -> tuple[list[Run], list[Run]]:
    """The fitted-on and held-out runs of the newest bench profile in a knowledge-base export
    (``docs/benchmarks/data/interference-runs*.json``), for analyses that do not measure."""
    with tempfile.TemporaryDirectory() as tmp:
        kb = KnowledgeBase(Path(tmp) / "kb.db")
        kb.import_(json.loads(Path(path).read_text()))
        pid = max(s.id for s in kb.profiles() if s.key.app == APP)
        return _split(kb.runs(pid))


def feature_sets(runs: list[Run], kinds: tuple[str, ...] = DEFAULT_KINDS) -> list[FeatureFigures]:
    """Each kind fitted on each of ``FEATURE_SETS``: cross-validated and held-out errors; none
    where the runs did not measure the CPU pressure before training."""
    fitted_on, heldout = _split(runs)
    if not heldout or not any(r.bg_runnable > 0 or r.bg_psi > 0 for r in fitted_on):
        return []
    out = []
    for name, columns in FEATURE_SETS.items():
        for kind in kinds:
            s = fit(kind, fitted_on, columns=columns)
            ape, per = _errors(s, heldout, columns)
            out.append(FeatureFigures(name, kind, s.cv.median_ape, float(np.median(ape)), max(per.values())))
    return out


def heldout_points(space: Space, per_scenario: int, seed: int = 7) -> list[tuple[str, Point]]:
    rng = np.random.default_rng(seed)
    out = []
    for name, levels in HELDOUT.items():
        for k in range(per_scenario):
            u = round(k / max(1, per_scenario - 1), 2)
            rate = round(float(rng.uniform(space.rate_min, space.rate_max)), 1)
            out.append((name, Point(intensity=u, rate=rate, **levels)))
    return out


def repeat_due(runs_done: int, taken: int, repeats: int, planned: int) -> bool:
    """Whether a repeat of REFERENCE comes before the next run, after ``runs_done`` of the
    ``planned`` others and ``taken`` repeats. The repeats are spread over the session (one
    first, then one every planned / (repeats - 1) runs; the last is measured after the others,
    at the end), so that their spread includes the drift the held-out runs see, minutes after
    the design, and not only how one run repeats the next."""
    every = max(1, planned // max(1, repeats - 1))
    return taken < repeats - 1 and runs_done >= taken * every


def repeat_noise(runs: list[Run]) -> tuple[float | None, float]:
    """The repeat runs' median deviation from their median (None under 3 of them), and the
    seconds from the first to the last (``ts``): back-to-back repeats say how well one run
    repeats the next; repeats spread over the session also include the machine's drift, which
    the held-out runs, measured minutes after the design, see too."""
    rep = sorted((r for r in runs if r.phase == "repeat"), key=lambda r: r.ts)
    span = rep[-1].ts - rep[0].ts if rep else 0.0
    if len(rep) < 3:
        return None, span
    m = statistics.median(r.p95_ms for r in rep)
    return statistics.median(abs(r.p95_ms - m) / m for r in rep), span


def _repeat_ape(best: Surrogate, runs: list[Run]) -> float | None:
    """The chosen model's median error on the repeat runs (a point like the design's, measured
    again through the session); None without them."""
    rep = [r for r in runs if r.phase == "repeat"]
    if not rep:
        return None
    y = np.array([r.p95_ms for r in rep])
    return float(np.median(np.abs(best.median_ms([r.features() for r in rep]) - y) / y))


def _fitted(runs: list[Run], kinds: tuple[str, ...] = DEFAULT_KINDS) -> tuple[Surrogate, list[ModelFigures]]:
    """Every kind (and today's linear model) fitted on the design and adaptive runs: the one
    chosen by cross-validated error, and each one's figures on the held-out runs."""
    fitted_on, heldout = _split(runs)
    fitted = {k: fit(k, fitted_on) for k in (*kinds, "linear")}
    return choose([fitted[k] for k in kinds]), [_figures(s, heldout, fitted_on) for s in fitted.values()]


def evaluate(
    runs: list[Run], space: Space, kinds: tuple[str, ...] = DEFAULT_KINDS
) -> tuple[str, list[ModelFigures], float | None]:
    best, figures = _fitted(runs, kinds)
    return best.kind, figures, repeat_noise(runs)[0]


def run_interference_bench(
    budget: int = 40,
    adaptive: int = 8,
    per_scenario: int = 4,
    seconds: float = 3.0,
    repeats: int = 5,
    workdir: Path | None = None,
    kb_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
    max_mix: int = 3,
) -> InterferenceResult:
    """``max_mix``: stressors on at once in a design point. At 3 (the default, as ``deepedge
    profile``) the held-out mixes of three are sets the design had at other levels and "all four"
    is new (the figures split the two); at 2 every held-out mix is a set the design never had."""
    say = progress or (lambda _m: None)
    root = workdir or Path(tempfile.mkdtemp(prefix="deepedge-bench-interference-"))
    root.mkdir(parents=True, exist_ok=True)
    kb = KnowledgeBase(kb_path or root / "knowledge.db")
    space = Space(rate_min=20.0, rate_max=60.0, max_mix=max_mix)
    sock = root / "latency.sock"
    sink = LatencySink(sock)
    rate_file = rate_file_for(sock, APP)
    cpu = sorted(os.sched_getaffinity(0))[0]
    lc = subprocess.Popen(
        [sys.executable, "-m", "deepedge.demo.lc_app", "--app", APP, "--socket", str(sock), "--frames", "16"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    t0 = time.monotonic()
    software = {"python": platform.python_version()}
    try:
        from importlib.metadata import version

        software |= {"deepedge": version("deepedge"), "torch": version("torch")}
    except Exception:  # not installed as a distribution: the key says less
        pass
    key = ProfileKey(platform.node() or platform.machine(), APP, versions_key(software))
    try:
        deadline = time.monotonic() + 60
        while not sink.samples(APP, time.monotonic() - 1, time.monotonic()):
            if time.monotonic() > deadline or lc.poll() is not None:
                raise RuntimeError("the LC app did not report within 60 s")
            time.sleep(0.2)
        cfg = RunnerConfig(
            app=APP, workdir=root, seconds=seconds, rate_file=rate_file, cpu_affinity=(cpu,), background_s=1.0
        )
        with PointRunner(cfg, sink) as runner:
            done = [0]
            rep: list[Run] = []
            planned = budget + per_scenario * len(HELDOUT)

            def one(p: Point, phase: str, scenario: str = "") -> Run:
                r = runner.run(p, phase, scenario)
                done[0] += 1
                say(
                    f"  run {done[0]} ({phase}{' ' + scenario if scenario else ''}): u {r.intensity:.2f}, "
                    f"{r.rate:.0f} req/s, {p.mix()} -> p95 {r.p95_ms:.1f} ms ({r.count} requests)"
                )
                return r

            def measure(points: list[Point], phase: str, scenario: str = "") -> list[Run]:
                out = []
                for p in points:
                    if repeat_due(done[0] - len(rep), len(rep), repeats, planned):
                        rep.append(one(REFERENCE, "repeat"))
                    out.append(one(p, phase, scenario))
                return out

            session = ProfileSession(key, space, kb, source="deepedge bench interference")
            result = session.run(measure, budget, adaptive, say)
            pid = result.profile_id
            assert pid is not None
            held: list[Run] = []
            for name, p in heldout_points(space, per_scenario):
                held += measure([p], "heldout", name)
            rep += [one(REFERENCE, "repeat") for _ in range(repeats - len(rep))]
            kb.add_runs(pid, held + rep)
    finally:
        lc.terminate()
        lc.wait(10)
        sink.close()
    runs = kb.runs(pid)
    best, figures = _fitted(runs)
    noise, span = repeat_noise(runs)
    return InterferenceResult(
        best.kind,
        sum(r.phase == "design" for r in result.runs),
        sum(r.phase == "adaptive" for r in result.runs),
        len(held),
        space.full_grid,
        seconds,
        figures,
        str(kb.path),
        pid,
        round(time.monotonic() - t0, 1),
        noise,
        feature_sets(runs),
        span,
        _repeat_ape(best, runs),
        max_mix,
    )


def refit_figures(kb_path: Path, profile_id: int | None = None) -> InterferenceResult:
    """The figures again from a knowledge base's stored runs (no measurement)."""
    kb = KnowledgeBase(kb_path)
    pid = profile_id or max((s.id for s in kb.profiles() if s.key.app == APP), default=None)
    if pid is None:
        raise ValueError(f"{kb_path}: no {APP} profile")
    shown = kb.show(pid)
    assert shown is not None
    space = Space(**shown["space"]) if shown["space"] else Space(rate_min=20.0, rate_max=60.0)
    runs = kb.runs(pid)
    best, figures = _fitted(runs)
    noise, span = repeat_noise(runs)
    return InterferenceResult(
        best.kind,
        sum(r.phase == "design" for r in runs),
        sum(r.phase == "adaptive" for r in runs),
        sum(r.phase == "heldout" for r in runs),
        space.full_grid,
        runs[0].seconds if runs else 0.0,
        figures,
        str(kb_path),
        pid,
        0.0,
        noise,
        feature_sets(runs),
        span,
        _repeat_ape(best, runs),
        space.max_mix,
    )


def interference_markdown(r: InterferenceResult, command: str) -> str:
    used = r.design_runs + r.adaptive_runs
    lines = [
        f"Command: `{command}`. Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; the LC app is `deepedge.demo.lc_app` (16 frames of cnn-small per "
        "request, pinned to the training's CPU, nice -10), the training the worker's step code "
        "(`deepedge.training.profile`, nice 10), the stressors stress-ng (one worker each, unpinned).",
        "",
        f"Fitted on {r.design_runs} Latin-hypercube runs + {r.adaptive_runs} adaptive runs = **{used} runs of the "
        f"{r.full_grid}-run full grid ({used / r.full_grid:.1%})**, {r.seconds:g} s each; tested on "
        f"{r.heldout_runs} held-out runs in {len(HELDOUT)} co-location scenarios of 3-4 stressors at once, "
        + (
            f"mixes that never occur in the design (at most {r.max_mix}). "
            if r.max_mix < 3
            else f"at levels the design never had (its points have up to {r.max_mix} stressors on: "
            "a held-out set of stressors is a *seen set* when the design had it at other levels, else a *new set*). "
        )
        + "Chosen by cross-validated error, each stressor mix of the design left out in turn: "
        f"**{r.chosen}**. Runs in the knowledge base `{r.kb}` (profile {r.profile_id}); "
        f"`deepedge bench interference --refit {r.kb}` recomputes this table from them. Wall time {r.wall_s:g} s.",
        "",
        "| model | CV median error: leave-one-mix-out (the choice) | random folds | CV 95 % coverage "
        "| held-out median error | worst scenario (median) | held-out 95 % coverage |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in r.figures:
        name = (
            f"**{f.kind}** (chosen)"
            if f.kind == r.chosen
            else (f"{f.kind} (today's model)" if f.kind == "linear" else f.kind)
        )
        lines.append(
            f"| {name} | {'-' if f.cv_mix_ape is None else f'{f.cv_mix_ape:.1%}'} | {f.cv_median_ape:.1%} "
            f"| {f.cv_coverage:.0%} | {f.median_ape:.1%} | "
            f"{f.worst_scenario_ape:.1%} | {f.coverage:.0%} |"
        )
    chosen = next(f for f in r.figures if f.kind == r.chosen)
    lines += [
        "",
        "Per held-out scenario (median error):",
        "",
        "| scenario | " + " | ".join(f.kind for f in r.figures) + " |",
        "|---|" + "---|" * len(r.figures),
    ]
    for name in chosen.per_scenario:
        lines.append(
            f"| {name} | " + " | ".join(f"{f.per_scenario.get(name, float('nan')):.1%}" for f in r.figures) + " |"
        )
    for group in chosen.by_set:
        lines.append(
            f"| *every {group}* | " + " | ".join(f"{f.by_set.get(group, float('nan')):.1%}" for f in r.figures) + " |"
        )
    if r.noise_ape is not None:
        lines += [
            "",
            f"Measurement noise: the same point (u {REFERENCE.intensity:g}, {REFERENCE.rate:g} req/s, cpu "
            f"{REFERENCE.cpu:g}, mem {REFERENCE.mem:g}) measured "
            f"{'back to back' if r.repeat_span_s < 120 else 'through the session'} (first to last "
            f"{r.repeat_span_s / 60:.1f} min): median deviation from their median **{r.noise_ape:.1%}** — no model "
            "can be more accurate than that on average."
            + (
                f" The chosen model's median error on these runs: **{r.repeat_ape:.1%}**."
                if r.repeat_ape is not None
                else ""
            ),
        ]
    if r.feature_sets:
        lines += [
            "",
            "Other features, from the same runs (the machine's CPU pressure measured for 1 s before training, "
            "with the stressors and the LC app alone: PSI's share of time some task waited for a CPU, the mean "
            "runnable tasks; each kind fitted as the model is; reported, never used to choose):",
            "",
            "| features | kind | CV median error | held-out median error | worst scenario (median) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {f.features} | {f.kind} | {f.cv_median_ape:.1%} | {f.median_ape:.1%} | {f.worst_scenario_ape:.1%} |"
            for f in r.feature_sets
        ]
    goals = [
        ("median error <= 5 %", chosen.median_ape <= 0.05, f"{chosen.median_ape:.1%}"),
        ("worst scenario's median <= 12 %", chosen.worst_scenario_ape <= 0.12, f"{chosen.worst_scenario_ape:.1%}"),
        ("95 % intervals cover >= 90 %", chosen.coverage >= 0.9, f"{chosen.coverage:.0%}"),
        ("runs <= 20 % of the grid", used <= 0.2 * r.full_grid, f"{used / r.full_grid:.1%}"),
    ]
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g} | {v} | {'yes' if ok else 'NO'} |" for g, ok, v in goals]
    return "\n".join(lines) + "\n"
