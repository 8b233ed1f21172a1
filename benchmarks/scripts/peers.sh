#!/usr/bin/env bash
# Side by side on one machine, in one invocation: the switch (journal on, fsync=always),
# NATS core request-reply (Debian's nats-server; installed if missing) and a bare relay
# (bytes copied between paired connections: the limit of a two-hop proxy on this box).
# Every system carries the same 248-byte request frame and 120-byte reply frame, with the
# same number in flight (closed loop) or the same rates (open loop, latency from each
# request's intended send time). Ratios come from runs in this invocation.
#
# Usage: benchmarks/scripts/peers.sh [seconds per run, default 10]
# Loopback only, bounded in time; prints one markdown table and the ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
rates="50000 100000 180000"
bound_ms=20
if ! command -v nats-server >/dev/null 2>&1; then
  echo "installing nats-server (Debian)" >&2
  { apt-get update -qq && apt-get install -y -qq nats-server; } >&2 \
    || { echo "nats-server is needed and could not be installed" >&2; exit 1; }
fi
cargo build --quiet --release --bin switch --bin loadgen --bin peers
base=$((30000 + RANDOM % 20000))
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
json() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(d[sys.argv[1]])' "$1"; }
ms() { python3 -c 'import sys; print(f"{int(sys.argv[1])/1000:.1f}")' "$1"; }
declare -A closed closed_p99 open_cell

# --- the switch -------------------------------------------------------------------------
switch_run() {  # shards
  local port=$base admin=$((base + 1))
  rm -rf target/peers-data
  ./target/release/switch run --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --shards "$1" \
    --data-dir target/peers-data > target/peers-switch.log 2>&1 &
  local pid=$!; pids+=("$pid")
  for _ in $(seq 1 100); do grep -q "switch running" target/peers-switch.log && break; sleep 0.1; done
  local lg=(./target/release/loadgen run --target "127.0.0.1:$port" --admin "127.0.0.1:$admin")
  "${lg[@]}" --in-flight 512 --duration 3s > /dev/null   # warm-up
  local out; out=$("${lg[@]}" --in-flight 512 --duration "${seconds}s")
  local name="switch, $1 shard(s)"
  closed[$name]=$(sed -n 's/.*s: \([0-9]*\)\/s$/\1/p' <<<"$out")
  closed_p99[$name]=$(sed -n 's/.*p99 \([0-9]*\).*/\1/p' <<<"$out" | head -1)
  cpu=$(sed -n 's/.*: \([0-9.]*\) us per transaction/\1/p' <<<"$out")
  echo "$name: closed loop ${closed[$name]}/s, switch CPU $cpu us/tx" >&2
  if [ "$1" = 2 ]; then
    for rate in $rates; do
      "${lg[@]}" --rate "$rate" --profile benchmarks/scenarios/codes-only.toml --duration "${seconds}s" --quiet \
        --summary-json target/peers-open.json > /dev/null || true
      p99=$(python3 -c 'import json; print(json.load(open("target/peers-open.json"))["latency_us"]["p99"])')
      valid=$(python3 -c 'import json; print("" if json.load(open("target/peers-open.json"))["valid"] else " (invalid)")')
      open_cell["$name,$rate"]="$(ms "$p99")$valid"
    done
  fi
  kill -INT "$pid"; wait "$pid" || true
}
switch_run 2
switch_run 1

# --- NATS -------------------------------------------------------------------------------
nats_port=$((base + 2))
nats-server -a 127.0.0.1 -p "$nats_port" > target/peers-nats.log 2>&1 &
nats_pid=$!; pids+=("$nats_pid")
sleep 0.5
name="NATS request-reply"
out=$(./target/release/peers nats-run --url "nats://127.0.0.1:$nats_port" --in-flight 512 --seconds "$seconds")
closed[$name]=$(json throughput <<<"$out"); closed_p99[$name]=$(json p99_us <<<"$out")
for rate in $rates; do
  out=$(./target/release/peers nats-run --url "nats://127.0.0.1:$nats_port" --rate "$rate" --seconds "$seconds")
  valid=$( [ "$(json valid <<<"$out")" = True ] && echo "" || echo " (invalid)")
  open_cell["$name,$rate"]="$(ms "$(json p99_us <<<"$out")")$valid"
done
kill "$nats_pid"

# --- the bare relay ---------------------------------------------------------------------
req=$((base + 3)); resp=$((base + 4))
./target/release/peers relay --requesters "127.0.0.1:$req" --responders "127.0.0.1:$resp" > target/peers-relay.log 2>&1 &
relay_pid=$!; pids+=("$relay_pid")
sleep 0.5
name="bare relay"
relay() { ./target/release/peers relay-run --requesters "127.0.0.1:$req" --responders "127.0.0.1:$resp" "$@"; }
out=$(relay --in-flight 512 --seconds "$seconds")
closed[$name]=$(json throughput <<<"$out"); closed_p99[$name]=$(json p99_us <<<"$out")
for rate in $rates; do
  out=$(relay --rate "$rate" --seconds "$seconds")
  valid=$( [ "$(json valid <<<"$out")" = True ] && echo "" || echo " (invalid)")
  open_cell["$name,$rate"]="$(ms "$(json p99_us <<<"$out")")$valid"
done
kill "$relay_pid"

# --- the table --------------------------------------------------------------------------
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per run"
echo
header="| system | closed loop, 512 in flight /s | closed p99 ms | p99 under $bound_ms ms |"
rule="|---|---:|---:|---|"
for rate in $rates; do header="$header open $rate/s p99 ms |"; rule="$rule---:|"; done
echo "$header"; echo "$rule"
for name in "switch, 2 shard(s)" "switch, 1 shard(s)" "NATS request-reply" "bare relay"; do
  p99=${closed_p99[$name]:-0}
  under=$( [ "$p99" -le $((bound_ms * 1000)) ] && echo yes || echo no)
  row="| $name | ${closed[$name]:-?} | $(ms "$p99") | $under |"
  for rate in $rates; do row="$row ${open_cell["$name,$rate"]:--} |"; done
  echo "$row"
done
echo
best=$(( ${closed["switch, 2 shard(s)"]:-0} > ${closed["switch, 1 shard(s)"]:-0} ? ${closed["switch, 2 shard(s)"]:-0} : ${closed["switch, 1 shard(s)"]:-0} ))
python3 - "$best" "${closed["NATS request-reply"]}" "${closed["bare relay"]}" <<'PY'
import sys
switch, nats, relay = (float(x) for x in sys.argv[1:4])
print(f"switch (best shard count) / NATS, closed loop: {switch / nats:.2f}x")
print(f"switch (best shard count) / bare relay, closed loop: {switch / relay:.2f}x")
PY
