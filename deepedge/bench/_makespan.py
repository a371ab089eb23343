"""``deepedge bench makespan``: on the demo's emulated 4-board cluster, the same job under (a) a
uniform split (what torchrun with a DistributedSampler does), (b) the deepedge plan, against
(c) the ideal bound N / sum of throughputs, without and with LC apps; one run, one machine."""

from __future__ import annotations

import asyncio
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from deepedge.demo import DemoCluster, DemoOptions, cluster_profiles, run_cluster_job
from deepedge.demo._data import make_image_folder
from deepedge.demo._report import plan_generations
from deepedge.demo._run import JobRun
from deepedge.training import StepTiming, step_timing

__all__ = ["MakespanRow", "full_intensity_rates", "makespan_markdown", "run_makespan_bench"]


@dataclass
class MakespanRow:
    scenario: str
    split: str
    completed: bool
    makespan_s: float | None  # submission to completion
    training_s: float | None  # first step to completion
    ideal_s: float | None  # epochs x N / sum of the boards' measured full-intensity rates
    lc_violations: int  # every report over the deadline while the job ran, its start included
    lc_startup_violations: int  # of which during the workers' start
    generations: int
    replans: tuple[str, ...] = ()  # why each plan after the first was made (its event)
    timing: StepTiming | None = None  # where each step's time went (the workers' records)
    predicted_s: float | None = None  # generation 1's predicted makespan (from submission)


def full_intensity_rates(run: JobRun) -> dict[str, float]:
    """Each board's samples/s at full intensity, from its heartbeats (samples/s / intensity)."""
    per: dict[str, list[float]] = {}
    for hb in run.watch.beats:
        if hb.state == "training" and hb.intensity > 0.05 and hb.samples_per_s > 0:
            per.setdefault(hb.node, []).append(hb.samples_per_s / hb.intensity)
    return {n: statistics.median(v) for n, v in per.items()}


def _row(scenario: str, split: str, run: JobRun, ideal: float | None, output: Path) -> MakespanRow:
    w = run.watch
    first = w.first_step_ts()
    done = run.finished_ts
    return MakespanRow(
        scenario,
        split,
        w.progress is not None and w.progress.state == "completed",
        round(done - run.submitted_ts, 1) if done else None,
        round(done - first, 1) if done and first else None,
        ideal,
        sum(a.violations for a in w.apps.values()),
        sum(a.startup_violations for a in w.apps.values()),
        len(w.plans),
        tuple(g.why for g in plan_generations(run)[1:]),
        step_timing(output),
        round(w.plans[min(w.plans)].predicted_makespan_s, 1) if w.plans else None,
    )


def run_makespan_bench(
    epochs: int = 6, images: int = 3000, progress: bool = True, workdir: Path | None = None
) -> list[MakespanRow]:
    root = workdir or Path(tempfile.mkdtemp(prefix="deepedge-bench-makespan-"))
    data = root / "data"
    size = make_image_folder(data, images)
    rows: list[MakespanRow] = []
    for with_lc in (False, True):
        scenario = "with 2 LC apps" if with_lc else "no LC apps"
        boards = cluster_profiles(4, with_lc=with_lc)
        cluster_dir = root / ("lc" if with_lc else "plain")
        with DemoCluster(cluster_dir, boards, boundaries="shared", data_roots=(root,)) as cluster:
            ideal = None
            for split in ("planned", "uniform"):
                opts = DemoOptions(epochs=epochs, images=images, kill_after_s=None, split=split)
                output = cluster.workdir / f"out-{split}"
                cluster.forget_decoded()  # each split decodes its images (not only the first job)
                t0 = time.monotonic()
                run = asyncio.run(
                    run_cluster_job(
                        cluster,
                        opts,
                        job=f"bench-{split}",
                        dataset=data,
                        dataset_size=size,
                        output=output,
                        calibrate=split == "planned",  # the uniform job keeps the deadlines set before
                    )
                )
                if split == "planned":
                    rates = full_intensity_rates(run)
                    ideal = round(epochs * size / sum(rates.values()), 1) if len(rates) == len(boards) else None
                row = _row(scenario, split, run, ideal, output)
                rows.append(row)
                if progress:
                    print(f"  {scenario}, {split}: {row.makespan_s} s ({time.monotonic() - t0:.0f} s)", flush=True)
    return rows


def makespan_markdown(rows: list[MakespanRow], command: str) -> str:
    lines = [
        f"Command: `{command}`. Machine: {platform.machine()}, {platform.python_version()}, "
        "the demo's emulated cluster: boards of relative speed 1.0 / 0.6 / 0.4 / 0.25 (each sample paced to at "
        "least 2 ms / speed, workers pinned one board per CPU, nice 10, their communication threads nice 0), "
        "4 boards on this machine's CPUs.",
        "",
        "Makespan is from submission to completion (worker start-up included); predicted is the first plan's "
        "(time since submission + start-up + steps x predicted step, on what the coordinator knew then: the "
        "uniform job runs second, after the deepedge job taught it); training is from the first "
        "completed step to completion. The ideal bound is epochs x N / sum of the boards' full-intensity "
        "rates as measured from the heartbeats of the deepedge run: no start-up, no communication, no LC "
        "constraint. LC violations count node latency reports (5 s windows, every 0.5 s) whose p95 is over "
        f"the deadline ({DemoOptions().deadline_factor:g}x the app's p95 alone) while the job runs, the workers' "
        "start included (each is a miss); the second figure says how many of them were during the start. "
        "Each job decodes its images (the boards' decoded-dataset caches emptied before it).",
        "",
        "| scenario | split | completed | makespan | predicted (gen 1) | training | ideal bound | uniform / this "
        "| this / ideal | LC misses (all / of which start-up) | plan generations |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        uniform = next((u for u in rows if u.scenario == r.scenario and u.split == "uniform"), None)
        speedup = (
            f"{uniform.training_s / r.training_s:.2f}x" if uniform and uniform.training_s and r.training_s else "-"
        )
        vs_ideal = f"{r.training_s / r.ideal_s:.2f}x" if r.training_s and r.ideal_s else "-"
        lines.append(
            f"| {r.scenario} | {r.split} | {'yes' if r.completed else 'NO'} | {r.makespan_s} s | {r.predicted_s} s "
            f"| {r.training_s} s "
            f"| {r.ideal_s} s | {speedup} | {vs_ideal} | {r.lc_violations} / {r.lc_startup_violations} "
            f"| {r.generations}{' (' + ', '.join(r.replans) + ')' if r.replans else ''} |"
        )
    lines += [
        "",
        "Where each step's time went, from the workers' accounting records (`deepedge.training.step_timing`): "
        "the interval between consecutive steps' ends = the slowest board's compute (its emulated pacing "
        "included) + the all-reduce of the last board to arrive + the rest (boards arriving apart for other "
        "reasons: their work between steps, waking late from the pacing sleep on a shared CPU). Medians per "
        "step, and the rest's share of all intervals.",
        "",
        "| scenario | split | steps | interval | compute | all-reduce | rest | rest / intervals |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r.timing
        if t is None:
            lines.append(f"| {r.scenario} | {r.split} | - | - | - | - | - | - |")
            continue
        lines.append(
            f"| {r.scenario} | {r.split} | {t.steps} | {t.median_interval_ms:.1f} ms | {t.median_compute_ms:.1f} ms "
            f"| {t.median_allreduce_ms:.1f} ms | {t.median_rest_ms:.1f} ms | {t.rest_s / t.interval_s:.1%} |"
        )
    return "\n".join(lines) + "\n"
