"""The demo's live view: per board its share, samples/s, intensity and step; per LC app its p95
against its deadline; the job's progress and ETA. A rich table on a terminal, one line every few
seconds otherwise (logs, CI), never wrapped (deepedge.ops.say); names and event messages are
printed as they are, never read as markup."""

from __future__ import annotations

import time
from typing import Any

from deepedge.demo._cluster import DemoCluster
from deepedge.demo._run import JobRun
from deepedge.ops import esc, say

__all__ = ["LiveView"]


class LiveView:
    def __init__(self, console: Any, interactive: bool) -> None:
        self.console = console
        self.interactive = interactive
        self._live: Any = None
        self._last_line = 0.0
        self._said: set[str] = set()

    def __enter__(self) -> LiveView:
        if self.interactive:
            from rich.live import Live

            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def __call__(self, run: JobRun, cluster: DemoCluster) -> None:
        if self._live is not None:
            self._live.update(self.render(run, cluster))
        else:
            self._lines(run, cluster)

    def _header(self, run: JobRun) -> str:
        w, p = run.watch, run.watch.progress
        if not run.submitted_ts:
            return run.phase or "starting"
        elapsed = time.time() - run.submitted_ts
        if p is None:  # (a new operator read "waiting for its first plan" after plan.published)
            waiting = "its workers starting" if w.plan is not None else "waiting for its first plan"
            return f"job submitted {elapsed:.0f} s ago, {waiting}"
        if p.step == 0 and p.samples_per_s == 0:
            return f"job {p.state} | gen {p.generation} | workers starting: no step yet | {elapsed:.0f} s"
        eta = f"{p.eta_s:.0f} s" if p.eta_s is not None else "-"
        loss = f"{p.loss:.3f}" if p.loss is not None else "-"  # "nan" read as a diverged job
        return (
            f"job {p.state} | gen {p.generation} | step {p.step}/{p.total_steps} | {p.samples_done} samples | "
            f"{p.samples_per_s:.0f} samples/s | loss {loss} | "
            f"ETA {eta} | {elapsed:.0f} s" + (f" | plan gens {len(w.plans)}" if w.plans else "")
        )

    def render(self, run: JobRun, cluster: DemoCluster) -> Any:
        from rich.console import Group
        from rich.table import Table

        w = run.watch
        plan = w.plan
        shares = {a.node: a for a in plan.assignments} if plan else {}
        t = Table(title=esc(self._header(run)), title_justify="left")
        cols = ("board", "emulates", "speed", "link", "state", "share@cap", "samples/s", "intensity", "step")
        for col in cols:
            t.add_column(col, justify="left" if col in ("board", "emulates", "link", "state") else "right")
        if cluster.mode_note:
            t.caption = esc(cluster.mode_note)
        for b in cluster.boards:
            hb = w.heartbeats.get(b.node)
            a = shares.get(b.node)
            state = "KILLED" if b.node in cluster.killed else ("up" if w.alive.get(b.node) else "down")
            if hb is not None and state == "up" and plan is not None and hb.generation == plan.generation:
                state = hb.state
            t.add_row(
                esc(b.node),
                esc(b.kind),
                f"{b.speed:.2f}",
                esc(cluster.link_of(b.node)),
                esc(state),
                f"{a.share}@{a.intensity_cap:.2f}" if a else "-",
                f"{hb.samples_per_s:.0f}" if hb else "-",
                f"{hb.intensity:.2f}" if hb else "-",
                str(hb.step) if hb else "-",
            )
        lc = Table(title="LC apps: p95 over the last 5 s vs deadline", title_justify="left")
        for col in ("app", "board", "p95", "deadline", "violations"):
            lc.add_column(col)
        for name, rec in sorted(w.apps.items()):
            p95 = rec.latest.p95_ms if rec.latest else None
            over = p95 is not None and rec.deadline_ms is not None and p95 > rec.deadline_ms
            lc.add_row(
                esc(name),
                esc(rec.node),
                f"[{'red' if over else 'green'}]{p95:.1f} ms[/]" if p95 is not None else "-",
                f"{rec.deadline_ms:.1f} ms" if rec.deadline_ms else "-",
                str(rec.violations),
            )
        return Group(t, lc)

    def _lines(self, run: JobRun, cluster: DemoCluster) -> None:
        w = run.watch
        if cluster.mode_note and "mode" not in self._said:
            self._said.add("mode")
            say(self.console, esc(cluster.mode_note))
        if run.phase and f"phase:{run.phase}" not in self._said:
            self._said.add(f"phase:{run.phase}")
            say(self.console, esc(run.phase))
        for e in w.events:
            key = f"{e.ts}:{e.event}:{e.node}"
            if key not in self._said and e.event in ("node.dead", "plan.published", "lc.violation", "job.completed"):
                self._said.add(key)
                say(self.console, esc(f"  event {e.event} {e.node or ''} {e.message}".rstrip()))
        for node in cluster.killed:
            key = f"kill:{node}"
            if key not in self._said:
                self._said.add(key)
                say(self.console, f"  SIGKILL board {esc(node)}")
        now = time.monotonic()
        if run.submitted_ts and now - self._last_line >= 3.0:
            self._last_line = now
            say(self.console, esc(self._header(run)))
