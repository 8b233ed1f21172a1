#!/usr/bin/env bash
# Where the open-loop p99 goes: the same open-loop runs with the journal synced (always)
# and not synced (never), each with the journal's group-commit times as the switch itself
# measured them (switch_journal_commit_seconds), in one invocation. If the disk's sync
# time set the p99, `never` would be much better and the commits would be slow.
#
# Usage: benchmarks/scripts/commit_latency.sh [seconds per run, default 10] [rates, default "100000 180000"]
# Embedded default (2 shards on this box, frame MACs on), payment codes only
# (benchmarks/scenarios/codes-only.toml). Loopback only, bounded in time.
set -euo pipefail
seconds=${1:-10}
rates=${2:-100000 180000}
source "$(dirname "$0")/lib.sh"

data=target/bench-commit-data
echo "| fsync | offered /s | valid | p50 us | p99 us | p99.9 us | switch CPU us/tx | group commits | commits within 1 ms | within 2.5 ms | within 5 ms |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for rate in $rates; do
  for policy in always never; do
    rm -rf "$data"
    ./target/release/switch run --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
      --data-dir "$data" --fsync "$policy" > "$data.log" 2>&1 &
    switch_pid=$!
    for _ in $(seq 1 100); do grep -q "serving" "$data.log" && break; sleep 0.1; done
    ./target/release/loadgen run --target "127.0.0.1:$port" --admin "127.0.0.1:$admin" --rate "$rate" \
      --profile benchmarks/scenarios/codes-only.toml --duration "${seconds}s" --quiet \
      --summary-json target/bench-commit.json > /dev/null || true
    metrics=$(curl -s "127.0.0.1:$admin/metrics" | grep '^switch_journal_commit_seconds')
    kill -INT "$switch_pid"; wait "$switch_pid" || true; switch_pid=
    python3 - "$policy" "$rate" "$metrics" <<'PY'
import json, sys
policy, rate, metrics = sys.argv[1], sys.argv[2], sys.argv[3]
summary = json.load(open("target/bench-commit.json"))
latency = summary["latency_us"]
buckets, count = {}, 0
for line in metrics.splitlines():
    name, value = line.rsplit(" ", 1)
    if name.endswith("_count"):
        count = int(float(value))
    elif 'le="' in name:
        buckets[name.split('le="')[1].rstrip('"}')] = int(float(value))
share = lambda le: f"{100 * buckets.get(le, 0) / count:.1f}%" if count else "-"
print(f"| {policy} | {rate} | {'yes' if summary['valid'] else 'NO'} | {latency['p50']} | {latency['p99']} | "
      f"{latency['p999']} | {summary['switch_cpu_us_per_request']:.2f} | {count} | {share('0.001')} | "
      f"{share('0.0025')} | {share('0.005')} |")
PY
  done
done
rm -rf "$data" "$data.log"
