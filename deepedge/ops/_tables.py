"""Rich tables for ``deepedge status`` (print them with ``deepedge.ops.show``). Names, reasons
and notes are escaped: they are printed as they are, never read as markup."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

from deepedge.ops._console import esc

__all__ = ["status_tables"]


def _fmt(v: Any, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def _eta(job: dict[str, Any]) -> str:
    return f"{min(job['step'], job['total_steps'])}/{job['total_steps']}"


def _lc(app: str, v: dict[str, Any]) -> str:
    p95 = f"{v['p95_ms']:.1f}" if v.get("count") else "-"
    over = v["deadline_ms"] is not None and v.get("count") and v["p95_ms"] > v["deadline_ms"]
    return f"{esc(app)} {p95}/{_fmt(v['deadline_ms'], 'g')}" + (" [red]![/]" if over else "")


def _makespan(job: dict[str, Any]) -> str:
    value = _fmt(job.get("predicted_makespan_s"), ".0f")
    return f"{value} (actual)" if job.get("makespan_actual") else value


def _note(job: dict[str, Any]) -> str:
    reason = job.get("reason") or ""
    out = [esc(reason)] if reason else []
    # a refusal's reason already names each node's (a job refused at submit said it all twice)
    excluded = (job.get("excluded") or {}).items()
    out += [f"{esc(node)} left out: {esc(why)}" for node, why in excluded if not (why and str(why) in reason)]
    return "; ".join(out)


def _page(status: dict[str, Any], what: str, shown: int, total: int) -> str:
    start = status.get("offset", 0)
    if shown >= total and not start:
        return f"{what} ({total})"
    return f"{what} {start + 1}-{start + shown} of {total} (--offset {start + shown} for more)"


def status_tables(status: dict[str, Any]) -> Group:
    nodes = Table(title=_page(status, "nodes", len(status["nodes"]), status["nodes_total"]), title_justify="left")
    for col in ("node", "health", "cpu %", "mem %", "rate", "cap", "share", "LC p95 / deadline (ms)"):
        nodes.add_column(col)
    shares: dict[str, str] = {}
    for job in status["jobs"]:
        if job["state"] in ("running", "recovering"):
            for node, part in job["participants"].items():
                shares[node] = f"{part['share']}@{part['cap']:.2f} ({esc(job['job'])})"
    for n in status["nodes"]:
        health = "[green]alive[/]" if n["alive"] else f"[red]dead[/] {esc(n['why_dead'] or '')}".rstrip()
        if n["drained"]:
            health += " [yellow]drained[/]"
        nodes.add_row(
            esc(n["node"]),
            health,
            _fmt(n["cpu_percent"], ".0f"),
            _fmt(n["mem_percent"], ".0f"),
            _fmt(n["rate"], ".1f") + (f" ({esc(n['rate_source'])})" if n.get("rate_source") else ""),
            _fmt(n["cap_limit"], ".2f"),
            shares.get(n["node"], "-"),
            ", ".join(_lc(app, v) for app, v in n["lc"].items()) or "-",
        )
    jobs = Table(
        title=_page(status, "jobs", len(status["jobs"]), status.get("jobs_total", len(status["jobs"]))),
        title_justify="left",
    )
    for col in ("job", "state", "gen", "progress", "loss", "makespan (s)", "note"):
        jobs.add_column(col)
    for j in status["jobs"]:
        jobs.add_row(
            esc(j["job"]),
            esc(j["state"]),
            str(j["generation"]),
            _eta(j),
            _fmt(j["loss"], ".4f"),
            _makespan(j),
            _note(j),
        )
    return Group(nodes, jobs)
