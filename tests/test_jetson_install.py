"""deploy/jetson/install.sh, run here against fake system commands (apt-get, useradd, systemctl,
install, the venv's Python with a fake torch): --dry-run changes nothing and runs nothing, a real
run does each step once (a second run skips them), and a torch that cannot serve is refused."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "jetson" / "install.sh"
SYSTEM = ["apt-get", "pip", "pip3", "python3", "python3.10", "useradd", "usermod", "install", "systemctl"]

# The fake system: every command logs its arguments to $FAKE_LOG. In "fail" mode each one exits
# 97 (a dry run must call none); otherwise they act on the temporary directories only.
FAKE_ID = """#!/usr/bin/env bash
echo "id $*" >>"$FAKE_LOG"
if [ "$*" = "-u" ]; then echo 0; exit 0; fi
[ -f "$FAKE_STATE/user-deepedge" ] || exit 1
case "$1" in -nG) cat "$FAKE_STATE/user-deepedge" ;; *) echo 999 ;; esac
"""
FAKE_GETENT = """#!/usr/bin/env bash
echo "getent $*" >>"$FAKE_LOG"
[ "$*" = "group video" ]  # this board has a video group and no render group
"""
FAKE = {
    "apt-get": "exit 0",
    "systemctl": "exit 0",
    "pip": "exit 0",
    "pip3": "exit 0",
    "python3": "exit 0",
    "useradd": 'echo deepedge >"$FAKE_STATE/user-deepedge"',
    "usermod": 'echo "deepedge $2" >"$FAKE_STATE/user-deepedge"',  # usermod -aG GROUP deepedge
    # python3.10 -m venv --system-site-packages PREFIX: a venv whose python runs the real one with a
    # fake torch for the check (stdin script), and only logs pip and the probe
    "python3.10": """prefix=${@: -1}
mkdir -p "$prefix/bin"
cat >"$prefix/bin/python" <<EOF
#!/usr/bin/env bash
echo "venv-python \\$*" >>"\\$FAKE_LOG"
if [ "\\$1" = - ]; then PYTHONPATH="$FAKE_TORCH" exec "$REAL_PYTHON" "\\$@"; fi
exit 0
EOF
chmod +x "$prefix/bin/python"
""",
    # install -d [-m M -o U -g G] DIR | install -D [-m M -o U -g G] SRC DST, owners ignored
    "install": """args=(); dir=0
