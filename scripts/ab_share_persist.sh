#!/usr/bin/env bash
# A/B of two commits' demo under an on/off CPU load (one stress-ng worker, 1-4 s on, 1-4 s off,
# at random) so that the boards' rates swing; alternating, PAIRS of each. Made for the share-only
# persistence (SHARE_PERSIST_S): before bd1a59b, after 0150627. Not a CI test (~2.5 min a run).
#   bash scripts/ab_share_persist.sh [PAIRS] [BEFORE] [AFTER]
# LOAD_WORKERS=2 runs two stress-ng workers (both vCPUs here) instead of one.
# Each arm runs from its own clone (python -m imports the clone's code: run it from there).
set -uo pipefail
pairs="${1:-6}"
before="${2:-bd1a59b}"
after="${3:-0150627}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
work="$(mktemp -d -t deepedge-ab-XXXXXX)"
for arm in before after; do
  git clone -q "$repo" "$work/$arm" && git -C "$work/$arm" checkout -q "${!arm}" || exit 1
done
out="$work/out"; mkdir -p "$out"
workers="${LOAD_WORKERS:-1}"
load() { while true; do stress-ng --cpu "$workers" --timeout $((RANDOM % 4 + 1))s >/dev/null 2>&1; sleep $((RANDOM % 4 + 1)); done; }
for i in $(seq 1 "$pairs"); do
  for arm in before after; do
    load & lp=$!
    (cd "$work/$arm" && "$py" -m deepedge.cli demo --workdir "$out/$arm$i" --json-out "$out/$arm$i.json" > "$out/$arm$i.log" 2>&1)
    rc=$?
    kill "$lp"; pkill -f "stress-ng --cpu $workers --timeout"; wait "$lp" 2>/dev/null
    same=$(grep '"plan.improving"' "$out/$arm$i/logs/coordinator.log" 2>/dev/null | grep -c "same group")
    "$py" - "$out/$arm$i.json" "$arm$i" "$rc" "$same" <<'PY'
import json, sys
path, name, rc, same = sys.argv[1:]
try:
    r = json.load(open(path))
except (OSError, ValueError):
    print(f"{name}: exit {rc}, no report", flush=True)
    raise SystemExit
lc = r.get("lc", [])
over, reports = sum(a["violations"] for a in lc), sum(a["reports"] for a in lc)
gens = r["generations"] if not isinstance(r["generations"], list) else len(r["generations"])
print(f"{name}: {'PASS' if r.get('ok') else 'FAIL'}; {over} of {reports} LC reports over; generations {gens}; "
      f"share-only improvements {same}; training {r['training_s']:.1f} s; makespan {r['makespan_s']:.1f} s; "
      f"ideal {r['ideal_s']:.1f} s", flush=True)
PY
  done
done
echo "logs in $out"
