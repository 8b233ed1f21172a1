#!/usr/bin/env bash
# What fleet publication costs a node, and how fast a node catches up after a NATS outage,
# in one invocation (loopback, one local nats-server with JetStream on disk):
#   1. the same closed loop (512 in flight, the weekday mix, journal fsync=always, 1 shard)
#      against a switch without a fleet and one publishing to NATS: throughput, latency,
#      switch CPU per transaction (the publisher's thread included), and how far behind
#      publication was when the load stopped;
#   2. catch-up: NATS stopped, the same load for SECONDS, NATS started again; the time
#      until the node's lag is zero, as records per second;
#   3. the fleet close: the node cuts window 1, and `switch clearing close --source nats`
#      reads the whole stream and writes the window's files; its time, as records per second.
# Needs nats-server (Debian: apt-get install nats-server). About 4 x (3 + SECONDS) s.
#   bash benchmarks/scripts/fleet_cost.sh [SECONDS]
set -euo pipefail
seconds=${1:-10}
source "$(dirname "$0")/lib.sh"
command -v nats-server >/dev/null || { echo "nats-server is needed (apt-get install nats-server)" >&2; exit 1; }
nats_port=$((port + 2))
store=target/bench-fleet-js
nats_pid=
trap '[ -n "$switch_pid" ] && kill "$switch_pid" 2>/dev/null; [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null; true' EXIT

start_nats() {
  nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$store" > target/bench-fleet-nats.log 2>&1 &
  nats_pid=$!
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
}
stop_nats() { kill "$nats_pid"; wait "$nats_pid" 2>/dev/null || true; nats_pid=; }
metric() {
  local text
  exec 3<>"/dev/tcp/127.0.0.1/$admin"
  printf 'GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n' >&3
  text=$(cat <&3)
  exec 3<&-
  sed -n "s/^$1 \([0-9.]*\)\r*$/\1/p" <<<"$text"
}
start_switch() {
  rm -rf target/bench-fleet-data
  ./target/release/switch run --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --shards 1 \
    --data-dir target/bench-fleet-data "$@" > target/bench-fleet-switch.log 2>&1 &
  switch_pid=$!
  for _ in $(seq 1 100); do grep -q "switch running" target/bench-fleet-switch.log && break; sleep 0.1; done
}
stop_switch() { kill -INT "$switch_pid"; wait "$switch_pid" || true; switch_pid=; }
load() {
  ./target/release/loadgen run --target "127.0.0.1:$port" --admin "127.0.0.1:$admin" --in-flight 512 "$@"
}

rm -rf "$store"
start_nats
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per run, 1 shard, $(nats-server --version)"
echo
echo "| fleet | throughput /s | p50 us | p99 us | switch CPU us/tx | lag at the end, records |"
echo "|---|---:|---:|---:|---:|---:|"
field() { sed -n "s/.*$1 \([0-9.]*\).*/\1/p" | head -1; }
for fleet in off nats; do
  args=()
  [ "$fleet" = nats ] && args=(--nats "nats://127.0.0.1:$nats_port")
  start_switch "${args[@]}"
  load --duration 3s > /dev/null
  out=$(load --duration "${seconds}s")
  lag=$( [ "$fleet" = nats ] && metric switch_fleet_lag_records || echo "-")
  throughput=$(sed -n 's/.*s: \([0-9]*\)\/s$/\1/p' <<<"$out")
  cpu=$(sed -n 's/.*: \([0-9.]*\) us per transaction/\1/p' <<<"$out")
  echo "| $fleet | $throughput | $(field p50 <<<"$out") | $(field p99 <<<"$out") | $cpu | $lag |"
  stop_switch
done

echo
# A fresh stream: the stream keeps node 0's records of the run above, from another data
# directory, and a node refuses to continue another directory's history.
stop_nats
rm -rf "$store"
start_nats
start_switch --nats "nats://127.0.0.1:$nats_port"
stop_nats
load --duration "${seconds}s" > /dev/null
lag=$(metric switch_fleet_lag_records)
started=$(date +%s.%N)
start_nats
while [ "$(metric switch_fleet_lag_records)" != "0" ]; do sleep 0.05; done
took=$(echo "$(date +%s.%N) - $started" | bc -l)
printf 'catch-up after a %s s NATS outage under load: %s records in %.2f s (NATS start included): %.0f records/s\n' \
  "$seconds" "$lag" "$took" "$(echo "$lag / $took" | bc -l)"
./target/release/switch clearing close --admin "127.0.0.1:$admin" --token-file target/bench-fleet-data/admin.token > /dev/null
while [ "$(metric switch_fleet_lag_records)" != "0" ]; do sleep 0.05; done
records=$(metric switch_fleet_published_records_total)
started=$(date +%s.%N)
entries=$(./target/release/switch clearing close --source nats --nats "nats://127.0.0.1:$nats_port" --window 1 --nodes 0 \
  --out target/bench-fleet-out | sed -n 's/.*: \([0-9]*\) entries$/\1/p')
took=$(echo "$(date +%s.%N) - $started" | bc -l)
printf 'fleet close of window 1: %s records read, %s entries written, in %.2f s: %.0f records/s\n' \
  "$records" "$entries" "$took" "$(echo "$records / $took" | bc -l)"
stop_switch
stop_nats
rm -rf "$store" target/bench-fleet-data target/bench-fleet-out target/bench-fleet-switch.log target/bench-fleet-nats.log
