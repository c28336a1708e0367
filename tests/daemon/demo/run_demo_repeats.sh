#!/usr/bin/env bash
# Runs the demo script $1 ($2 times, default 3) one run after another. Each run must exit 0 and
# print its table (the "time to first token ... cold vs ... warm" line and the disk row);
# otherwise says which run failed and prints that run's whole output. The environment
# (KVSTASH_DEMO_*, set by tests/daemon/demo/CMakeLists.txt) goes through to the demo.
set -uo pipefail
demo=${1:?usage: run_demo_repeats.sh DEMO_SCRIPT [RUNS]}
runs=${2:-3}
logs=${KVSTASH_DEMO_DIR:-${TMPDIR:-/tmp}/kvstash-demo-test}
mkdir -p "$logs" || exit 1
for ((i = 1; i <= runs; i++)); do
  out="$logs/run$i.out"
  start=$SECONDS
  rc=0
  "$demo" >"$out" 2>&1 || rc=$?
  problem=""
  if ((rc != 0)); then
    problem="exited with status $rc"
  elif ! grep -q "cold vs .* warm" "$out"; then
    problem="exited 0 but printed no 'time to first token X ms cold vs Y ms warm' line"
  elif ! grep -q "after the restart (disk tier)" "$out"; then
    problem="exited 0 but printed no row for the request after the restart"
  fi
  if [[ -n $problem ]]; then
    echo "daemon.demo_repeats: run $i of $runs $problem after $((SECONDS - start)) s; its output ($out):"
    cat "$out"
    exit 1
  fi
  summary=$(grep "cold vs" "$out")
  echo "daemon.demo_repeats: run $i of $runs ok in $((SECONDS - start)) s: $summary"
done
echo "daemon.demo_repeats: the last run's output:"
cat "$out"
