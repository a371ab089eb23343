"""The console script as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deepedge import __version__
from deepedge.errors import ExitCode

EXE = shutil.which("deepedge", path=str(Path(sys.executable).parent)) or shutil.which("deepedge")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert EXE is not None, "the deepedge console script is not installed (pip install -e .)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEDGE_")}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env={**clean, **(env or {})}, timeout=60)


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"deepedge {__version__}"


def test_help_lists_the_commands_of_the_design() -> None:
    r = run("--help")
    assert r.returncode == 0
    for name in (
        "node",
        "coordinator",
        "submit",
        "status",
        "cancel",
        "drain",
        "logs",
        "demo",
        "bench",
        "profile",
        "config",
    ):
        assert name in r.stdout


def test_config_show_masks_secrets_and_names_sources(tmp_path: Path) -> None:
    f = tmp_path / "d.toml"
    f.write_text('[broker]\npassword = "s3cret"\n')
    r = run("--config", str(f), "--cluster", "lab", "config", "show", env={"DEEPEDGE_BROKER_USERNAME": "edge"})
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout and "********" in r.stdout
    assert 'name = "lab"  # flag' in r.stdout
    assert 'username = "edge"  # env DEEPEDGE_BROKER_USERNAME' in r.stdout
    r = run("--config", str(f), "config", "show", "--json")
    assert r.returncode == 0 and '"password": "********"' in r.stdout


def test_bad_config_exits_78_with_one_line(tmp_path: Path) -> None:
    r = run("config", "show", env={"DEEPEDGE_BROKER_KEEPALIVE_S": "soon"})
    assert r.returncode == ExitCode.CONFIG
    assert r.stderr.count("\n") == 1 and "broker.keepalive_s" in r.stderr


def test_usage_error_exits_2() -> None:
    r = run("config", "show", "--no-such-flag")
    assert r.returncode == ExitCode.USAGE


@pytest.mark.mosquitto
def test_bench_daemon_runs_and_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "daemon.md"
    r = run("--log-level", "warning", "bench", "daemon", "--seconds", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "`deepedge node`" in text and "baseline" in text and "ratio daemon / baseline" in text
