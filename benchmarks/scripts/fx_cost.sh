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
for round in $(seq 1 "$rounds"); do
  for settlement in "" HKD; do
    config "$settlement"
    closed_loop ./target/release target/bench-fx.toml target/bench-fx-data
    # How many payments the journal says were converted (a check that the setting bit).
    converted=$(./target/release/switch journal inspect --data-dir target/bench-fx-data --limit 100000000 \
      | grep -c ' converted ' || true)
    echo "| $round | ${settlement:-none} | $throughput | $p50 | $p99 | $cpu | $converted |"
  done
done
rm -rf target/bench-fx-data target/bench-fx-data.log target/bench-fx.toml
