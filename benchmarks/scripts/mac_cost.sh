#!/usr/bin/env bash
# What frame MACs cost end to end: the same closed loop (512 in flight, the weekday mix,
# journal at its default policy) against the switch with every participant on
# hmac-sha256 (the embedded default), on hmac-sm3, and with frame MACs off, in one
# invocation. Loopback only; about 4 x (3 + SECONDS) s.
#   bash benchmarks/scripts/mac_cost.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
cargo build --quiet --release --bin switch --bin loadgen
port=$((30000 + RANDOM % 20000))
admin=$((port + 1))
switch_pid=
trap '[ -n "$switch_pid" ] && kill "$switch_pid" 2>/dev/null || true' EXIT

# The embedded default's participants and routes, with the frame MAC given (and keys of
# their own: the load generator reads them from the same file).
config() {
  {
    printf '[switch]\nid = "CSWITCH"\nlisten = "127.0.0.1:%s"\nplaintext = true\n' "$port"
    printf '[[qr_network]]\nguid = "A000000333010101"\nacquirer = "UNIONPAY"\n'
    printf '[[unionpay_institution]]\ncode = "00010000"\nacquirer = "UNIONPAY"\n'
    for entry in ACQ0001:acquirer ACQ0002:acquirer WECHATPAY:issuer,acquirer ALIPAY:issuer,acquirer \
      UNIONPAY:issuer,network WAL0001:issuer; do
      id=${entry%%:*}
      roles=$(sed 's/\([a-z]*\)/"\1"/g' <<<"${entry#*:}")
      key=$(printf 'benchmark-key-%-10s' "$id" | od -An -tx1 | tr -d ' \n')
      printf '[[participant]]\nid = "%s"\nname = "%s"\nroles = [%s]\nframe_mac = "%s"\n' "$id" "$id" "$roles" "$1"
      printf '[[participant.key]]\nid = 1\nsecret_hex = "%s"\n' "$key"
    done
  } > "target/bench-mac-$1.toml"
}

echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per run, 1 shard"
echo
echo "| frame MAC | throughput /s | p50 us | p99 us | switch CPU us/tx |"
echo "|---|---:|---:|---:|---:|"
field() { sed -n "s/.*$1 \([0-9.]*\).*/\1/p" | head -1; }
for mac in none hmac-sha256 hmac-sm3; do
  config "$mac"
  rm -rf target/bench-mac-data
  ./target/release/switch run --config "target/bench-mac-$mac.toml" --admin-listen "127.0.0.1:$admin" \
    --shards 1 --data-dir target/bench-mac-data > target/bench-mac-switch.log 2>&1 &
  switch_pid=$!
  for _ in $(seq 1 50); do grep -q "switch running" target/bench-mac-switch.log && break; sleep 0.1; done
  run() {
    ./target/release/loadgen run --target "127.0.0.1:$port" --admin "127.0.0.1:$admin" \
      --participants "target/bench-mac-$mac.toml" --in-flight 512 "$@"
  }
  run --duration 3s > /dev/null
  out=$(run --duration "${seconds}s")
  throughput=$(sed -n 's/.*s: \([0-9]*\)\/s$/\1/p' <<<"$out")
  cpu=$(sed -n 's/.*: \([0-9.]*\) us per transaction/\1/p' <<<"$out")
  echo "| $mac | $throughput | $(field p50 <<<"$out") | $(field p99 <<<"$out") | $cpu |"
  kill -INT "$switch_pid"; wait "$switch_pid" || true; switch_pid=
done
rm -rf target/bench-mac-data target/bench-mac-*.toml target/bench-mac-switch.log
