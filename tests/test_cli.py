"""The console script as a user runs it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deepedge import __version__
from deepedge.errors import ExitCode
from deepedge.log_setup import CONNECTION_EVENTS
from tests.conftest import free_port

EXE = shutil.which("deepedge", path=str(Path(sys.executable).parent)) or shutil.which("deepedge")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert EXE is not None, "the deepedge console script is not installed (pip install -e .)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEDGE_")}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env={**clean, **(env or {})}, timeout=60)


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"deepedge {__version__}"


def commands_table(help_text: str) -> set[str]:
    """The command names of the Commands panel of a rich ``--help``."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if "─ Commands ─" in line)
    names = set()
    for line in lines[start + 1 :]:
        if line.startswith("╰"):
            break
        match = re.match(r"│ (\S+)\s", line)  # a continuation line starts with blanks
        if match:
            names.add(match.group(1))
    return names


def test_help_lists_the_commands_of_the_design() -> None:
    r = run("--help")
    assert r.returncode == 0
    assert commands_table(r.stdout) == {
        "node",
        "coordinator",
        "submit",
        "status",
        "cancel",
        "drain",
        "rm",
        "logs",
        "demo",
        "bench",
        "profile",
        "config",
        "deploy",
    }


def test_the_commands_table_parser_sees_a_missing_command() -> None:
    r = run("--help")
    without_node = "\n".join(line for line in r.stdout.splitlines() if not line.startswith("│ node "))
    assert "node" in without_node  # (the words still appear, in drain's help: why `in` was not enough)
    assert "node" not in commands_table(without_node)


# Each global option, with what `config show` prints for it.
GLOBALS = [
    (["--broker", "mqtt://10.9.8.7:1884"], 'url = "mqtt://10.9.8.7:1884"  # flag'),
    (["--cluster", "lab"], 'name = "lab"  # flag'),
    (["--log-level", "debug"], 'level = "debug"  # flag'),
    (["--log-format", "json"], 'format = "json"  # flag'),
]


@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize(("option", "shown"), GLOBALS, ids=[g[0][0] for g in GLOBALS])
def test_a_global_option_goes_before_or_after_the_command(option: list[str], shown: str, placement: str) -> None:
    args = [*option, "config", "show"] if placement == "before" else ["config", "show", *option]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert shown in r.stdout


@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("flag", ["--config", "-c"])
def test_the_config_file_option_goes_before_or_after_the_command(tmp_path: Path, flag: str, placement: str) -> None:
    f = tmp_path / "d.toml"
    f.write_text('[cluster]\nname = "fromfile"\n')
    args = [flag, str(f), "config", "show"] if placement == "before" else ["config", "show", flag, str(f)]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert f"# config file: {f}" in r.stdout and f'name = "fromfile"  # file {f}' in r.stdout


def test_a_global_option_after_the_command_wins_over_the_same_before_it() -> None:
    r = run("--cluster", "first", "config", "show", "--cluster", "second")
    assert r.returncode == 0 and 'name = "second"  # flag' in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["node", "--cluster", "bad/name"],
        ["--cluster", "bad/name", "node"],
        ["coordinator", "--cluster", "bad/name"],
        ["node", "--broker", "http://x", "--log-level", "debug"],
        ["node", "--log-level", "loud"],
    ],
)
def test_the_daemons_take_the_global_options_too(args: list[str]) -> None:
    # a bad value is refused before anything starts: the option reached the configuration
    r = run(*args)
    assert r.returncode == ExitCode.CONFIG, r.stderr
    assert r.stderr.count("\n") == 1 and "(flag)" in r.stderr


def test_deploy_keeps_its_own_cluster_option(tmp_path: Path) -> None:
    r = run("deploy", "acl", "--out", str(tmp_path), "--cluster", "lab", "--node", "n1")
    assert r.returncode == 0, r.stderr
    assert "deepedge/lab/" in (tmp_path / "mosquitto" / "daemons.acl").read_text()


