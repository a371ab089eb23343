#!/usr/bin/env bash
# The GPU checks of deepedge in one go, for a machine with an NVIDIA GPU (docs/benchmarks/gpu.md).
# Installs nothing: it uses the Python in $PYTHON, else .venv/bin/python, else python3, and stops
# with what is missing if that Python has no CUDA torch or lacks deepedge's dependencies.
#
#   1. what this machine is: nvidia-smi, deepedge's torch probe;
#   2. pytest -m cuda (tests/test_cuda.py; -s: each test prints the differences and rates it found);
#   3. ResNet-18 at 96x96, batch 128 a step, training samples/s on the GPU vs the CPU (all cores),
#      with the worker's own step code (python -m deepedge.training.profile), for the goal
#      "GPU >= 10x CPU".
#
# Results go to $OUT if it is set (else ./gpu-checks): system.txt, probe.json, pytest.log,
# pytest.xml, rate.json, summary.txt. Exit status: pytest's, or 3 when nothing could be run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-$PWD/gpu-checks}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SECONDS_PER_RATE=${GPU_CHECKS_RATE_S:-8}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1)"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1; else echo "nvidia-smi: not found"; fi
  echo "cpus: $(nproc)"
} >"$OUT_DIR/system.txt"
cat "$OUT_DIR/system.txt"

missing=$("$PY" - <<'EOF'
import importlib
names = ["torch", "msgspec", "structlog", "psutil", "PIL", "numpy", "pytest", "pytest_timeout", "pytest_asyncio",
         "hypothesis", "typer", "rich", "aiomqtt", "cvxpy"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "gpu_checks: $PY lacks: $missing (this script installs nothing; set PYTHON to a Python that has them)" \
    | tee "$OUT_DIR/summary.txt"
  exit 3
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_checks: $("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA build", torch.version.cuda)') sees no CUDA device" \
    | tee "$OUT_DIR/summary.txt"
  exit 3
fi

"$PY" -m deepedge.training.probe | tee "$OUT_DIR/probe.json"

# 2. the CUDA tests
timeout "${GPU_CHECKS_PYTEST_S:-420}" "$PY" -m pytest -m cuda tests/test_cuda.py -p no:cacheprovider -rA -s \
  --junitxml="$OUT_DIR/pytest.xml" 2>&1 | tee "$OUT_DIR/pytest.log"
tests=${PIPESTATUS[0]}

# 3. GPU vs CPU training rate
"$PY" - "$OUT_DIR/rate.json" "$SECONDS_PER_RATE" <<'EOF' 2>&1 | tee -a "$OUT_DIR/summary.txt"
import json, subprocess, sys

out, seconds = sys.argv[1], float(sys.argv[2])

def rate(device):
    req = {"model": "resnet18", "levels": [1.0], "seconds": seconds, "image_size": 96, "classes": 10, "device": device}
    r = subprocess.run([sys.executable, "-m", "deepedge.training.profile"], input=json.dumps(req) + "\n",
                       capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines or "error" in lines[-1]:
        raise SystemExit(f"profile on {device} failed: {r.stdout[-500:]} {r.stderr[-1500:]}")
    return lines[-1]

gpu, cpu = rate("cuda"), rate("cpu")
ratio = gpu["samples_per_s"] / cpu["samples_per_s"]
result = {"model": "resnet18", "image_size": 96, "step_samples": 128, "micro_batch": 32, "seconds": seconds,
          "gpu": gpu, "cpu": cpu, "ratio": ratio, "goal": "GPU >= 10x CPU", "met": ratio >= 10}
json.dump(result, open(out, "w"), indent=2)
print(f"ResNet-18 96x96 training: GPU ({gpu['device']}) {gpu['samples_per_s']:.1f} samples/s, "
      f"CPU {cpu['samples_per_s']:.1f} samples/s: {ratio:.1f}x (goal >= 10x: {'met' if ratio >= 10 else 'NOT met'})")
EOF
echo "pytest -m cuda exit status: $tests" | tee -a "$OUT_DIR/summary.txt"
exit "$tests"
