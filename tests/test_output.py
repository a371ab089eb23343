"""Output outside a terminal (CI logs, ``| tee``, journald) stays whole: tables at their natural
width, lines unwrapped, no colour; names, reasons and notes are printed as they are."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest
from rich.console import Console

from deepedge.demo._report import DemoReport, Failover, Generation, LcResult, render_report
from deepedge.ops import say, show, status_tables
from deepedge.training import StepTiming

VISION = "model resnet18 needs torchvision: pip install 'deepedge[vision]'"
CLOSING = "worker said [/] and [bold]not bold[/bold] then died"
WHY = "lc.violation orin-nx (detector p95 41.2 ms over its 30.8 ms [deadline])"


def non_terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=80), out


def node(name: str, alive: bool = True, **kw: Any) -> dict[str, Any]:
    out = {"node": name, "alive": alive, "drained": False, "why_dead": None, "cpu_percent": 3.0, "mem_percent": 5.0}
    return {**out, "rate": 20.0, "cap_limit": 1.0, "lc": {}, **kw}


def job(name: str, state: str, reason: str, **kw: Any) -> dict[str, Any]:
    out = {"job": name, "state": state, "generation": 0, "step": 0, "total_steps": 0, "samples_done": 0}
    return {**out, "loss": None, "reason": reason, "participants": {}, "predicted_makespan_s": None, **kw}


def status() -> dict[str, Any]:
    lc = {
        "detector": {"p95_ms": 48.25, "deadline_ms": 50.0, "count": 90},
        "tracker": {"p95_ms": 61.0, "deadline_ms": 50.0, "count": 9},
    }
    return {
        "nodes_total": 3,
        "nodes": [
            node("jetson-orin-nx-01.lab", cpu_percent=37.5, rate=100.0, cap_limit=0.8, lc=lc),
            node("jetson-xavier-nx-02.lab", False, drained=True, why_dead="connection lost (last will) [/]"),
            node("nano-03", lc={"deadline-app": {"p95_ms": 0.0, "deadline_ms": None, "count": 0}}),
        ],
        "jobs": [
            job(
                "retrain-cams-2026-11-23",
                "recovering",
                CLOSING,
                generation=12,
                step=1046,
                total_steps=20000,
                loss=0.02171,
                participants={"jetson-orin-nx-01.lab": {"share": 64, "cap": 0.8}},
                predicted_makespan_s=1280.4,
            ),
            job("vision-1", "failed", VISION),
        ],
    }


def assert_whole(text: str, values: list[str]) -> None:
    """Nothing cut short, and each value on one line."""
    assert "…" not in text
    lines = text.splitlines()
    for v in values:
        assert any(v in line for line in lines), f"{v!r} is not whole on one line:\n{text}"


def test_the_status_tables_outside_a_terminal_are_whole_at_80_columns() -> None:
    console, out = non_terminal()
    show(console, status_tables(status()))
    text = out.getvalue()
    assert_whole(
        text,
        [
            "jetson-orin-nx-01.lab",
            "jetson-xavier-nx-02.lab",
            "dead connection lost (last will) [/] drained",
            "detector 48.2/50, tracker 61.0/50 !",
            "deadline-app -/-",
            "64@0.80 (retrain-cams-2026-11-23)",
            "LC p95 / deadline (ms)",
            "makespan (s)",
            "1046/20000",
            CLOSING,
            VISION,
        ],
    )
    assert max(len(line) for line in text.splitlines()) > 80  # its natural width, not the console's
    assert "\x1b[" not in text  # no colour codes
    assert all(line == line.rstrip() for line in text.splitlines())


def test_markup_in_names_and_reasons_is_printed_as_is_on_a_terminal_too() -> None:
    out = io.StringIO()
    console = Console(file=out, width=300, force_terminal=True, color_system=None)
    show(console, status_tables(status()))  # "[/]" in a reason crashed the table (MarkupError)
    assert CLOSING in out.getvalue() and VISION in out.getvalue()


def test_a_line_is_not_wrapped_outside_a_terminal() -> None:
    console, out = non_terminal()
    line = (
        "job running | gen 2 | step 128/288 | 16000 samples | 837 samples/s | loss 0.512 | ETA 19 s | 22 s | "
        "plan gens 2 [vision]"
    )
    say(console, line.replace("[", "\\["))
    assert out.getvalue() == line + "\n"


def report(problems: list[str]) -> DemoReport:
    boards = [
        {"node": n, "kind": "", "speed": 1.0, "memory_mb": 1, "cpu": 0, "lc_app": None, "sample_ms": 2.0,
         "killed": n == "tx2", "profiled_samples_per_s": s}
        for n, s in (("orin-nx", 500.0), ("xavier-nx", 300.0), ("tx2", 200.0), ("nano", 125.0))
    ]  # fmt: skip
    timing = StepTiming(286, 40.4, 40.0, 0.3, 0.9, 141.2, 140.0, 1.2, 3.2)
    return DemoReport(
        state="completed",
        steps=288,
        total_steps=288,
        samples_done=36000,
        boards=boards,
        makespan_s=45.7,
        training_s=38.4,
        predicted_first_s=34.0,
        predicted_learned_s=None,
        ideal_s=32.0,
        generations=[
            Generation(1, 0.1, "submitted", {"orin-nx": (57, 1.0), "xavier-nx": (34, 1.0), "tx2": (23, 1.0)}, 34.0),
            Generation(2, 19.4, WHY, {"orin-nx": (69, 0.8), "xavier-nx": (42, 1.0), "nano": (17, 1.0)}, 30.0),
        ],
        lc=[
            LcResult("detector", "orin-nx", 8.8, 30.8, 14.9, 21.3, 67, 0, 18),
            LcResult("tracker", "xavier-nx", 8.8, 30.6, 16.2, 17.9, 66, 0, 16),
        ],
        failover=Failover("tx2", 0.0, 0.1, 0.5, 0),
        accounting={"samples": 36000, "missing": 0, "duplicated": 0, "ok": True},
        timing=timing,
        model_path="/tmp/demo [7]/output/model.pt",
        loss_first=2.35,
        loss_last=0.0,
        problems=problems,
    )


@pytest.mark.parametrize("problems", [[], [f"the job ended failed, not completed: {VISION}", CLOSING]])
def test_the_demo_report_outside_a_terminal_is_whole_at_80_columns(problems: list[str]) -> None:
    console, out = non_terminal()
    render_report(report(problems), console)
    text = out.getvalue()
    assert_whole(
        text,
        [
            "job completed: 288/288 steps, 36000 samples; loss 2.350 -> 0.000",
            "actual (submit to done)",
            "predicted, re-planned on learned rates",
            "ideal bound (last plan's rates)",
            "a step (median of 286): 141.2 ms = slowest board's compute 140.0 + all-reduce 1.2 + the rest 3.2",
            "boards profiled before the job (samples/s at full intensity): orin-nx 500, xavier-nx 300, tx2 200, "
            "nano 125",
            WHY,
            "xavier-nx",
            "'of which start-up' those whose window covers the workers' start",
            "alone p95",
            "deadline",
            "median p95",
            "worst p95",
            "start-up",
            "30.8 ms",
            "failover: SIGKILL tx2 at 0.00 s -> detected 0.0 s -> re-planned 0.1 s -> resumed 0.5 s; steps redone: 0",
            "model: /tmp/demo [7]/output/model.pt",
            *(f"FAIL: {p}" for p in problems),
        ],
    )
    assert ("PASS: completed" in text) == (not problems)
    assert "\x1b[" not in text


def test_the_demo_logs_to_stderr_never_into_its_report() -> None:
    # `deepedge demo` configures its own process's logging: before, structlog's default printed
    # "[info] mqtt.connected" on stdout, into the report
    code = (
        "import structlog; from deepedge.cli import CliState, _demo_logging; _demo_logging(CliState()); "
        "log = structlog.get_logger(); log.info('mqtt.connected'); log.warning('mqtt.disconnected'); "
        "log.info('demo.detail'); log.warning('demo.trouble')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "demo.trouble" in r.stderr and "mqtt." not in r.stderr and "demo.detail" not in r.stderr


def test_what_comes_from_the_network_cannot_drive_the_operators_terminal() -> None:
    """An event's message with OSC sequences (window title, clipboard write) and a carriage
    return faking a log line was printed raw by `deepedge logs`."""
    from deepedge.broker_schemas import Event
    from deepedge.ops import esc, format_event

    evil = "\x1b]0;PWNED-TITLE\x07\x1b]52;c;cm0gLXJmIH4=\x07\rjob.completed all good"
    line = format_event(Event(ts=1.0, source="node/n3", event="worker.crashed", node="n3", message=evil))
    assert "\x1b" not in line and "\x07" not in line and "\r" not in line
    assert "\\x1b]0;PWNED-TITLE\\x07" in line  # shown, not sent
    assert "\x1b" not in esc(evil) and "\\x1b" in esc(evil)


def test_a_job_refused_at_submit_says_each_nodes_reason_once() -> None:
    """(a new operator's review, 2026-12-06) the note repeated the refusal's reasons twice."""
    from deepedge.ops._tables import _note

    why = "dataset /x is not under training.data_roots"
    job = {"reason": f"no node accepted the job: n1: {why}", "excluded": {"n1": why, "n2": "dead"}}
    assert _note(job) == f"no node accepted the job: n1: {why}; n2 left out: dead"