def test_an_unreachable_broker_is_one_line_and_exit_75() -> None:
    env = {"DEEPEDGE_BROKER_CONNECT_TIMEOUT_S": "1.5"}
    r = run("status", "--broker", f"mqtt://127.0.0.1:{free_port()}", env=env)
    assert r.returncode == ExitCode.TEMPFAIL
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("deepedge: error: no connection to the MQTT broker")
    # the reconnect loop's events are debug events of a one-shot command
    r = run("status", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--log-level", "debug", env=env)
    assert r.returncode == ExitCode.TEMPFAIL
    events = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    mqtt = [e for e in events if e["event"] in CONNECTION_EVENTS]
    assert mqtt and all(e["level"] == "debug" for e in mqtt), events
    # a level set in the configuration (not asked on the command line) does not bring them back
    r = run("status", "--broker", f"mqtt://127.0.0.1:{free_port()}", env={**env, "DEEPEDGE_LOG_LEVEL": "info"})
    assert r.returncode == ExitCode.TEMPFAIL and r.stderr.count("\n") == 1


UNREACHABLE = {"DEEPEDGE_BROKER_CONNECT_TIMEOUT_S": "0.5", "DEEPEDGE_BROKER_URL": "mqtt://127.0.0.1:9"}
JOB = {"model": "cnn-small", "dataset": "/data", "output": "/out", "epochs": 1, "global_batch": 8, "dataset_size": 80}


def job_file(tmp_path: Path, **fields: object) -> Path:
    f = tmp_path / "job.toml"
    f.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))
    return f


def test_submit_names_a_missing_learning_rate_as_help_shows_it() -> None:
    r = run("submit", *[f"--{k.replace('_', '-')}={v}" for k, v in JOB.items()])
    assert r.returncode == ExitCode.USAGE
    assert "missing: --learning-rate" in r.stderr
    assert "--learning-rate" in run("submit", "--help").stdout


@pytest.mark.parametrize("flag", ["--learning-rate", "--lr"])
def test_submit_takes_learning_rate_or_its_alias_lr(flag: str) -> None:
    # past the spec's checks, it goes for the broker (unreachable here: exit 75)
    r = run("submit", *[f"--{k.replace('_', '-')}={v}" for k, v in JOB.items()], flag, "0.1", env=UNREACHABLE)
    assert r.returncode == ExitCode.TEMPFAIL, r.stderr


@pytest.mark.parametrize("key", ["learning_rate", "lr"])
def test_a_job_file_uses_the_flags_names(tmp_path: Path, key: str) -> None:
    r = run("submit", "--file", str(job_file(tmp_path, **JOB, **{key: 0.1})), env=UNREACHABLE)
    assert r.returncode == ExitCode.TEMPFAIL, r.stderr


def test_lc_control_is_a_flag_and_a_job_file_key(tmp_path: Path) -> None:
    """A new operator's review: coordinator.md calls lc_control part of a job spec, but neither
    `submit` nor a job file took it."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in JOB.items()]
    r = run("submit", *flags, "--lr", "0.1", "--lc-control", "reactive", env=UNREACHABLE)
    assert r.returncode == ExitCode.TEMPFAIL, r.stderr
    r = run("submit", "--file", str(job_file(tmp_path, **JOB, lr=0.1, lc_control="unaware")), env=UNREACHABLE)
    assert r.returncode == ExitCode.TEMPFAIL, r.stderr


def test_the_cli_counts_a_built_in_models_gradient_bytes_as_the_model_has_them(tmp_path: Path) -> None:
    """Without --model-bytes the planner weighed cnn-small's 41 kB all-reduce as 4 MB and left
    three of four boards out; the CLI now counts a built-in model's (torch-free table, checked
    here against the models themselves) for the classes of a local dataset."""
    from deepedge.cli import _count_classes
    from deepedge.ops import builtin_gradient_bytes
    from deepedge.ops._job import _BUILTIN_PARAMS
    from deepedge.training import build_model

    for name in _BUILTIN_PARAMS:
        for classes in (2, 10):
            real = 4 * sum(p.numel() for p in build_model(name, classes).parameters() if p.requires_grad)
            assert builtin_gradient_bytes(name, classes) == real, (name, classes)
    assert builtin_gradient_bytes("cnn-small", 10) == 41256
    assert builtin_gradient_bytes("mypkg:net", 10) is None and builtin_gradient_bytes("cnn-small", 0) is None
    for c in ("cat", "dog", ".hidden"):
        (tmp_path / "data" / c).mkdir(parents=True)
    assert _count_classes(str(tmp_path / "data")) == 2 and _count_classes("/no/such/folder") == 0


def test_a_job_spec_out_of_its_bounds_is_a_usage_error_before_any_broker() -> None:
    """(a new operator's review, 2026-12-06) `--epochs 0` went to the coordinator and came back
    as a refusal (exit 69); the CLI checks the spec as the coordinator does (exit 2)."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**JOB, "epochs": 0}.items()]
    r = run("submit", *flags, "--lr", "0.1", env=UNREACHABLE)
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert "job spec: Expected `int` >= 1 (epochs)" in r.stderr


def test_a_job_file_missing_a_field_names_the_flag_and_the_key(tmp_path: Path) -> None:
    f = job_file(tmp_path, **JOB)
    r = run("submit", "--file", str(f))
    assert r.returncode == ExitCode.USAGE
    assert f"missing: --learning-rate (or learning_rate in {f})" in r.stderr


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"learning_rte": 0.1}, "unknown key 'learning_rte'"),
        ({"lr": 0.1, "learning_rate": 0.2}, "'lr' and 'learning_rate' are the same field"),
        ({"learning_rate": [0.1]}, "learning_rate must be a string, a number or a boolean"),
    ],
)
def test_a_bad_job_file_is_one_line_and_exit_78(tmp_path: Path, fields: dict[str, object], needle: str) -> None:
    r = run("submit", "--file", str(job_file(tmp_path, **JOB, **fields)))
    assert r.returncode == ExitCode.CONFIG
    assert r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr


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


