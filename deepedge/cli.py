"""The ``deepedge`` command line. Only argument handling lives here; the work is in packages."""

from __future__ import annotations

import copy as _copy
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from deepedge import __version__
from deepedge.config import LoadedConfig, load_config, render_json, render_toml
from deepedge.errors import DeepEdgeError, ExitCode
from deepedge.log_setup import CONNECTION_EVENTS, LEVELS, configure_logging

__all__ = ["GLOBAL_OPTIONS", "app", "command", "main"]

app = typer.Typer(
    name="deepedge",
    help="Retrain DL models on a cluster of edge boards without missing LC deadlines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
bench_app = typer.Typer(
    help="Benchmarks; each compares with a baseline measured in the same run.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
deploy_app = typer.Typer(
    help="Secure broker deployment: CA and certificates, users and passwords, ACLs and mosquitto.conf.",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")


# The global options: before the command (``deepedge --cluster lab status``) or after it
# (``deepedge status --cluster lab``); the config key each sets (None: --config, the file).
GLOBAL_OPTIONS: dict[str, str | None] = {
    "config": None,
    "broker": "broker.url",
    "cluster": "cluster.name",
    "log_level": "log.level",
    "log_format": "log.format",
}


@dataclass
class CliState:
    config_path: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def set_global(self, name: str, value: Any) -> None:
        """A global option given after the command (it wins over the same one before it)."""
        key = GLOBAL_OPTIONS[name]
        if key is None:
            self.config_path = Path(value)
        else:
            self.overrides[key] = value

    def load(self, *, quiet: bool = False, **more: Any) -> LoadedConfig:
        """The effective config; configures logging. ``quiet``: a one-shot operator command, whose
        own log lines are only shown at warning and above unless asked for, and whose MQTT
        reconnect events are debug events (its one-line error says what went wrong)."""
        given = {key: value for key, value in more.items() if value is not None}  # (a command's own option)
        loaded = load_config(self.config_path, overrides={**self.overrides, **given})
        level = loaded.config.log.level
        if quiet and loaded.source_of("log.level") == "default":
            level = "warning"
        configure_logging(level, loaded.config.log.format, demote=CONNECTION_EVENTS if quiet else ())
        return loaded


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deepedge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="TOML config file (default: $DEEPEDGE_CONFIG, then /etc/deepedge/deepedge.toml)."
        ),
    ] = None,
    broker: Annotated[str | None, typer.Option(help="Broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT.")] = None,
    cluster: Annotated[str | None, typer.Option(help="Cluster name (topic prefix deepedge/<cluster>/).")] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="debug, info, warning or error.")] = None,
    log_format: Annotated[str | None, typer.Option("--log-format", help="auto, json or console.")] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = CliState(
        config,
        {"broker.url": broker, "cluster.name": cluster, "log.level": log_level, "log.format": log_format},
    )


@config_app.command("show")
def config_show(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="JSON instead of TOML.")] = False
) -> None:
    """Print the effective configuration (secrets masked) and where each value came from."""
    loaded = ctx.obj.load()
    typer.echo(render_json(loaded) if as_json else render_toml(loaded), nl=False)
    if as_json:
        typer.echo()


@app.command("node")
def node_cmd(
    ctx: typer.Context,
    node_id: Annotated[
        str | None, typer.Option("--node-id", help="This board's id (default: node.id, else the host name).")
    ] = None,
    cluster: Annotated[str | None, typer.Option(help="Cluster name.")] = None,
    broker: Annotated[str | None, typer.Option(help="Broker URL.")] = None,
) -> None:
    """Run the node daemon on this board (a systemd service): telemetry, LC latency, commands, workers."""
    import asyncio

    from deepedge.node import run_node

    loaded = ctx.obj.load(**{"node.id": node_id, "cluster.name": cluster, "broker.url": broker})
    raise typer.Exit(asyncio.run(run_node(loaded.config)))


@app.command("coordinator")
def coordinator_cmd(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Option(help="Cluster name.")] = None,
    broker: Annotated[str | None, typer.Option(help="Broker URL.")] = None,
    db: Annotated[str | None, typer.Option(help="SQLite job store (coordinator.db).")] = None,
) -> None:
    """Run the coordinator: cluster view, failure detector, planner, job store, commands."""
    import asyncio

    from deepedge.coordinator import run_coordinator

    loaded = ctx.obj.load(**{"cluster.name": cluster, "broker.url": broker, "coordinator.db": db})
    raise typer.Exit(asyncio.run(run_coordinator(loaded.config)))


def _print_json(data: object) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, default=str))


