#!/usr/bin/env bash
# Macro scenarios for the switch on loopback: closed loop (512 in flight) and open loop
# (fixed rates) for each data path and shard count, with the switch's CPU per transaction
# and its resident memory; the journal is on at its default policy (fsync=always) unless a
# table says otherwise, in a fresh data directory under target/ per run. The load generator
# and the switch share this machine's cores.
#
# Usage: benchmarks/scripts/switch_macro.sh [seconds per run, default 10]
# Prints one markdown table per scenario family. Loopback only, bounded in time.
set -euo pipefail
seconds=${1:-10}
source "$(dirname "$0")/lib.sh"

data_root=target/bench-data
start_switch() {
  rm -rf "$data_root"
  ./target/release/switch run --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --data-dir "$data_root" "$@" > target/bench-switch.log 2>&1 &
  switch_pid=$!
  for _ in $(seq 1 50); do
    grep -q "switch running" target/bench-switch.log && return 0
    sleep 0.1
  done
  echo "switch did not start:" >&2
  cat target/bench-switch.log >&2
  exit 1
}

stop_switch() {
  kill -INT "$switch_pid"
  wait "$switch_pid" || true
  switch_pid=
}

rss_mib() { awk '/VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$switch_pid/status"; }
hwm_mib() { awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$switch_pid/status"; }

# One loadgen run; prints its output.
loadgen() {
  ./target/release/loadgen run --target "127.0.0.1:$port" --admin "127.0.0.1:$admin" "$@"
}

# An open-loop run at a constant rate; leaves its summary in target/bench-open.json. The
# scenario (benchmarks/scenarios/codes-only.toml: payment codes from two acquirers to the
# three wallets) unless a profile is given as $2 (its mix, at the constant rate).
open_loop() {
  loadgen --rate "$1" --profile "${2:-benchmarks/scenarios/codes-only.toml}" --duration "${seconds}s" --quiet \
    --summary-json target/bench-open.json > /dev/null || true
}
# A field of the last open-loop summary (dotted path, e.g. latency_us.p99).
summary() {
  python3 -c 'import json,sys; v=json.load(open("target/bench-open.json"))
for k in sys.argv[1].split("."): v=v.get(k, "") if isinstance(v, dict) else ""
print(round(v, 2) if isinstance(v, float) else ("yes" if v is True else "NO" if v is False else v))' "$1"
}

field() { sed -n "s/.*$1 \([0-9.]*\).*/\1/p" | head -1; }

echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per run"
echo
echo "### Closed loop, 512 in flight"
echo
echo "| io | shards | throughput /s | p50 us | p99 us | p99.9 us | switch CPU us/tx | switch RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for io in tokio uring; do
  for shards in 1 2; do
    start_switch --io "$io" --shards "$shards"
    # Warm-up: first touch of the presized tables, connection buffers.
    loadgen --in-flight 512 --duration 3s > /dev/null
    out=$(loadgen --in-flight 512 --duration "${seconds}s")
    throughput=$(sed -n 's/.*s: \([0-9]*\)\/s$/\1/p' <<<"$out")
    p50=$(field p50 <<<"$out"); p99=$(field p99 <<<"$out"); p999=$(field p99.9 <<<"$out")
    cpu=$(sed -n 's/.*: \([0-9.]*\) us per transaction/\1/p' <<<"$out")
    echo "| $io | $shards | $throughput | $p50 | $p99 | $p999 | $cpu | $(rss_mib) |"
    stop_switch
  done
done

echo
echo "### Open loop (latency from each request's intended send time)"
echo
echo "| io | shards | offered /s | valid | p50 us | p99 us | p99.9 us | switch CPU us/tx | loadgen CPU us/tx | switch RSS MiB |"
echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"
for io in tokio uring; do
  start_switch --io "$io" --shards 2
  loadgen --in-flight 512 --duration 3s > /dev/null
  for rate in 100000 180000; do
    open_loop "$rate"
    echo "| $io | 2 | $rate | $(summary valid) | $(summary latency_us.p50) | $(summary latency_us.p99) | $(summary latency_us.p999) | $(summary switch_cpu_us_per_request) | $(summary loadgen_cpu_us_per_request) | $(rss_mib) |"
  done
  stop_switch
done

echo
echo "### The weekday mix (tokio, 2 shards): both payment modes, cross-border, refunds, queries"
echo
echo "| offered /s | valid | p50 us | p99 us | p99.9 us | switch CPU us/tx | loadgen CPU us/tx |"
echo "|---:|---|---:|---:|---:|---:|---:|"
start_switch --io tokio --shards 2
loadgen --in-flight 512 --duration 3s > /dev/null
for rate in 50000 100000 150000; do
  open_loop "$rate" weekday
  echo "| $rate | $(summary valid) | $(summary latency_us.p50) | $(summary latency_us.p99) | $(summary latency_us.p999) | $(summary switch_cpu_us_per_request) | $(summary loadgen_cpu_us_per_request) |"
done
stop_switch

echo
echo "### Journal policy (tokio, 2 shards)"
echo
echo "| fsync | closed loop /s | closed p99 us | open 180,000/s valid | open p50 us | open p99 us | switch CPU us/tx (open) |"
echo "|---|---:|---:|---|---:|---:|---:|"
for fsync in always interval:2000 never; do
  start_switch --io tokio --shards 2 --fsync "$fsync"
  loadgen --in-flight 512 --duration 3s > /dev/null
  closed=$(loadgen --in-flight 512 --duration "${seconds}s")
  throughput=$(sed -n 's/.*s: \([0-9]*\)\/s$/\1/p' <<<"$closed")
  closed_p99=$(field p99 <<<"$closed")
  open_loop 180000
  echo "| $fsync | $throughput | $closed_p99 | $(summary valid) | $(summary latency_us.p50) | $(summary latency_us.p99) | $(summary switch_cpu_us_per_request) |"
  stop_switch
done

echo
echo "### Memory under overload (tokio, 2 shards): peak resident memory after each run"
echo
echo "| offered /s | valid | answered SystemBusy | switch peak RSS MiB |"
echo "|---:|---|---:|---:|"
start_switch --io tokio --shards 2
for rate in 180000 360000; do
  open_loop "$rate"
  busy=$(summary replies.SystemBusy)
  echo "| $rate | $(summary valid) | ${busy:-0} | $(hwm_mib) |"
done
stop_switch
rm -rf "$data_root"
