#!/usr/bin/env bash
# Installs the deepedge node daemon on an NVIDIA Jetson board (JetPack 6), as root:
#   1. the JetPack: --jetpack, else /etc/nv_tegra_release (L4T R36 = JetPack 6)
#   2. apt packages: python3.10-venv, python3-pip, libopenblas-dev (NVIDIA's torch wheels link OpenBLAS)
#   3. a venv at --prefix on the system Python 3.10, with --system-site-packages
#   4. torch: --torch-wheel (a file or URL: NVIDIA's wheel for this JetPack), or --torch-index
#      (e.g. https://pypi.jetson-ai-lab.io/jp6/cu126), or the torch the venv already sees
#   5. checks that torch: version >= 2.6 (torch.load's weights_only is unsafe before 2.6,
#      CVE-2025-32434), torch.distributed and gloo available (refused otherwise), CUDA (warned)
#   6. deepedge from --source (a checkout or a wheel built from it), torch pinned to the checked
#      one, without the development constraints file (it pins the x86-64 CPU torch)
#   7. the system user `deepedge` (groups video and render where they exist: the Jetson GPU's
#      device files belong to them), /var/lib/deepedge
#   8. /etc/deepedge/deepedge.toml from deploy/deepedge.toml.example, only if there is none
#   9. the node's systemd unit from deploy/systemd/, enabled (started only with --start)
# Idempotent: a step whose result is already there is skipped. --dry-run prints every step and
# changes nothing: it runs no command but read-only look-ups (id, getent, cmp) that show which
# steps a real run would skip.
# See docs/jetson.md for the torch wheels that pass step 5.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: install.sh [--dry-run] [--jetpack 6] [--torch-wheel PATH|URL] [--torch-index URL]
                  [--source DIR|WHEEL] [--prefix DIR] [--python EXE] [--start]
                  [--config-dir DIR] [--unit-dir DIR] [--state-dir DIR] [--no-apt]
  --dry-run        print every step, change nothing
  --jetpack N      JetPack major version (default: from /etc/nv_tegra_release); only 6 is supported
  --torch-wheel W  install this torch wheel (file or URL) into the venv
  --torch-index U  install torch>=2.6 from this package index (e.g. https://pypi.jetson-ai-lab.io/jp6/cu126)
  --source S       deepedge checkout directory or wheel (default: the checkout holding this script)
  --prefix DIR     the venv (default /opt/deepedge/venv)
  --python EXE     the Python to build the venv from (default python3.10, JetPack 6's system Python)
  --start          start the node daemon now (default: enable it only; edit the config first)
  --config-dir, --unit-dir, --state-dir   default /etc/deepedge, /etc/systemd/system, /var/lib/deepedge
  --no-apt         do not install apt packages
EOF
}

DRY_RUN=0
JETPACK=""
TORCH_WHEEL=""
TORCH_INDEX=""
case "${BASH_SOURCE[0]}" in */*) HERE=${BASH_SOURCE[0]%/*} ;; *) HERE=. ;; esac
HERE=$(cd "$HERE" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SOURCE="$REPO"
PREFIX=/opt/deepedge/venv
PYTHON=python3.10
START=0
CONFIG_DIR=/etc/deepedge
UNIT_DIR=/etc/systemd/system
STATE_DIR=/var/lib/deepedge
APT=1
TORCH_FLOOR=2.6
TEGRA_RELEASE=${DEEPEDGE_TEGRA_RELEASE:-/etc/nv_tegra_release}

die() { echo "install: error: $*" >&2; exit 1; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] && [[ "$2" != --* ]] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --jetpack) need_arg "$@"; JETPACK=$2; shift ;;
    --torch-wheel) need_arg "$@"; TORCH_WHEEL=$2; shift ;;
    --torch-index) need_arg "$@"; TORCH_INDEX=$2; shift ;;
    --source) need_arg "$@"; SOURCE=$2; shift ;;
    --prefix) need_arg "$@"; PREFIX=$2; shift ;;
    --python) need_arg "$@"; PYTHON=$2; shift ;;
    --start) START=1 ;;
    --config-dir) need_arg "$@"; CONFIG_DIR=$2; shift ;;
    --unit-dir) need_arg "$@"; UNIT_DIR=$2; shift ;;
    --state-dir) need_arg "$@"; STATE_DIR=$2; shift ;;
    --no-apt) APT=0 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
  shift
done
[ -z "$TORCH_WHEEL" ] || [ -z "$TORCH_INDEX" ] || die "give --torch-wheel or --torch-index, not both"

STEP=0
step() { STEP=$((STEP + 1)); echo "== step $STEP: $*"; }
skip() { echo "   skip: $*"; }
# run CMD...: print it; execute it unless --dry-run
run() {
  echo "+ $*"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

[ "$DRY_RUN" = 1 ] && echo "install: dry run: printing every step, changing nothing"
if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo), or with --dry-run"
fi

step "JetPack version"
L4T=""
if [ -r "$TEGRA_RELEASE" ]; then
  read -r L4T_LINE <"$TEGRA_RELEASE" || true
  if [[ "${L4T_LINE:-}" =~ R([0-9]+)\ \(release\),\ REVISION:\ ([0-9.]+) ]]; then
    L4T="R${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
  fi
fi
if [ -z "$JETPACK" ]; then
  case "$L4T" in
    R36.*) JETPACK=6 ;;
    R35.*|R34.*) JETPACK=5 ;;
    R32.*) JETPACK=4 ;;
    R38.*) JETPACK=7 ;;
    "") die "no $TEGRA_RELEASE (not a Jetson?): give --jetpack" ;;
    *) die "unknown L4T release $L4T: give --jetpack" ;;
  esac
fi
echo "   JetPack $JETPACK${L4T:+ (L4T $L4T)}"
case "$JETPACK" in
  6) ;;
  4) die "JetPack 4 (Python 3.6, CUDA 10.2) has no torch >= $TORCH_FLOOR: deepedge needs JetPack 6 (docs/jetson.md)" ;;
  5) die "JetPack 5 (Python 3.8) has no NVIDIA torch >= $TORCH_FLOOR: deepedge needs JetPack 6 (docs/jetson.md)" ;;
  *) die "JetPack $JETPACK is not supported by this script (docs/jetson.md)" ;;
esac

step "apt packages"
if [ "$APT" = 1 ]; then
  run apt-get update
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.10-venv python3-pip libopenblas-dev
else
  skip "--no-apt"
fi

step "venv $PREFIX (system Python, --system-site-packages)"
PY="$PREFIX/bin/python"
if [ -x "$PY" ]; then
  skip "$PY exists"
else
  if [ "$DRY_RUN" = 0 ] && ! command -v "$PYTHON" >/dev/null 2>&1; then
    die "$PYTHON not found (JetPack 6's system Python is 3.10: apt-get install python3.10-venv)"
  fi
  run "$PYTHON" -m venv --system-site-packages "$PREFIX"
fi

step "torch"
if [ -n "$TORCH_WHEEL" ]; then
  run "$PY" -m pip install --no-cache-dir "$TORCH_WHEEL"
elif [ -n "$TORCH_INDEX" ]; then
  run "$PY" -m pip install --no-cache-dir --index-url "$TORCH_INDEX" "torch>=$TORCH_FLOOR"
else
  skip "no --torch-wheel or --torch-index: checking the torch the venv already sees"
fi

step "check torch: >= $TORCH_FLOOR, torch.distributed and gloo available, CUDA"
# Prints "version=... distributed=0|1 gloo=0|1 nccl=0|1 cuda=0|1" and exits 3 with the reason
# on stderr for a torch that cannot serve (no torch, too old, no torch.distributed, no gloo).
read -r -d '' TORCH_CHECK <<'PY' || true
import sys
floor = sys.argv[1]
try:
    from packaging.version import Version
except ImportError:  # pip vendors it
    from pip._vendor.packaging.version import Version
try:
    import torch
    import torch.distributed as dist
except Exception as exc:
    sys.exit(f"torch cannot be imported: {type(exc).__name__}: {exc}")
v = torch.__version__
distributed = dist.is_available()
gloo = distributed and dist.is_gloo_available()
nccl = distributed and dist.is_nccl_available()
cuda = torch.cuda.is_available()
print(f"version={v} distributed={int(distributed)} gloo={int(gloo)} nccl={int(nccl)} cuda={int(cuda)}")
if Version(v) < Version(floor):
    print(f"torch {v} is older than {floor} (a pre-release of {floor} is older too): torch.load's"
          " weights_only is unsafe before 2.6 (CVE-2025-32434)", file=sys.stderr)
    sys.exit(3)
if not distributed:
    print(f"torch {v} was built without torch.distributed (USE_DISTRIBUTED=0): it cannot train with"
          " other boards. Install a wheel that has it (docs/jetson.md)", file=sys.stderr)
    sys.exit(3)
if not gloo:
    print(f"torch {v} has torch.distributed but no gloo backend, which deepedge uses", file=sys.stderr)
    sys.exit(3)
PY
TORCH_VERSION=""
if [ "$DRY_RUN" = 1 ]; then
  echo "+ $PY - $TORCH_FLOOR <<'PY' (import torch; refuse: < $TORCH_FLOOR, no torch.distributed, no gloo; warn: no CUDA)"
else
  echo "+ $PY - $TORCH_FLOOR <<'PY' ..."
  if ! REPORT=$("$PY" - "$TORCH_FLOOR" <<<"$TORCH_CHECK"); then
    die "refusing this torch${REPORT:+ ($REPORT)}: see the reason above; docs/jetson.md lists wheels that work"
  fi
  echo "   $REPORT"
  TORCH_VERSION=${REPORT#version=}
  TORCH_VERSION=${TORCH_VERSION%% *}
  [[ "$REPORT" == *cuda=1* ]] || echo "install: warning: torch sees no CUDA device: this board will train on its CPU" >&2
  [[ "$REPORT" == *nccl=1* ]] || echo "   (no NCCL: this board's GPU trains with gloo, gradients staged in host memory)"
fi

step "deepedge from $SOURCE (torch pinned to the checked one; no dev constraints)"
if [ -d "$SOURCE" ]; then
  [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not a deepedge checkout (no pyproject.toml)"
elif [[ "$SOURCE" != *.whl ]]; then
  die "--source must be a checkout directory or a .whl file, not $SOURCE"
elif [ "$DRY_RUN" = 0 ] && [ ! -f "$SOURCE" ]; then
  die "no such wheel: $SOURCE"
fi
PIN="$PREFIX/deepedge-torch-pin.txt"
if [ "$DRY_RUN" = 1 ]; then
  echo "+ echo 'torch==<the checked version>' > $PIN"
else
  echo "+ echo 'torch==$TORCH_VERSION' > $PIN"
  echo "torch==$TORCH_VERSION" >"$PIN"
fi
run "$PY" -m pip install --no-cache-dir -c "$PIN" "$SOURCE"
run "$PY" -m deepedge.training.probe

step "system user deepedge, $STATE_DIR"
if id -u deepedge >/dev/null 2>&1; then
  skip "user deepedge exists"
else
  run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin deepedge
fi
for group in video render; do
  if ! getent group "$group" >/dev/null 2>&1; then
    skip "no group $group"
  elif [[ " $(id -nG deepedge 2>/dev/null || true) " == *" $group "* ]]; then
    skip "deepedge is in $group"
  else
    run usermod -aG "$group" deepedge
  fi
done
if [ -d "$STATE_DIR" ]; then
  skip "$STATE_DIR exists"
else
  run install -d -m 0750 -o deepedge -g deepedge "$STATE_DIR"
fi

step "config $CONFIG_DIR/deepedge.toml"
if [ -e "$CONFIG_DIR/deepedge.toml" ]; then
  skip "$CONFIG_DIR/deepedge.toml exists (kept as it is)"
else
  run install -D -m 0640 -o root -g deepedge "$REPO/deploy/deepedge.toml.example" "$CONFIG_DIR/deepedge.toml"
fi

step "systemd unit deepedge-node.service"
UNIT_SRC="$REPO/deploy/systemd/deepedge-node.service"
if [ -f "$UNIT_DIR/deepedge-node.service" ] && cmp -s "$UNIT_SRC" "$UNIT_DIR/deepedge-node.service"; then
  skip "$UNIT_DIR/deepedge-node.service is up to date"
else
  run install -D -m 0644 "$UNIT_SRC" "$UNIT_DIR/deepedge-node.service"
  run systemctl daemon-reload
fi
if [ "$START" = 1 ]; then
  run systemctl enable --now deepedge-node.service
else
  run systemctl enable deepedge-node.service
  echo "   next: edit $CONFIG_DIR/deepedge.toml (broker, node id), then: systemctl start deepedge-node"
fi

if [ "$DRY_RUN" = 1 ]; then echo "install: dry run done: nothing was changed"; else echo "install: done"; fi