while [ $# -gt 0 ]; do case "$1" in -d) dir=1 ;; -D) ;; -m|-o|-g) shift ;; *) args+=("$1") ;; esac; shift; done
if [ $dir = 1 ]; then mkdir -p "${args[@]}"
else mkdir -p "$(dirname "${args[1]}")"; cp "${args[0]}" "${args[1]}"; fi""",
}

FAKE_TORCH = """import os
__version__ = os.environ.get("FAKE_TORCH_VERSION", "2.8.0")
class cuda:
    @staticmethod
    def is_available():
        return os.environ.get("FAKE_TORCH_CUDA", "1") == "1"
"""
FAKE_DIST = """import os
def is_available():
    return os.environ.get("FAKE_TORCH_DISTRIBUTED", "1") == "1"
def is_gloo_available():
    return os.environ.get("FAKE_TORCH_GLOO", "1") == "1"
def is_nccl_available():
    return False
"""


class Board:
    def __init__(self, tmp: Path, mode: str) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.log = tmp / "calls.log"
        self.state = tmp / "state"
        for d in (self.bin, self.state, tmp / "faketorch" / "torch" / "distributed"):
            d.mkdir(parents=True, exist_ok=True)
        (tmp / "faketorch" / "torch" / "__init__.py").write_text(FAKE_TORCH)
        (tmp / "faketorch" / "torch" / "distributed" / "__init__.py").write_text(FAKE_DIST)
        scripts = {name: f'echo "{name} $*" >>"$FAKE_LOG"\nexit 97' for name in SYSTEM} if mode == "fail" else FAKE
        for name, body in scripts.items():
            self._write(name, f'#!/usr/bin/env bash\necho "{name} $*" >>"$FAKE_LOG"\n{body}\n')
        self._write("id", FAKE_ID)
        self._write("getent", FAKE_GETENT)
        self.paths = {
            "--prefix": tmp / "opt" / "venv",
            "--config-dir": tmp / "etc" / "deepedge",
            "--unit-dir": tmp / "etc" / "systemd",
            "--state-dir": tmp / "var" / "deepedge",
        }

    def _write(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text if text.startswith("#!") else f"#!/usr/bin/env bash\n{text}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def run(
        self, *args: str, env: dict[str, str] | None = None, paths: bool = True
    ) -> subprocess.CompletedProcess[str]:
        self.log.unlink(missing_ok=True)
        opts = [str(x) for kv in self.paths.items() for x in kv] if paths else []
        return subprocess.run(
            ["bash", str(SCRIPT), *args, *opts],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PATH": f"{self.bin}:{os.environ['PATH']}",
                "HOME": str(self.tmp),
                "FAKE_LOG": str(self.log),
                "FAKE_STATE": str(self.state),
                "FAKE_TORCH": str(self.tmp / "faketorch"),
                "REAL_PYTHON": sys.executable,
                "DEEPEDGE_TEGRA_RELEASE": str(self.tmp / "nv_tegra_release"),
                **(env or {}),
            },
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def changes(self) -> list[str]:
        """The calls that change something (not the read-only look-ups)."""
        return [c for c in self.calls() if not c.startswith(("id ", "getent "))]


def test_the_script_passes_bash_n_and_shellcheck() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (bash -n passed)")
    r = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("paths", [True, False], ids=["temp-paths", "default-paths"])
def test_dry_run_for_jetpack_6_prints_every_step_and_runs_nothing(tmp_path: Path, paths: bool) -> None:
    board = Board(tmp_path, "fail")
    r = board.run(
        "--dry-run", "--jetpack", "6", "--torch-wheel", "/tmp/torch-2.8.0-cp310-cp310-linux_aarch64.whl", paths=paths
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert board.changes() == []  # apt-get, pip, python3.10, useradd, install, systemctl: none called
    out = r.stdout
    for i in range(1, 10):
        assert f"== step {i}:" in out
    venv = board.paths["--prefix"] if paths else Path("/opt/deepedge/venv")
    for expected in [
        "JetPack 6",
        "+ apt-get update",
        "python3.10-venv python3-pip libopenblas-dev",
        f"+ python3.10 -m venv --system-site-packages {venv}",
        f"+ {venv}/bin/python -m pip install --no-cache-dir /tmp/torch-2.8.0-cp310-cp310-linux_aarch64.whl",
        "refuse: < 2.6, no torch.distributed, no gloo",
        f"-m pip install --no-cache-dir -c {venv}/deepedge-torch-pin.txt {ROOT}",
        "+ useradd --system --user-group",
        "+ usermod -aG video deepedge",
        "skip: no group render",
        "+ systemctl enable deepedge-node.service",
        "dry run done: nothing was changed",
    ]:
        assert expected in out, expected
    assert "constraints.txt" not in out
    if paths:  # (with the defaults, this machine's own /etc/deepedge may exist and be skipped)
        assert "deepedge.toml.example" in out
    assert not any(p.exists() for p in board.paths.values())


def test_jetpack_is_read_from_nv_tegra_release(tmp_path: Path) -> None:
    board = Board(tmp_path, "fail")
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    r = board.run("--dry-run")
    assert r.returncode == 0, r.stderr
    assert "JetPack 6 (L4T R36.4.3)" in r.stdout
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    r = board.run("--dry-run")
    assert r.returncode == 1
    assert "JetPack 5 (Python 3.8) has no NVIDIA torch >= 2.6" in r.stderr
    release.unlink()
    r = board.run("--dry-run")
    assert r.returncode == 1
    assert "give --jetpack" in r.stderr
    assert board.changes() == []


def test_bad_options_are_refused(tmp_path: Path) -> None:
    board = Board(tmp_path, "fail")
    assert "unknown option --frobnicate" in board.run("--dry-run", "--frobnicate").stderr
    assert "not both" in board.run("--dry-run", "--torch-wheel", "a.whl", "--torch-index", "https://x").stderr
    assert "--jetpack needs a value" in board.run("--dry-run", "--jetpack", paths=False).stderr
    assert "--jetpack needs a value" in board.run("--dry-run", "--jetpack", "--start").stderr
    r = board.run("--dry-run", "--jetpack", "6", "--source", str(tmp_path))
    assert "not a deepedge checkout" in r.stderr
    assert board.changes() == []


def test_a_real_run_does_each_step_once_and_a_second_run_skips_them(tmp_path: Path) -> None:
    board = Board(tmp_path, "act")
    wheel = "/wheels/torch-2.8.0-cp310-cp310-linux_aarch64.whl"
    r = board.run("--jetpack", "6", "--torch-wheel", wheel)
    assert r.returncode == 0, r.stdout + r.stderr
    venv = board.paths["--prefix"]
    first = board.changes()
    assert first[:3] == [
        "apt-get update",
        "apt-get install -y --no-install-recommends python3.10-venv python3-pip libopenblas-dev",
        f"python3.10 -m venv --system-site-packages {venv}",
    ]
    assert f"venv-python -m pip install --no-cache-dir {wheel}" in first
    assert f"venv-python -m pip install --no-cache-dir -c {venv}/deepedge-torch-pin.txt {ROOT}" in first
    assert (venv / "deepedge-torch-pin.txt").read_text() == "torch==2.8.0\n"
    assert "version=2.8.0 distributed=1 gloo=1 nccl=0 cuda=1" in r.stdout
    assert "no NCCL: this board's GPU trains with gloo" in r.stdout
    for call in ["useradd", "usermod -aG video deepedge", "systemctl daemon-reload", "systemctl enable"]:
        assert any(c.startswith(call) for c in first), call
    config = board.paths["--config-dir"] / "deepedge.toml"
    unit = board.paths["--unit-dir"] / "deepedge-node.service"
    assert config.read_text() == (ROOT / "deploy" / "deepedge.toml.example").read_text()
    assert unit.read_text() == (ROOT / "deploy" / "systemd" / "deepedge-node.service").read_text()
    assert board.paths["--state-dir"].is_dir()

    config.write_text("# the operator's own\n")
    r = board.run("--jetpack", "6", "--no-apt")
    assert r.returncode == 0, r.stdout + r.stderr
    second = board.changes()
    assert not any(c.startswith(("python3.10", "useradd", "usermod", "install", "apt-get")) for c in second), second
    assert "systemctl daemon-reload" not in second  # the unit is unchanged
    assert config.read_text() == "# the operator's own\n"  # never overwritten
    for skipped in ["exists", "user deepedge exists", "deepedge is in video", "is up to date"]:
        assert skipped in r.stdout, skipped


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"FAKE_TORCH_VERSION": "2.5.0"}, "older than 2.6"),
        ({"FAKE_TORCH_VERSION": "2.6.0rc1"}, "older than 2.6"),  # pip's order: a pre-release is older
        ({"FAKE_TORCH_VERSION": "2.6.0a0+ecf3bae40a.nv25.01"}, "older than 2.6"),
        ({"FAKE_TORCH_DISTRIBUTED": "0"}, "built without torch.distributed"),
        ({"FAKE_TORCH_GLOO": "0"}, "no gloo backend"),
    ],
)
def test_a_torch_that_cannot_serve_is_refused_before_deepedge_is_installed(
    tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    board = Board(tmp_path, "act")
    r = board.run("--jetpack", "6", "--no-apt", env=env)
    assert r.returncode == 1
    assert reason in r.stderr
    assert "refusing this torch" in r.stderr
    assert not any("pip install" in c for c in board.changes())  # deepedge was not installed
    assert not any(c.startswith("useradd") for c in board.changes())


def test_a_torch_without_cuda_is_accepted_with_a_warning(tmp_path: Path) -> None:
    board = Board(tmp_path, "act")
    r = board.run("--jetpack", "6", "--no-apt", env={"FAKE_TORCH_CUDA": "0", "FAKE_TORCH_VERSION": "2.6.0"})
    assert r.returncode == 0, r.stderr
    assert "warning: torch sees no CUDA device" in r.stderr
    assert (board.paths["--prefix"] / "deepedge-torch-pin.txt").read_text() == "torch==2.6.0\n"