def _request(ctx: typer.Context, verb: str, args: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    import asyncio

    from deepedge.ops import coordinator_request

    loaded = ctx.obj.load(quiet=True)
    clean = {k: v for k, v in args.items() if v is not None}
    reply = asyncio.run(coordinator_request(loaded.config, verb, clean, timeout_s=timeout_s))
    return dict(reply.result)


def _count_samples(dataset: str) -> int | None:
    path = Path(dataset)
    if not path.is_dir():
        return None
    return sum(1 for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def _count_classes(dataset: str) -> int:
    """The class folders of a local image-folder dataset (0 if it is not one here)."""
    path = Path(dataset)
    return sum(1 for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else 0


@app.command("submit")
def submit_cmd(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Job spec as TOML: the keys are these flags' names with _ (learning_rate)."),
    ] = None,
    job: Annotated[str | None, typer.Option(help="Job id (default: generated).")] = None,
    model: Annotated[str | None, typer.Option(help="Model name or module:callable.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset location (on every node).")] = None,
    output: Annotated[str | None, typer.Option(help="Where checkpoints and the final model go.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs.")] = None,
    global_batch: Annotated[int | None, typer.Option("--global-batch", help="Samples per step, all nodes.")] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", "--lr", help="Learning rate (--lr for short).")
    ] = None,
    base_checkpoint: Annotated[str | None, typer.Option("--base-checkpoint", help="Checkpoint to fine-tune.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the data permutation.")] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="planned (default); for comparisons: uniform (the same share everywhere) or proportional "
            "(every node, shares in proportion to its rate)."
        ),
    ] = None,
    dataset_size: Annotated[
        int | None, typer.Option("--dataset-size", help="Samples (default: files in --dataset).")
    ] = None,
    model_bytes: Annotated[
        int | None,
        typer.Option(
            "--model-bytes",
            help="Gradient bytes per step (default: counted for a built-in model and a local --dataset's "
            "classes, else 4 MB).",
        ),
    ] = None,
    lc_control: Annotated[
        str | None,
        typer.Option(
            "--lc-control",
            help="forecast (default: caps for the forecast load, re-plan before a miss); reactive (lower a cap "
            "after a miss); unaware (LC apps ignored: for comparisons).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Submit a retraining job (flags, or a TOML file that flags override)."""
    from deepedge.ops import builtin_gradient_bytes, job_spec, read_job_file

    flags = {
        "job": job,
        "model": model,
        "dataset": dataset,
        "output": output,
        "epochs": epochs,
        "global_batch": global_batch,
        "learning_rate": learning_rate,
        "base_checkpoint": base_checkpoint,
        "seed": seed,
        "split": split,
        "dataset_size": dataset_size,
        "model_bytes": model_bytes,
        "lc_control": lc_control,
    }
    spec, missing = job_spec(read_job_file(file) if file is not None else {}, flags)
    if missing:
        raise typer.BadParameter(
            f"missing: {', '.join('--' + m.replace('_', '-') for m in missing)}"
            + (f" (or {', '.join(missing)} in {file})" if file is not None else "")
        )
    if "dataset_size" not in spec:
        counted = _count_samples(str(spec["dataset"]))
        if counted is None:
            raise typer.BadParameter(
                f"{spec['dataset']} is not a folder on this machine: check the path, or, where it is"
                " on the boards only, give its sample count with --dataset-size"
            )
        spec["dataset_size"] = counted
    if "model_bytes" not in spec:  # the planner weighs each all-reduce by it: 4 MB left 3 of 4 boards out
        counted_bytes = builtin_gradient_bytes(str(spec["model"]), _count_classes(str(spec["dataset"])))
        if counted_bytes is not None:
            spec["model_bytes"] = counted_bytes
    from deepedge.broker_schemas import ArgsError, SubmitArgs, args_of

    try:  # checked here as the coordinator checks it: a usage error (exit 2), not a refusal (69)
        args_of(spec, SubmitArgs)
    except ArgsError as exc:
        raise typer.BadParameter(f"job spec: {exc}") from None
    # the coordinator asks every candidate node for its pre-flight first (up to its
    # coordinator.preflight_timeout_s), then plans
    result = _request(ctx, "submit", spec, timeout_s=45.0)
    if as_json:
        _print_json(result)
        return
    parts = ", ".join(f"{n} {p['share']}@{p['cap']:.2f}" for n, p in result["participants"].items())
    typer.echo(
        f"job {result['job']}: {result['state']}, generation {result['generation']}, "
        f"{result['total_steps']} steps; shares@caps: {parts}; "
        f"predicted makespan {result['predicted_makespan_s']:.0f} s"
    )
    for node, why in (result.get("excluded") or {}).items():
        typer.echo(f"  {node} left out: {why}")


@app.command("status")
def status_cmd(
    ctx: typer.Context,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Nodes and jobs per page (default: what fits in one reply).")
    ] = None,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many nodes and jobs (the next page).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Nodes (health, load, rate, LC p95 vs deadline, cap, share) and jobs (progress, who left out)."""
    result = _request(ctx, "status", {"limit": limit, "offset": offset or None})
    if as_json:
        _print_json(result)
        return
    from deepedge.ops import make_console, show, status_tables

    show(make_console(), status_tables(result))


@app.command("cancel")
def cancel_cmd(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="Job id.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON output (errors too).")] = False,
) -> None:
    """Cancel a job: its workers stop; the state is kept."""
    result = _request(ctx, "cancel", {"job": job})
    _print_json(result) if as_json else typer.echo(f"job {result['job']}: {result['state']}")


@app.command("rm")
def rm_cmd(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Argument(help="A finished job's id.")] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Every job that finished this long ago: e.g. 90s, 30m, 12h, 7d."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output (errors too).")] = False,
) -> None:
    """Remove finished jobs from the coordinator (its store, status, retained progress); a
    removed job's id can be used again."""
    from deepedge.ops import parse_duration

    if (job is None) == (older_than is None):
        raise typer.BadParameter("give a JOB or --older-than, not both and not neither")
    args = {"job": job, "older_than_s": parse_duration(older_than) if older_than is not None else None}
    result = _request(ctx, "rm", args)
    if as_json:
        _print_json(result)
        return
    removed = result["removed"]
    typer.echo(f"removed {len(removed)} job(s)" + (f": {', '.join(removed)}" if removed else ""))


@app.command("drain")
def drain_cmd(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="Node id.")],
    undo: Annotated[bool, typer.Option("--undo", help="Undrain.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (shown in events).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output (errors too).")] = False,
) -> None:
    """Stop giving a node training work (the coordinator re-plans without it)."""
    result = _request(ctx, "undrain" if undo else "drain", {"node": node, "reason": reason})
    _print_json(result) if as_json else typer.echo(f"node {node}: {'drained' if result['drained'] else 'undrained'}")


