#!/usr/bin/env bash
# One definite answer at and beyond capacity (issue 19's targets), in one invocation:
# closed-loop capacity C; then open loop at 0.8, 1.2, 2 and 3 times C; then a 12 s SIGSTOP
# of the switch under 0.8 C. Each run on a fresh switch (embedded default, one shard per
# core, journal `always`, frame MACs on; payment codes only: every issuer is healthy and
# answers at once). Per run: requests sent, unanswered (`missing`), `Timeout` replies
# (all from healthy issuers here), reversals the issuers were sent (the switch's own
# doing: there are no cancels in this mix), the excess shed `SystemBusy`, p50 and p99 of
# every reply and the switch's peak resident memory (VmHWM).
#
# Usage: benchmarks/scripts/overload.sh [seconds per run, default 15]
# Loopback only, bounded in time (about 7 x the run length).
set -euo pipefail
seconds=${1:-15}
source "$(dirname "$0")/lib.sh"

data=target/bench-overload-data
profile=benchmarks/scenarios/codes-only.toml

start_switch() {
  rm -rf "$data"
  ./target/release/switch run --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --data-dir "$data" \
    > "$data.log" 2>&1 &
  switch_pid=$!
  for _ in $(seq 1 100); do grep -q "serving" "$data.log" && break; sleep 0.1; done
}

stop_switch() {
  peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$switch_pid/status")
  kill -INT "$switch_pid"; wait "$switch_pid" || true; switch_pid=
}

# Prints a table row from the run's summary: what was offered, and what came back.
row() {
  python3 - "$1" "$peak_kib" <<'PY'
import json, sys
label, peak_kib = sys.argv[1], int(sys.argv[2])
s = json.load(open("target/bench-overload.json"))
replies = s["replies"]
print(f"| {label} | {s['offered_tps']:.0f} | {s['achieved_tps']:.0f} | {s['sent']} | {s['missing']} | "
      f"{replies.get('Approved', 0)} | {replies.get('SystemBusy', 0)} | {replies.get('Timeout', 0)} | "
      f"{s['receivers']['reversals']} | {s['latency_us']['p50']} | {s['latency_us']['p99']} | "
      f"{peak_kib // 1024} | {'yes' if s['valid'] else 'no: ' + '; '.join(s['invalid_reasons'])} |")
PY
}

run() {
  ./target/release/loadgen run --target "127.0.0.1:$port" --admin "127.0.0.1:$admin" --profile "$profile" \
    --quiet --summary-json target/bench-overload.json "$@" > /dev/null || true
}

echo "$(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per run"
start_switch
# The closed loop pays with payment codes from one acquirer, as the open loops here do.
out=$(./target/release/loadgen run --target "127.0.0.1:$port" --admin "127.0.0.1:$admin" \
  --in-flight 512 --duration "${seconds}s")
stop_switch
capacity=$(sed -n 's/.*s: \([0-9]*\)\/s$/\1/p' <<<"$out")
echo "closed-loop capacity C: $capacity/s (512 in flight)"
echo
echo "| run | offered /s | achieved /s | sent | unanswered | approved | SystemBusy | Timeout | reversals | p50 us | p99 us | peak MiB | valid run |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for factor in 0.8 1.2 2 3; do
  rate=$(python3 -c "print(int($capacity * $factor))")
  start_switch
  run --rate "$rate" --duration "${seconds}s"
  stop_switch
  row "${factor} C"
done

# A 12 s stop of the switch 5 s into a run at 0.8 C (longer than the 10 s reply
# deadline). The generator keeps its schedule meanwhile (its sends queue; nothing is
# dropped for lateness) and waits long enough for every answer.
rate=$(python3 -c "print(int($capacity * 0.8))")
start_switch
run --rate "$rate" --duration "$((seconds + 12))s" --max-lag 60s --drain 30s &
loadgen_pid=$!
sleep 5
kill -STOP "$switch_pid"
sleep 12
kill -CONT "$switch_pid"
wait "$loadgen_pid" || true
stop_switch
row "0.8 C, 12 s SIGSTOP"
rm -rf "$data" "$data.log" target/bench-overload.json