@pytest.mark.parametrize("what", ["directory", "not utf-8", "unreadable"])
def test_an_unusable_config_file_is_one_line_and_exit_78(tmp_path: Path, what: str) -> None:
    path = {"directory": tmp_path, "not utf-8": tmp_path / "l1.toml", "unreadable": Path("/proc/self/mem")}[what]
    if what == "not utf-8":
        path.write_bytes(b'[cluster]\nname = "caf\xe9"\n')
    r = run("--config", str(path), "status")
    assert r.returncode == ExitCode.CONFIG
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"deepedge: error: config file {path} "), r.stderr


def test_the_knowledge_base_verbs_answer_a_wrong_file_in_one_line_with_its_exit_code(tmp_path: Path) -> None:
    """A new operator's review: a folder, a text file, an export into a missing folder gave
    tracebacks (exit 1); an unknown profile id exit 1 (a bug's code)."""
    text = tmp_path / "notes.txt"
    text.write_text("not a database " * 20)
    kb = tmp_path / "kb.db"
    assert run("profile", "import", str(text), "--kb", str(kb)).returncode == ExitCode.CONFIG  # not JSON
    assert not kb.exists()  # a failed import leaves no empty knowledge base
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"format": "deepedge-knowledge-base/1", "profiles": []}))
    assert run("profile", "import", str(empty), "--kb", str(kb)).returncode == 0 and kb.exists()
    cases = [
        (["list", "--kb", str(tmp_path)], ExitCode.CONFIG, "is a folder"),
        (["list", "--kb", str(text)], ExitCode.CONFIG, "is not a knowledge base"),
        (["list", "--kb", str(tmp_path / "none.db")], ExitCode.CONFIG, "no knowledge base at"),
        (["export", str(tmp_path / "no" / "x.json"), "--kb", str(kb)], ExitCode.CONFIG, "No such file or directory"),
        (["show", "99", "--kb", str(kb)], ExitCode.USAGE, "no profile 99"),
    ]
    for args, code, needle in cases:
        r = run("profile", *args)
        assert r.returncode == code and needle in r.stderr, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr


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


@pytest.mark.mosquitto
def test_bench_results_are_new_files_never_an_existing_one_or_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs in the same second keep both results; a link planted at the path is not followed."""
    from deepedge import cli

    monkeypatch.chdir(tmp_path)
    fixed = Path("bench-results") / "daemon-20261204-000000.md"
    monkeypatch.setattr(cli, "bench_results_path", lambda page: fixed)
    victim = tmp_path / "victim.md"
    victim.write_text("keep me\n")
    (tmp_path / "bench-results").mkdir()
    (tmp_path / fixed).symlink_to(victim)
    cli._write_bench(None, "daemon", "Daemon", "first")
    cli._write_bench(None, "daemon", "Daemon", "second")
    assert victim.read_text() == "keep me\n"
    assert (tmp_path / "bench-results" / "daemon-20261204-000000-2.md").read_text() == "# Daemon\n\nfirst"
    assert (tmp_path / "bench-results" / "daemon-20261204-000000-3.md").read_text() == "# Daemon\n\nsecond"


def test_a_bench_without_out_never_overwrites_the_docs_page(tmp_path: Path) -> None:
    """The pages under docs/benchmarks/ keep every earlier run with its reading: a bench run in the
    repository without --out writes a new file under ./bench-results and leaves them alone."""
    page = tmp_path / "docs" / "benchmarks" / "daemon.md"
    page.parent.mkdir(parents=True)
    page.write_text("# curated by hand\n")
    assert EXE is not None
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEDGE_")}
    r = subprocess.run(
        [EXE, "--log-level", "warning", "bench", "daemon", "--seconds", "1"],
        capture_output=True,
        text=True,
        env=clean,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert page.read_text() == "# curated by hand\n"
    written = list((tmp_path / "bench-results").glob("daemon-*.md"))
    assert len(written) == 1 and re.fullmatch(r"daemon-\d{8}-\d{6}\.md", written[0].name)
    assert "ratio daemon / baseline" in written[0].read_text()
    assert f"written to {Path('bench-results') / written[0].name}" in r.stderr
