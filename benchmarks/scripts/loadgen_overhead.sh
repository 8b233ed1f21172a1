#!/usr/bin/env bash
# Generator overhead: how many requests per second one core of the load generator makes
# and accounts for (latency histogram, reply codes, mix, ids) against a trivial sink, so
# that it is never the bottleneck it measures. The generator is pinned to core 0 and the
# sink (`loadgen sink`, which approves everything at once) to core 1.
#
# Usage: benchmarks/scripts/loadgen_overhead.sh [seconds per rate, default 5]
# Prints a markdown table: each rate, whether the run kept its schedule (valid: no send
# more than 10 ms late, every request answered), and the generator's CPU per request.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-5}
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed to pin to one core" >&2; exit 1; }
cargo build --quiet --release --bin loadgen
port=$((30000 + RANDOM % 20000))
taskset -c 1 ./target/release/loadgen sink --listen "127.0.0.1:$port" > target/bench-sink.log 2>&1 &
sink_pid=$!
trap 'kill "$sink_pid" 2>/dev/null || true' EXIT
sleep 0.5

echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per rate, generator on one core"
echo
echo "| rate /s | valid | late sends | p99 us | loadgen CPU us/request | requests per core-second |"
echo "|---:|---|---:|---:|---:|---:|"
for rate in 100000 200000 300000 400000 500000 600000 700000; do
  taskset -c 0 ./target/release/loadgen run --target "127.0.0.1:$port" --rate "$rate" --duration "${seconds}s" \
    --quiet --summary-json target/bench-overhead.json > /dev/null || true
  python3 - "$rate" <<'PY'
import json, sys
d = json.load(open("target/bench-overhead.json"))
cpu = d["loadgen_cpu_us_per_request"]
print(f"| {sys.argv[1]} | {'yes' if d['valid'] else 'NO'} | {d['late_sends']} | {d['latency_us']['p99']} | {cpu:.2f} | {1e6 / cpu:,.0f} |")
PY
done