@app.command("logs")
def logs_cmd(
    ctx: typer.Context,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep following (the only mode: events are live).")
    ] = True,
    node: Annotated[str | None, typer.Option(help="Only this node's events.")] = None,
    job: Annotated[str | None, typer.Option(help="Only this job's events.")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Tail the cluster's events (plans, failures, recoveries, LC violations)."""
    import asyncio

    from deepedge.broker_schemas import Event, encode_json
    from deepedge.ops import format_event, tail_events

    loaded = ctx.obj.load(quiet=True)

    def emit(e: Event) -> None:
        typer.echo(encode_json(e).decode() if as_json else format_event(e))

    try:

        def notice(text: str) -> None:  # on stderr: stdout stays events only (--json too)
            typer.echo(f"deepedge: {text}", err=True)

        asyncio.run(tail_events(loaded.config, emit, node=node, job=job, limit=limit, notice=notice))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command("demo")
def demo_cmd(
    ctx: typer.Context,
    nodes: Annotated[int, typer.Option(min=2, max=12, help="Emulated boards (the first two run an LC app).")] = 4,
    kill_after: Annotated[
        float, typer.Option("--kill-after", min=0, help="SIGKILL a board this many seconds into training.")
    ] = 12.0,
    no_kill: Annotated[bool, typer.Option("--no-kill", help="Kill no board.")] = False,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the cluster up afterwards (for status / logs -f) until Ctrl-C.")
    ] = False,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs of the retraining job (default: 12 for cnn-small, else 3).")
    ] = None,
    images: Annotated[int, typer.Option(min=200, help="Generated training images.")] = 3000,
    model: Annotated[
        str,
        typer.Option(
            help="The job's model: cnn-small, resnet18, mobilenet_v2 (BatchNorm) or their -gn variants. "
            "The LC apps keep theirs."
        ),
    ] = "cnn-small",
    workdir: Annotated[
        Path | None, typer.Option(help="Where configs, logs, data and the model go (default: a temp dir).")
    ] = None,
    broker: Annotated[
        str, typer.Option(help="auto (Mosquitto if installed, else amqtt), mosquitto or amqtt.")
    ] = "auto",
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Also write the report as JSON here.")] = None,
    boards: Annotated[
        str,
        typer.Option(
            "--boards",
            help="namespaces (as root: a network namespace, shaped link and cgroup per board, TLS broker), "
            "shared (one loopback, no limits) or auto (namespaces where possible).",
        ),
    ] = "auto",
    deadline_factor: Annotated[
        float,
        typer.Option(
            min=1.0, help="Each LC deadline: this factor x the app's p95 alone (at the --lc-trace's peak rate)."
        ),
    ] = 3.5,
    lc_trace: Annotated[
        str | None,
        typer.Option(help="The LC apps' request rate during the job: constant:R, step:R1,R2,T or diurnal:LOW,HIGH,P."),
    ] = None,
    lc_control: Annotated[
        str, typer.Option(help="forecast (the knowledge base, the forecast), reactive (miss-then-back-off) or unaware.")
    ] = "forecast",
) -> None:
    """Run the whole loop on an emulated heterogeneous cluster on this machine (about 2 minutes)."""
    from deepedge.demo import DEMO_EPOCHS, DEMO_MODELS, DemoOptions, render_report, run_demo
    from deepedge.demo._live import LiveView
    from deepedge.ops import esc, make_console, say

    if model not in DEMO_MODELS:
        raise typer.BadParameter(f"one of {', '.join(DEMO_MODELS)}, not {model!r}", param_hint="--model")
    epochs = epochs or DEMO_EPOCHS.get(model, 3)
    if boards not in ("auto", "namespaces", "shared"):
        raise typer.BadParameter(f"auto, namespaces or shared, not {boards!r}", param_hint="--boards")
    if lc_control not in ("forecast", "reactive", "unaware"):
        raise typer.BadParameter("--lc-control is forecast, reactive or unaware")
    if lc_trace is not None:
        from deepedge.demo.lc_app import Trace

        try:
            Trace.parse(lc_trace)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    _demo_logging(ctx.obj)
    _sigterm_stops()
    console = make_console()
    opts = DemoOptions(
        model=model,
        boards=boards,
        nodes=nodes,
        kill_after_s=None if no_kill else kill_after,
        keep=keep,
        workdir=workdir,
        epochs=epochs,
        images=images,
        broker=broker,
        deadline_factor=deadline_factor,
        lc_trace=lc_trace,
        lc_control=lc_control,
    )
    say(
        console,
        f"deepedge demo: {nodes} emulated boards, 2 LC apps, a retraining job of {model}, {epochs} epochs on "
        f"{images} generated images" + ("" if no_kill else f"; one board is killed {kill_after:g} s into training"),
    )
    try:
        with LiveView(console, console.is_terminal) as view:
            report = run_demo(opts, show=view)
    except KeyboardInterrupt:
        typer.echo("deepedge demo: stopped (interrupted, no report)", err=True)
        raise typer.Exit(130) from None
    render_report(report, console)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if keep and report.cluster is not None:
        cfg = report.cluster.config_path("operator")
        say(
            console,
            esc(
                f"the cluster is still up: deepedge --config {cfg} status | logs -f  "
                f"(workdir {report.cluster.workdir}); Ctrl-C stops it"
            ),
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            report.cluster.stop()
    raise typer.Exit(0 if report.ok else 1)


def _sigterm_stops() -> None:
    """SIGTERM stops the demo or a benchmark as Ctrl-C does: its cluster is torn down (processes,
    namespaces, links, cgroups) before it exits."""

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _demo_logging(state: CliState) -> None:
    """The demo's own process logs (its watcher's and requests' MQTT clients) on stderr, at
    warning unless --log-level says otherwise, never into the report on stdout. The cluster's
    daemons log to files in the workdir. No config file is read: the demo makes its own."""
    level = state.overrides.get("log.level") or "warning"
    fmt = state.overrides.get("log.format") or "auto"
    if level not in LEVELS or fmt not in ("auto", "json", "console"):
        raise typer.BadParameter(f"--log-level {level} / --log-format {fmt}: see deepedge --help")
    configure_logging(level, fmt, demote=CONNECTION_EVENTS)  # type: ignore[arg-type]  # (checked just above)


PROFILE_VERBS = ("list", "show", "export", "import")


@app.command("profile")
def profile_cmd(
    ctx: typer.Context,
    node: Annotated[
        str, typer.Argument(help="Node id (its daemon runs the profile), or list | show | export | import.")
    ],
    target: Annotated[
        str | None, typer.Argument(help="show: a profile id; export / import: a JSON file.", show_default=False)
    ] = None,
    model: Annotated[str, typer.Option(help="Model to profile.")] = "cnn-small",
    levels: Annotated[
        str | None, typer.Option(help="Intensities, comma-separated (default 1, or 1,0.5,0.25 with LC apps).")
    ] = None,
    seconds: Annotated[
        float | None, typer.Option(help="Seconds per level / run (default 3, at most the node's window).")
    ] = None,
    interference: Annotated[
        bool, typer.Option("--interference", help="Designed interference runs (stressors, intensity, LC rate).")
    ] = False,
    lc_app: Annotated[str | None, typer.Option("--app", help="--interference: the LC app to model.")] = None,
    budget: Annotated[
        int, typer.Option(help="--interference: runs in all (design + adaptive; at least --adaptive + 4).")
    ] = 40,
    adaptive: Annotated[int, typer.Option(help="--interference: runs added where the model is least sure.")] = 8,
    rate_min: Annotated[float, typer.Option(help="--interference: lowest LC request rate (req/s).")] = 10.0,
    rate_max: Annotated[float, typer.Option(help="--interference: highest LC request rate (req/s).")] = 40.0,
    quantile: Annotated[float, typer.Option(help="The upper quantile caps are set for.")] = 0.95,
    kb: Annotated[
        Path | None, typer.Option(help="Knowledge base (default: knowledge.db beside coordinator.db).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output (errors too).")] = False,
) -> None:
    """Profile a board: its training rate alone and its LC apps' p95 per intensity; with
    --interference, designed runs under stressors fitted into the knowledge base.

    FECBench-style; the node keeps the result and announces it, the coordinator plans with it.
    `deepedge profile list | show ID | export FILE | import FILE` manage the knowledge base."""
    import asyncio

    from deepedge.broker_schemas import ID_PATTERN
    from deepedge.ops import profile_node

    loaded = ctx.obj.load(quiet=True)
    if node in PROFILE_VERBS or interference:
        from deepedge.profiling import knowledge_base_path  # not via the coordinator: cvxpy takes seconds

        kb_path = kb or Path(knowledge_base_path(loaded.config.coordinator.db))
        if node in PROFILE_VERBS:
            _profile_kb(node, target, kb_path, as_json)
            return
    if ID_PATTERN.fullmatch(node) is None:
        raise typer.BadParameter(f"node id {node!r} does not match [A-Za-z0-9_.-]{{1,64}}")
    if interference:
        from deepedge.profiling._design import Space
        from deepedge.profiling._remote import profile_interference

        for wrong, why in (
            (not 0.5 <= quantile < 1, f"--quantile {quantile:g} is not in [0.5, 1)"),
            (adaptive < 0, f"--adaptive {adaptive} is negative"),
            (budget - adaptive < 4, f"--budget {budget} is under --adaptive + 4 = {adaptive + 4} (the design's least)"),
            (not 0 < rate_min <= rate_max, f"--rate-min {rate_min:g} / --rate-max {rate_max:g}: need 0 < min <= max"),
            (rate_max > 1e4, f"--rate-max {rate_max:g} is over 10000 req/s"),
            (seconds is not None and not 0.5 <= seconds <= 600, f"--seconds {seconds:g} is not in [0.5, 600]"),
        ):
            if wrong:
                raise typer.BadParameter(why)
        done = asyncio.run(
            profile_interference(
                loaded.config,
                node,
                kb_path,
                app=lc_app,
                budget=budget,
                adaptive=adaptive,
                seconds=3.0 if seconds is None else seconds,
                space=Space(rate_min=rate_min, rate_max=rate_max),
                q=quantile,
                model=model,
                log=None if as_json else (lambda m: typer.echo(m, err=True)),
            )
        )
        summary = {
            "key": str(done.key),
            "profile_id": done.profile_id,
            "knowledge_base": str(kb_path),
            "runs": done.budget,
            "full_grid": done.full_grid,
            "model": done.surrogate.kind,
            "candidates": [c.to_dict() for c in done.candidates],
        }
        if as_json:
            _print_json(summary)
            return
        typer.echo(
            f"{done.key}: {done.budget} runs of a {done.full_grid}-run grid; model {done.surrogate.kind} "
            f"(cross-validated median error {done.surrogate.cv.median_ape:.1%}, 95 % interval coverage "
            f"{done.surrogate.cv.coverage:.0%}); profile {done.profile_id} in {kb_path}"
        )
        for c in done.candidates:
            typer.echo(
                f"  {c.kind}: median error {c.median_ape:.1%}, 90th percentile {c.p90_ape:.1%}, "
                f"coverage {c.coverage:.0%}"
                + (f"; leave-one-mix-out {c.mix_median_ape:.1%}" if c.mix_median_ape is not None else "")
            )
        if done.surrogate.cv.coverage < 0.85:  # (its 95 % intervals) stored all the same: caps widen online
            typer.echo(
                f"warning: its 95 % intervals covered {done.surrogate.cv.coverage:.0%} of the runs they "
                f"were not fitted on ({done.budget} runs): the caps it sets are less safe than stated until live "
                "reports widen them; a larger --budget narrows the doubt",
                err=True,
            )
        return
    args = {"model": model, "levels": levels, "seconds": seconds}

    shown = [0.0]

    def waiting(elapsed: float) -> None:
        if not as_json and elapsed - shown[0] >= 2.0:
            shown[0] = elapsed
            typer.echo(f"profiling {node}: {elapsed:.0f} s", err=True)

    result = asyncio.run(profile_node(loaded.config, node, {k: v for k, v in args.items() if v is not None}, waiting))
    if as_json:
        _print_json(result)
        return
    typer.echo(f"node {node}, model {model}: {result['samples_per_s']:.1f} samples/s training alone at full intensity")
    for p in result["lc"]:
        typer.echo(f"  {p['app']}: p95 {p['p95_ms']:.1f} ms at intensity {p['intensity']:.2f}")


def _profile_kb(verb: str, target: str | None, kb_path: Path, as_json: bool) -> None:
    """deepedge profile list | show ID | export FILE | import FILE."""
    import sqlite3

    from deepedge.profiling import KnowledgeBase, KnowledgeBaseError

    if verb != "list" and not target:
        raise typer.BadParameter(f"profile {verb} needs {'a profile id' if verb == 'show' else 'a file'}")
    doc: Any = None
    if verb == "import":  # read before the knowledge base is made: a bad file leaves none behind
        assert target is not None
        try:
            doc = json.loads(Path(target).read_text())
        except OSError as exc:
            raise KnowledgeBaseError(f"import {target}: {exc.strerror or exc}") from None
        except (ValueError, RecursionError) as exc:
            raise KnowledgeBaseError(f"import {target}: {exc}") from None
    kbase = KnowledgeBase(kb_path, create=verb == "import")  # the others only read it
    if verb == "list":
        rows = kbase.profiles()
        if as_json:
            _print_json([{**r.__dict__, "key": r.key.__dict__} for r in rows])
            return
        typer.echo(f"{len(rows)} profile(s) in {kb_path}")
        for r in rows:
            fig = f"{r.kind}, CV median error {r.median_ape:.1%}" if r.kind and r.median_ape is not None else "no model"
            typer.echo(f"  {r.id}: {r.key}  {r.runs} runs, {fig}  ({r.source})")
    elif verb == "show":
        assert target is not None
        try:
            shown = kbase.show(int(target))
        except ValueError:
            raise typer.BadParameter(f"profile id {target!r} is not a number (see deepedge profile list)") from None
        if shown is None:
            raise typer.BadParameter(f"no profile {target} in {kb_path} (see deepedge profile list)")
        if as_json:
            _print_json(shown)
            return
        m = shown["model"]
        typer.echo(f"profile {shown['id']}: {shown['device_model']} / {shown['app']} / {shown['versions']}")
        typer.echo(f"  {len(shown['runs'])} runs ({shown['source']}); design of {len(shown['design'])} points")
        if m:
            typer.echo(
                f"  model {m['kind']} at quantile {m['q']:g}: CV median error {m['cv']['median_ape']:.1%}, "
                f"coverage {m['cv']['coverage']:.0%}"
            )
            for c in m["candidates"]:
                mix = c.get("mix_median_ape")
                typer.echo(
                    f"    {c['kind']}: {c['median_ape']:.1%} ({c['coverage']:.0%})"
                    + (f"; leave-one-mix-out {mix:.1%}" if isinstance(mix, float) else "")
                )
    elif verb == "export":
        assert target is not None
        try:
            Path(target).write_text(json.dumps(kbase.export(), indent=1))
        except OSError as exc:
            raise KnowledgeBaseError(f"export to {target}: {exc.strerror or exc}") from None
        typer.echo(f"exported {len(kbase.profiles())} profile(s) to {target}", err=True)
    else:
        assert target is not None
        try:
            ids = kbase.import_(doc)  # (it checks the document: any JSON value)
        except (ValueError, KeyError, TypeError, RecursionError, sqlite3.Error) as exc:
            raise KnowledgeBaseError(f"import {target}: {exc}") from None
        typer.echo(f"imported {len(ids)} profile(s) into {kb_path}", err=True)


_BENCH_OUT_HELP = (
    "Write the markdown here (default: bench-results/{page}-<UTC time>.md; docs/benchmarks/ is written by "
    "hand from such files and never overwritten unless named here)."
)


def bench_results_path(page: str) -> Path:
    """Where a benchmark's markdown goes when ``--out`` is not given: a new file per run under
    ./bench-results (the docs' pages keep every earlier run with its reading; a default that
    overwrote them lost that history)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path("bench-results") / f"{page}-{stamp}.md"


def _write_bench(out: Path | None, page: str, title: str, text: str) -> None:
    """Print a benchmark's markdown and write it to ``out``, else to a new file under ./bench-results
    (created, never an existing file or a link there: a second run in the same second gets -2)."""
    typer.echo(text)
    body = f"# {title}\n\n{text}"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(body)
        target = out
    else:
        first = bench_results_path(page)
        first.parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 100):
            target = first if n == 1 else first.with_name(f"{first.stem}-{n}.md")
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
            break
        else:
            raise DeepEdgeError(f"{first.parent}: 99 results of {page} in the same second; not written")
    typer.echo(f"written to {target}", err=True)


@bench_app.command("daemon")
def bench_daemon(
    ctx: typer.Context,
    seconds: Annotated[float, typer.Option(help="How long to measure.")] = 60.0,
    interval: Annotated[float, typer.Option(help="Telemetry interval in seconds.")] = 1.0,
    out: Annotated[Path | None, typer.Option(help=_BENCH_OUT_HELP.format(page="daemon"))] = None,
) -> None:
    """The node daemon's CPU share and RSS against a real Mosquitto, beside a bare paho agent."""
    from deepedge.bench import run_daemon_bench

    ctx.obj.load()  # logging

    typer.echo(f"measuring the node daemon and the baseline agent for {seconds:g} s ...", err=True)
    result = run_daemon_bench(seconds, interval)
    text = result.markdown(f"deepedge bench daemon --seconds {seconds:g} --interval {interval:g}")
    _write_bench(out, "daemon", "Node daemon footprint", text)


@bench_app.command("planner")
def bench_planner(
    ctx: typer.Context,
    replans: Annotated[int, typer.Option(help="Warm re-plans per cluster size.")] = 20,
    out: Annotated[Path | None, typer.Option(help=_BENCH_OUT_HELP.format(page="planner"))] = None,
) -> None:
    """Warm re-plan time and plan quality at 10 to 10,000 nodes, and against exhaustive search."""
    from deepedge.bench import planner_markdown, run_planner_bench

    ctx.obj.load()
    typer.echo("planning random clusters of 10 to 10,000 nodes ...", err=True)
    rows, worst, trials = run_planner_bench(replans=replans)
    text = planner_markdown(rows, worst, trials, f"deepedge bench planner --replans {replans}")
    _write_bench(out, "planner", "Planner benchmark", text)


@bench_app.command("ingest")
def bench_ingest(
    ctx: typer.Context,
    seconds: Annotated[float, typer.Option(help="Seconds of load per rate.")] = 5.0,
    rates: Annotated[str, typer.Option(help="Offered rates, messages/s, comma-separated.")] = "2000,5000,10000,20000",
    out: Annotated[Path | None, typer.Option(help=_BENCH_OUT_HELP.format(page="ingest"))] = None,
) -> None:
    """Telemetry rate the coordinator keeps up with through Mosquitto, and its lag."""
    from deepedge.bench import ingest_markdown, run_ingest_bench

    ctx.obj.load()
    offered = tuple(float(r) for r in rates.split(","))
    typer.echo(f"offering {rates} messages/s for {seconds:g} s each ...", err=True)
    text = ingest_markdown(
        run_ingest_bench(offered, seconds), f"deepedge bench ingest --seconds {seconds:g} --rates {rates}"
    )
    _write_bench(out, "ingest", "Coordinator ingest benchmark", text)


@bench_app.command("failover")
def bench_failover(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help=_BENCH_OUT_HELP.format(page="failover"))] = None,
) -> None:
    """Recovery after SIGKILL of one of 3 gloo workers, against torchrun's elastic agent."""
    from deepedge.bench import failover_markdown, run_failover_bench

    ctx.obj.load()
    typer.echo("training with 3 workers, killing one, for deepedge and then torchrun ...", err=True)
    _write_bench(
        out, "failover", "Failover benchmark", failover_markdown(run_failover_bench(), "deepedge bench failover")
    )


