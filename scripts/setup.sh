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
  # Another apt may hold the dpkg lock (unattended-upgrades after boot, a CI image's own setup):
  # wait up to 5 minutes for it instead of failing at once (apt >= 1.9.11; older apt ignores it).
  APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q)
  echo "setup: installing ${need[*]} with apt-get"
  $SUDO "${APT[@]}" update
  $SUDO "${APT[@]}" install -y --no-install-recommends "${need[@]}"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# constraints.txt pins torch to the CPU build: a looser torch would pull several GB of CUDA wheels.
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
echo "setup: ready ($(.venv/bin/deepedge --version))"
