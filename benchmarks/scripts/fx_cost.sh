#!/usr/bin/env bash
# What currency conversion costs end to end: the same closed loop (512 in flight from one
# acquirer, the weekday mix, journal at its default policy, 1 shard) against the switch
# with its issuers paying in the transaction's currency (no conversion) and with them
# settling in HKD (every payment converted CNY -> HKD at admission, a `Converted` journal
# record, the conversion carried in the forwarded request and the reply). Alternated
# ROUNDS times in one invocation, so drift on this shared box hits both alike.
# Loopback only; about ROUNDS x 2 x (3 + SECONDS) s.
#   bash benchmarks/scripts/fx_cost.sh [SECONDS] [ROUNDS]
set -euo pipefail
seconds=${1:-10}
rounds=${2:-3}
source "$(dirname "$0")/lib.sh"

# The demo network's participants (its keys: the load generator's defaults), the demo
# rates, and the issuers' settlement currency given ("" for none).
with_settlement() {
  case "$1" in WECHATPAY | ALIPAY | UNIONPAY) [ -n "$settlement" ] && printf 'settlement_currency = "%s"\n' "$settlement" ;; esac
  true
}
config() {
  {
    printf '[switch]\nid = "CSWITCH"\nlisten = "127.0.0.1:%s"\nplaintext = true\n' "$port"
    printf '[fx]\nrates = "%s/switch/config/demo-rates.toml"\nmargin_basis_points = 50\n' "$(pwd)"
    settlement=$1
    demo_participants with_settlement
  } > "target/bench-fx.toml"
}

echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per run, 1 shard"
echo
echo "| round | issuers settle in | throughput /s | p50 us | p99 us | switch CPU us/tx | converted |"
echo "|---:|---|---:|---:|---:|---:|---:|"
field() { sed -n "s/.*$1 \([0-9.]*\).*/\1/p" | head -1; }
for round in $(seq 1 "$rounds"); do
  for settlement in "" HKD; do
    config "$settlement"
    rm -rf target/bench-fx-data
    ./target/release/switch run --config target/bench-fx.toml --admin-listen "127.0.0.1:$admin" \
      --shards 1 --data-dir target/bench-fx-data > target/bench-fx-switch.log 2>&1 &
    switch_pid=$!
    for _ in $(seq 1 50); do grep -q "switch running" target/bench-fx-switch.log && break; sleep 0.1; done
    run() {
      ./target/release/loadgen run --target "127.0.0.1:$port" --admin "127.0.0.1:$admin" \
        --participants target/bench-fx.toml --in-flight 512 "$@"
    }
    run --duration 3s > /dev/null
    out=$(run --duration "${seconds}s")
    throughput=$(sed -n 's/.*s: \([0-9]*\)\/s$/\1/p' <<<"$out")
    cpu=$(sed -n 's/.*: \([0-9.]*\) us per transaction/\1/p' <<<"$out")
    kill -INT "$switch_pid"; wait "$switch_pid" || true; switch_pid=
    # How many payments the journal says were converted (a check that the setting bit).
    converted=$(./target/release/switch journal inspect --data-dir target/bench-fx-data --limit 100000000 \
      | grep -c ' converted ' || true)
    echo "| $round | ${settlement:-none} | $throughput | $(field p50 <<<"$out") | $(field p99 <<<"$out") | $cpu | $converted |"
  done
done
rm -rf target/bench-fx-data target/bench-fx.toml target/bench-fx-switch.log
