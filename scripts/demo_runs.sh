#!/usr/bin/env bash
# Run `deepedge demo` N times in a row (default 20) and count: runs that passed, and LC reports over
# their deadline in all runs, the workers' start included (issue #15's goal: N PASS, 0 over).
# Not a CI test: about 90 s a run on a 2-vCPU machine. Extra arguments go to every `deepedge demo`.
#   bash scripts/demo_runs.sh 20 --no-kill
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
shift || true
py="${PYTHON:-.venv/bin/python}"
out="$(mktemp -d -t deepedge-demo-runs-XXXXXX)"
pass=0
for i in $(seq 1 "$runs"); do
  "$py" -m deepedge.cli demo --workdir "$out/run$i" --json-out "$out/run$i.json" "$@" > "$out/run$i.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] && pass=$((pass + 1))
  "$py" - "$out/run$i.json" "$i" "$rc" <<'PY'
import json, sys
path, i, rc = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    r = json.load(open(path))
except (OSError, ValueError):
    print(f"run {i}: exit {rc}, no report")
    raise SystemExit
lc = r.get("lc", [])
over = sum(a["violations"] for a in lc)
startup = sum(a["startup_violations"] for a in lc)
reports = sum(a["reports"] for a in lc)
worst = max((a["worst_p95_ms"] or 0) - (a["deadline_ms"] or 0) for a in lc) if lc else 0
print(f"run {i}: {'PASS' if r.get('ok') else 'FAIL'} (exit {rc}); {over} of {reports} LC reports over the deadline "
      f"({startup} during start-up); worst p95 - deadline {worst:+.1f} ms; problems: {r.get('problems')}", flush=True)
PY
done
"$py" - "$out" "$runs" <<'PY'
import glob, json, sys
out, runs = sys.argv[1], int(sys.argv[2])
reports = over = passed = 0
for path in glob.glob(f"{out}/run*.json"):
    r = json.load(open(path))
    passed += bool(r.get("ok"))
    over += sum(a["violations"] for a in r.get("lc", []))
    reports += sum(a["reports"] for a in r.get("lc", []))
print(f"{passed}/{runs} PASS; {over} of {reports} LC reports over the deadline (start-up included); logs in {out}")
PY
