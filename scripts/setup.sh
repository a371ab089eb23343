#!/usr/bin/env bash
# Sets up a development/CI environment on a fresh Debian/Ubuntu machine:
# system packages (mosquitto for the tests and the demo), then .venv with deepedge and its pins.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v stress-ng >/dev/null 2>&1 || need+=(stress-ng)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing ${need[*]} with apt-get"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# constraints.txt pins torch to the CPU build: a looser torch would pull several GB of CUDA wheels.
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
echo "setup: ready ($(.venv/bin/deepedge --version))"
