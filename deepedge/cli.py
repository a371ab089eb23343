"""The ``deepedge`` command line. Only argument handling lives here; the work is in packages."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from deepedge import __version__
from deepedge.config import LoadedConfig, load_config, render_json, render_toml
from deepedge.errors import DeepEdgeError, ExitCode, NotBuiltError
from deepedge.log_setup import configure_logging

__all__ = ["app", "main"]

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


@dataclass
class CliState:
    config_path: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def load(self, **more: Any) -> LoadedConfig:
        loaded = load_config(self.config_path, overrides={**self.overrides, **more})
        configure_logging(loaded.config.log.level, loaded.config.log.format)
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


_PENDING = {
    "coordinator": ("Run the coordinator.", 5),
    "submit": ("Submit a retraining job.", 5),
    "status": ("Show nodes and jobs.", 5),
    "cancel": ("Cancel a job.", 5),
    "drain": ("Stop giving a node training work.", 5),
    "logs": ("Tail the cluster's events (-f to follow).", 5),
    "demo": ("Run the whole loop on an emulated cluster on this machine.", 7),
    "profile": ("Profile LC interference on this board (FECBench-style).", 0),
}


def _register_pending(group: typer.Typer, name: str, help_text: str, issue: int, prefix: str = "") -> None:
    where = f" (issue #{issue})" if issue else ""

    def command(ctx: typer.Context) -> None:
        raise NotBuiltError(f"'deepedge {prefix}{name}' is not built yet{where}")

    command.__doc__ = f"{help_text} (not built yet)"
    group.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(command)


for _name, (_help, _issue) in _PENDING.items():
    _register_pending(app, _name, _help, _issue)


@bench_app.command("daemon")
def bench_daemon(
    ctx: typer.Context,
    seconds: Annotated[float, typer.Option(help="How long to measure.")] = 60.0,
    interval: Annotated[float, typer.Option(help="Telemetry interval in seconds.")] = 1.0,
    out: Annotated[Path | None, typer.Option(help="Write the markdown table here.")] = Path(
        "docs/benchmarks/daemon.md"
    ),
) -> None:
    """The node daemon's CPU share and RSS against a real Mosquitto, beside a bare paho agent."""
    from deepedge.bench import run_daemon_bench

    ctx.obj.load()  # logging

    typer.echo(f"measuring the node daemon and the baseline agent for {seconds:g} s ...", err=True)
    result = run_daemon_bench(seconds, interval)
    text = result.markdown(f"deepedge bench daemon --seconds {seconds:g} --interval {interval:g}")
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# Node daemon footprint\n\n" + text)
        typer.echo(f"written to {out}", err=True)


@bench_app.command("planner")
def bench_planner(
    ctx: typer.Context,
    replans: Annotated[int, typer.Option(help="Warm re-plans per cluster size.")] = 20,
    out: Annotated[Path | None, typer.Option(help="Write the markdown table here.")] = Path(
        "docs/benchmarks/planner.md"
    ),
) -> None:
    """Warm re-plan time and plan quality at 10 to 10,000 nodes, and against exhaustive search."""
    from deepedge.bench import planner_markdown, run_planner_bench

    ctx.obj.load()
    typer.echo("planning random clusters of 10 to 10,000 nodes ...", err=True)
    rows, worst, trials = run_planner_bench(replans=replans)
    text = planner_markdown(rows, worst, trials, f"deepedge bench planner --replans {replans}")
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# Planner benchmark\n\n" + text)
        typer.echo(f"written to {out}", err=True)


for _name, (_help, _issue) in {
    "ingest": ("Telemetry rate the coordinator keeps up with, and its lag.", 5),
    "failover": ("Recovery after SIGKILL of a worker, against torchrun elastic.", 6),
    "makespan": ("The same job under a uniform split, the deepedge plan and the ideal bound.", 7),
}.items():
    _register_pending(bench_app, _name, _help, _issue, prefix="bench ")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app and maps deepedge errors to exit codes."""
    try:
        result = app(args=argv, standalone_mode=False)
    except DeepEdgeError as exc:
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