@bench_app.command("makespan")
def bench_makespan(
    ctx: typer.Context,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs of each job (6 shared, 2 namespaced).")] = None,
    images: Annotated[
        int | None, typer.Option(min=200, help="Generated training images (3000 shared, 1280 namespaced).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help=_BENCH_OUT_HELP.format(page="makespan")
            + " The page is makespan, links with --boards namespaces, lc-scenarios with --scenarios."
        ),
    ] = None,
    boards: Annotated[
        str,
        typer.Option(
            "--boards",
            help="shared: the demo's boards on this machine's loopback and CPUs, cnn-small; namespaces (root): "
            "their own namespaces, shaped links and cgroups, MobileNetV2.",
        ),
    ] = "shared",
    only: Annotated[
        str, typer.Option(help="Namespaced scenarios to run, comma-separated: comm, makespan, load, failover.")
    ] = "comm,makespan,load,failover",
    scenarios: Annotated[
        str | None,
        typer.Option(
            help="Instead: the LC scenarios, comma-separated: tight (tight deadlines: uniform, LC-unaware, deepedge), "
            "step and diurnal (request-rate traces: deepedge's forecast vs miss-then-back-off)."
        ),
    ] = None,
    tight_factor: Annotated[float, typer.Option(min=1.0, help="tight: deadline = this x the p95 alone.")] = 1.5,
    trace_factor: Annotated[float, typer.Option(min=1.0, help="step, diurnal: deadline = this x alone.")] = 2.0,
    nodes: Annotated[
        int, typer.Option(min=2, max=12, help="--scenarios: emulated boards (the first two: LC apps).")
    ] = 2,
    profile_runs: Annotated[
        int,
        typer.Option(
            min=8, max=200, help="--scenarios: interference-profiling runs per LC board (the knowledge base's model)."
        ),
    ] = 40,
    profile_seconds: Annotated[
        float, typer.Option(min=0.5, max=30.0, help="--scenarios: seconds each profiling run measures.")
    ] = 2.5,
    alone_seconds: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=600.0,
            help="--scenarios: before each job, the LC apps alone this long under its trace and deadlines "
            "(the share missed with no job; 0: not measured).",
        ),
    ] = 40.0,
    trace_lead: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=600.0,
            help="--scenarios: the step and diurnal traces start this long before each submission, so the "
            "coordinator's request-rate history already holds them (two periods: a season it can find; 0: the "
            "traces start at the submission).",
        ),
    ] = 0.0,
    controllers: Annotated[
        str,
        typer.Option(
            help="--scenarios: the controllers run under the step and diurnal traces, in this order, "
            "comma-separated: forecast (deepedge), trend (deepedge with its coordinator's seasonal forecast "
            "off, coordinator.forecast_seasons = false: the seasonal forecast's A/B), reactive (today's "
            "miss-then-back-off).",
        ),
    ] = "forecast,reactive",
    cold_preflight: Annotated[
        bool,
        typer.Option(
            "--cold-preflight",
            help="--scenarios: no board checks a job before its submission, so the first job of each cluster "
            "pays its pre-flight's torch part (default: every board checks each job once before, as for a "
            "retraining it ran before, and its pre-flight is answered from node.preflight_cache_s's cache).",
        ),
    ] = False,
    timeline: Annotated[
        Path | None,
        typer.Option(
            help="--scenarios: also write each job's run in time (LC reports, plans, events, worker states) "
            "here, as JSON."
        ),
    ] = None,
) -> None:
    """The same job under a uniform split, the deepedge plan and the ideal bound, with and without LC apps
    (--boards namespaces: with shaped links, background load and link failures)."""
    from deepedge.bench import makespan_markdown, run_makespan_bench
    from deepedge.bench._lc_scenarios import DEFAULT_CONTROLLERS, check_controllers

    arms = tuple(c.strip() for c in controllers.split(",") if c.strip())
    try:
        check_controllers(arms)
    except ValueError as exc:
        raise typer.BadParameter(f"--{exc} (comma-separated)") from None
    chosen = tuple(s.strip() for s in scenarios.split(",") if s.strip()) if scenarios is not None else ()
    if scenarios is not None and (not chosen or any(s not in ("tight", "step", "diurnal") for s in chosen)):
        raise typer.BadParameter("--scenarios: tight, step, diurnal (comma-separated)")
    if arms != DEFAULT_CONTROLLERS and not any(s in ("step", "diurnal") for s in chosen):
        raise typer.BadParameter("--controllers: for --scenarios step or diurnal (tight runs its own three)")
    if scenarios is not None:
        from deepedge.bench._lc_scenarios import lc_markdown, run_lc_scenarios

        ctx.obj.load()
        epochs, images = epochs or 6, images or 3000
        typer.echo(f"emulated {nodes}-board cluster, LC scenarios {', '.join(chosen)} ...", err=True)
        lc_rows = run_lc_scenarios(
            chosen,
            epochs,
            images,
            tight_factor,
            trace_factor,
            nodes,
            profile_runs,
            profile_seconds,
            alone_seconds,
            checked_before=not cold_preflight,
            trace_lead_s=trace_lead,
            controllers=arms,
        )
        command = (
            f"deepedge bench makespan --scenarios {','.join(chosen)} --epochs {epochs} --images {images} "
            f"--tight-factor {tight_factor:g} --trace-factor {trace_factor:g} --nodes {nodes} "
            f"--profile-runs {profile_runs} --profile-seconds {profile_seconds:g} --alone-seconds {alone_seconds:g}"
            + (" --cold-preflight" if cold_preflight else "")
            + (f" --trace-lead {trace_lead:g}" if trace_lead > 0 else "")
            + (f" --controllers {','.join(arms)}" if arms != DEFAULT_CONTROLLERS else "")
        )
        _write_bench(
            out,
            "lc-scenarios",
            "LC deadlines: deepedge vs naive splits and today's controller",
            lc_markdown(
                lc_rows,
                command,
                tight_factor,
                trace_factor,
                (profile_runs, profile_seconds),
                not cold_preflight,
                trace_lead,
            ),
        )
        if timeline is not None:
            runs = [{"scenario": r.scenario, "controller": r.controller, **(r.timeline or {})} for r in lc_rows]
            timeline.parent.mkdir(parents=True, exist_ok=True)
            timeline.write_text(json.dumps({"command": command, "runs": runs}, indent=1) + "\n")
            typer.echo(f"wrote {timeline}", err=True)
        return

    ctx.obj.load()
    _sigterm_stops()
    if boards == "namespaces":
        _bench_links(epochs or 2, images or 1280, out, only)
        return
    if boards != "shared":
        raise typer.BadParameter(f"--boards {boards}: shared or namespaces")
    epochs, images = epochs or 6, images or 3000
    typer.echo("emulated 4-board cluster: deepedge plan, then uniform split; without and with LC apps ...", err=True)
    rows = run_makespan_bench(epochs=epochs, images=images)
    text = makespan_markdown(rows, f"deepedge bench makespan --epochs {epochs} --images {images}")
    _write_bench(out, "makespan", "Makespan: deepedge plan vs uniform split vs ideal bound", text)


def _bench_links(epochs: int, images: int, out: Path | None, only: str) -> None:
    from deepedge.bench import links_markdown, run_comm_bench, run_link_failover, run_links_makespan, run_load_bench
    from deepedge.netem import why_not_usable

    why = why_not_usable()
    if why is not None:
        raise typer.BadParameter(f"--boards namespaces: {why}")
    wanted = {s.strip() for s in only.split(",") if s.strip()}
    unknown = wanted - {"comm", "makespan", "load", "failover"}
    if unknown:
        raise typer.BadParameter(f"--only {', '.join(sorted(unknown))}: comm, makespan, load or failover")
    rows, load, failover, comm = [], None, [], []
    if "comm" in wanted:
        typer.echo("MobileNetV2's all-reduce between the namespaced boards, float32 and float16 ...", err=True)
        comm = run_comm_bench()
    if "makespan" in wanted:
        typer.echo("namespaced boards, MobileNetV2: proportional, uniform, then the deepedge plan ...", err=True)
        rows = run_links_makespan(epochs=epochs, images=images)
    if "load" in wanted:
        typer.echo("background load toggled every 10 s on one board ...", err=True)
        load = run_load_bench(epochs=epochs, images=int(images * 1.5))
    if "failover" in wanted:
        typer.echo("a participant's cable pulled, then its link degraded to 1 % ...", err=True)
        failover = run_link_failover(epochs=epochs, images=images)
    command = f"deepedge bench makespan --boards namespaces --epochs {epochs} --images {images} --only {only}"
    _write_bench(
        out,
        "links",
        "Boards with real boundaries: links, load and link failures",
        links_markdown(rows, load, failover, command, comm),
    )


@bench_app.command("interference")
def bench_interference(
    ctx: typer.Context,
    budget: Annotated[int, typer.Option(min=8, help="Runs to fit on (design + adaptive).")] = 48,
    adaptive: Annotated[int, typer.Option(min=0, help="Of which added where the model is least sure.")] = 8,
    per_scenario: Annotated[int, typer.Option(min=1, help="Held-out runs per co-location scenario.")] = 4,
    seconds: Annotated[float, typer.Option(min=0.5, help="Seconds measured per run.")] = 3.0,
    repeats: Annotated[
        int,
        typer.Option(min=0, help="Runs of one point spread over the session (the measurement's own noise and drift)."),
    ] = 5,
    max_mix: Annotated[
        int,
        typer.Option(
            min=1,
            max=4,
            help="Stressors on at once in a design point (3, as deepedge profile: the held-out mixes of three "
            "were in the design at other levels, all four never; 2: every held-out mix is new).",
        ),
    ] = 3,
    workdir: Annotated[Path | None, typer.Option(help="Where the runs' files and knowledge base go.")] = None,
    refit: Annotated[
        Path | None, typer.Option(help="Recompute the figures from this knowledge base's runs (no measuring).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help=_BENCH_OUT_HELP.format(page="interference"))] = None,
) -> None:
    """Surrogate p95 predictions in held-out co-location scenarios (real LC app, stress-ng, training)."""
    from deepedge.bench._interference import interference_markdown, refit_figures, run_interference_bench

    ctx.obj.load()
    if refit is not None:
        result = refit_figures(refit)
        command = f"deepedge bench interference --refit {refit}"
    else:
        if budget - adaptive < 4:
            raise typer.BadParameter("--budget must be at least --adaptive + 4")
        typer.echo("profiling this machine (design, adaptive, held-out scenarios) ...", err=True)
        result = run_interference_bench(
            budget,
            adaptive,
            per_scenario,
            seconds,
            repeats,
            workdir,
            progress=lambda m: typer.echo(m, err=True),
            max_mix=max_mix,
        )
        command = (
            f"deepedge bench interference --budget {budget} --adaptive {adaptive} --per-scenario {per_scenario} "
            f"--seconds {seconds:g} --repeats {repeats}" + (f" --max-mix {max_mix}" if max_mix != 3 else "")
        )
    _write_bench(
        out, "interference", "Interference model: held-out prediction error", interference_markdown(result, command)
    )


@bench_app.command("forecast")
def bench_forecast(
    ctx: typer.Context,
    horizon: Annotated[float, typer.Option(min=1.0, help="Seconds ahead the rate must cover.")] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of the simulated request arrivals.")] = 1,
    out: Annotated[Path | None, typer.Option(help=_BENCH_OUT_HELP.format(page="forecast"))] = None,
) -> None:
    """The LC request-rate forecast on traces: coverage of the coming peak, over-provision, swings."""
    from deepedge.bench._forecast import forecast_markdown, run_forecast_bench

    ctx.obj.load()
    rows = run_forecast_bench(horizon, seed, progress=lambda m: typer.echo(m, err=True))
    command = f"deepedge bench forecast --horizon {horizon:g} --seed {seed}"
    _write_bench(out, "forecast", "LC request-rate forecast on traces", forecast_markdown(rows, command, horizon))


_DEPLOY_HELP = {
    "certs": "The cluster's CA (reused if present), the broker's server certificate, client certificates "
    "(--client-certs) and ca.crt for every client.",
    "users": "A random password per user, the broker's two password files (mosquitto_passwd) and each user's "
    "deepedge.toml with its credentials.",
    "acl": "The daemon and operator listeners' ACLs and the Mosquitto config (deepedge.conf).",
    "all": "certs, users and acl: everything the broker and every board need (docs/install.md).",
}


def deploy_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Output folder (ca/, mosquitto/, clients/<user>/).")],
    cluster: Annotated[
        str | None,
        typer.Option(help="Cluster name: every ACL line is pinned to it (default: a --cluster before `deploy`)."),
    ] = None,
    node: Annotated[list[str] | None, typer.Option("--node", help="A node id (= its username); repeat.")] = None,
    operator: Annotated[list[str] | None, typer.Option("--operator", help="An operator's username; repeat.")] = None,
    coordinator_user: Annotated[str, typer.Option("--coordinator-user", help="The coordinator's username.")] = (
        "coordinator"
    ),
    broker_host: Annotated[
        list[str] | None,
        typer.Option("--broker-host", help="The broker's host name or IP as the boards reach it; repeat (SANs)."),
    ] = None,
    daemon_port: Annotated[int, typer.Option("--daemon-port", help="TLS port of nodes and coordinator.")] = 8883,
    operator_port: Annotated[int, typer.Option("--operator-port", help="TLS port of operators (the CLI).")] = 8884,
    bind_address: Annotated[str, typer.Option("--bind-address", help="Address the listeners bind (all).")] = "",
    broker_dir: Annotated[
        str, typer.Option("--broker-dir", help="Where mosquitto/ will be on the broker host.")
    ] = "/etc/mosquitto/deepedge",
    client_dir: Annotated[
        str, typer.Option("--client-dir", help="Where clients/<user>/ will be on its machine ({user} allowed).")
    ] = "/etc/deepedge",
    client_certs: Annotated[
        bool, typer.Option("--client-certs", help="Mutual TLS: a certificate per user, required by the broker.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Reissue certificates and passwords that exist (never the CA).")
    ] = False,
) -> None:
    from deepedge.deploy import (
        DeploySpec,
        deploy_all,
        write_broker_config,
        write_certs,
        write_users,
    )

    if cluster is None:  # `deepedge --cluster lab deploy certs` said "Missing option '--cluster'"
        cluster = ctx.obj.overrides.get("cluster.name") if isinstance(ctx.obj, CliState) else None
        if not cluster:
            raise typer.BadParameter("the cluster the ACLs are for is needed: --cluster NAME", param_hint="'--cluster'")
    spec = DeploySpec(
        cluster=cluster,
        nodes=tuple(node or ()),
        operators=tuple(operator or ()),
        coordinator=coordinator_user,
        broker_hosts=tuple(broker_host or ()),
        daemon_port=daemon_port,
        operator_port=operator_port,
        bind_address=bind_address,
        broker_dir=broker_dir,
        client_dir=client_dir,
        client_certs=client_certs,
    )
    what = ctx.info_name
    if what == "certs":
        written = write_certs(spec, out, force=force)
    elif what == "users":
        written = write_users(spec, out, force=force)
    elif what == "acl":
        written = write_broker_config(spec, out)
    else:
        written = deploy_all(spec, out, force=force)
    for w in written:
        typer.echo(w.line())


for _name, _help in _DEPLOY_HELP.items():
    deploy_app.command(_name, help=_help)(deploy_cmd)


def _global_option_after_command(ctx: Any, param: Any, value: Any) -> None:
    if value is not None and isinstance(ctx.obj, CliState):
        ctx.obj.set_global(param.name, value)


def _with_global_options(group: Any, options: list[Any]) -> None:
    """Give every command and group under ``group`` the root's global options, unless it has an
    option of that name itself (``node --cluster`` means the same; ``deploy --cluster`` and
    ``demo --broker`` do not, and keep theirs). The root's callback (which makes the CliState)
    runs before a command's options are parsed, so each one's callback can set it."""
    for command in getattr(group, "commands", {}).values():
        taken = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        for option in options:
            if taken & set(option.opts):
                continue
            copy = _copy.copy(option)
            copy.expose_value = False
            copy.callback = _global_option_after_command
            copy.rich_help_panel = "Global options (also before the command)"
            command.params.append(copy)
        _with_global_options(command, options)


def command() -> Any:
    """The click command of the app, global options accepted before or after each command."""
    import typer.main

    root = typer.main.get_command(app)
    _with_global_options(root, [p for p in root.params if p.name in GLOBAL_OPTIONS])
    return root


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app and maps deepedge errors to exit codes."""
    as_json = "--json" in (sys.argv[1:] if argv is None else argv)
    try:
        result = command().main(args=argv, standalone_mode=False)
    except DeepEdgeError as exc:
        if as_json:  # a script asked for JSON: its errors are JSON too (on stdout, with the exit code)
            code = getattr(exc, "code", type(exc).__name__)
            typer.echo(json.dumps({"error": {"code": code, "message": str(exc), "exit_code": int(exc.exit_code)}}))
        else:
            typer.echo(f"deepedge: error: {exc}", err=True)
        return int(exc.exit_code)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        return 130
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"deepedge: {exc}", err=True)
        return int(getattr(exc, "exit_code", ExitCode.USAGE))
    return result if isinstance(result, int) else int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
