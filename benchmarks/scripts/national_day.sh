#!/usr/bin/env bash
# A national day's journal on one node, closed and restarted (issue 20's targets), against
# the commit before the streaming close and the journal head (OLD, 5c1605e by default) in
# one invocation. The load: closed loop (512 in flight, the weekday mix) from OLD's
# generator against OLD's switch (2 shards, `--fsync never` so the disk is not what limits
# the run), WECHATPAY settling in HKD (its payments are converted), an acquirer fee.
#  1. COMPARE payments (10,000,000), then OLD closes window 1 offline (peak RSS, time) and
#     HEAD rebuilds it from the same journal: the files must be byte-identical (sha256 of
#     each). OLD's close holds the window in memory, so this is the size it can still do.
#  2. TRANSACTIONS more payments (50,000,000) in window 2; OLD starts on the whole journal
#     (it replays all of it): seconds to /readyz.
#  3. HEAD closes window 2 offline: peak RSS and time (`/usr/bin/time -v`).
#  4. HEAD starts on it, takes RESTART_LOAD more payments (5,000,000: restart points are
#     journaled as it goes), stops, and starts again three times: seconds to /readyz, with
#     every record of the day retained.
# Needs about 230 bytes of disk per payment for the journal plus about 300 for window 2's
# files, under target/. Loopback only. With the defaults about 20 minutes on the 2-core box.
#   bash benchmarks/scripts/national_day.sh [TRANSACTIONS] [OLD] [COMPARE] [RESTART_LOAD]
set -euo pipefail
transactions=${1:-50000000}
old=${2:-5c1605e}
compare=${3:-10000000}
restart_load=${4:-5000000}
# Each load run's length: a run may overshoot the target by up to one of these.
chunk=${CHUNK:-10s}
source "$(dirname "$0")/lib.sh"
old=$(git rev-parse --short "$old")
tree=target/compare-$old
[ -d "$tree" ] || git worktree add --quiet --detach "$tree" "$old"
(cd "$tree" && CARGO_TARGET_DIR=../compare-target-$old cargo build --quiet --release --bin switch --bin loadgen)
old_bin=target/compare-target-$old/release
new_bin=target/release
work=target/national-day
rm -rf "$work"
mkdir -p "$work"
config=$work/switch.toml

with_settlement() {
  case "$1" in WECHATPAY) printf 'settlement_currency = "HKD"\n' ;; esac
  true
}
{
  printf '[switch]\nid = "CSWITCH"\nlisten = "127.0.0.1:%s"\nplaintext = true\n' "$port"
  printf '[fx]\nrates = "%s/switch/config/demo-rates.toml"\nmargin_basis_points = 50\n' "$(pwd)"
  printf '[clearing]\ndaily_cutoff = "off"\n'
  printf '[[fee]]\nparticipant = "ACQ0001"\nbasis_points = 6\ncross_border_basis_points = 20\n'
  demo_participants with_settlement
} > "$config"

metric() {
  curl -s "http://127.0.0.1:$admin/metrics" | sed -n "s/^$1 \([0-9]*\).*/\1/p" | head -1
}
# Starts BIN's switch on DATA; $ready: the seconds until /readyz said ready.
start() {
  local bin=$1 data=$2 started
  started=$(date +%s.%N)
  "$bin/switch" run --config "$config" --admin-listen "127.0.0.1:$admin" --shards 2 --fsync never \
    --data-dir "$data" >> "$data.log" 2>&1 &
  switch_pid=$!
  until curl -sf "http://127.0.0.1:$admin/readyz" > /dev/null; do
    kill -0 "$switch_pid" 2>/dev/null || { echo "the switch exited while starting:" >&2; tail "$data.log" >&2; exit 1; }
    sleep 0.05
  done
  ready=$(echo "$(date +%s.%N) - $started" | bc)
}
stop() {
  kill -INT "$switch_pid"
  wait "$switch_pid" || true
  switch_pid=
}
# Closed-loop load from BIN's generator until the switch has approved TARGET payments.
load_until() {
  local bin=$1 target=$2 seed=$3 approved
  while :; do
    approved=$(metric 'switch_replies_total{code="Approved"}')
    [ "${approved:-0}" -ge "$target" ] && break
    seed=$((seed + 1))
    "$bin/loadgen" run --target "127.0.0.1:$port" --participants "$config" --in-flight 512 \
      --duration "$chunk" --seed "$seed" --quiet > /dev/null || true
  done
  echo "$approved"
}
# Runs a close, printing "peak RSS MiB, wall seconds".
timed() {
  local log=$1
  shift
  /usr/bin/time -v "$@" > "$log" 2> "$log.time" || { echo "failed: $*" >&2; cat "$log" "$log.time" >&2; exit 1; }
  local rss wall
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\)/\1/p' "$log.time")
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): \(.*\)/\1/p' "$log.time")
  echo "$((rss / 1024)) MiB, $wall"
}
hashes() {
  (cd "$1" && find . -type f \( -name '*.csv' -o -name '*.json' \) ! -name 'fee_schedule.json' \
    -print0 | sort -z | xargs -0 sha256sum)
}

echo "national day: $old against $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
data=$work/data
window() { printf '%s/clearing/window-%06d' "$data" "$1"; }

echo
echo "1. window 1: $compare payments through $old's switch, closed by $old, rebuilt by HEAD"
started=$(date +%s)
start "$old_bin" "$data"
approved=$(load_until "$old_bin" "$compare" 0)
stop
echo "   $approved payments approved in $(($(date +%s) - started)) s"
echo "   $old closes it: $(timed "$work/close-old.log" "$old_bin/switch" clearing close --data-dir "$data" --config "$config")"
hashes "$(window 1)" > "$work/old.sha256"
echo "   $(wc -l < "$work/old.sha256") files, $(du -sm "$(window 1)" | cut -f1) MB"
echo "   HEAD rebuilds it: $(timed "$work/rebuild-new.log" "$new_bin/switch" clearing rebuild --data-dir "$data" --window 1 --config "$config")"
hashes "$(window 1)" > "$work/new.sha256"
if cmp -s "$work/old.sha256" "$work/new.sha256"; then
  echo "   byte-identical: yes"
else
  echo "   byte-identical: NO"
  diff "$work/old.sha256" "$work/new.sha256" || true
fi
rm -rf "$(window 1)"

echo
echo "2. window 2: $transactions payments through $old's switch"
started=$(date +%s)
start "$old_bin" "$data"
approved=$(load_until "$old_bin" "$transactions" 100000)
stop
echo "   $approved payments approved in $(($(date +%s) - started)) s; journal $(du -sm "$data/journal" | cut -f1) MB"
start "$old_bin" "$data"
stop
echo "   $old starts on it (the whole journal replayed): ready after $ready s"

echo
echo "3. HEAD closes window 2 offline"
echo "   $(timed "$work/close-new.log" "$new_bin/switch" clearing close --data-dir "$data" --config "$config")"
echo "   $(find "$(window 2)" -name '*.csv' | wc -l) CSV files, $(du -sm "$(window 2)" | cut -f1) MB, $(find "$(window 2)" -name '*.csv' -print0 | xargs -0 cat | wc -l) lines"
rm -rf "$(window 2)"

echo
echo "4. HEAD restarts"
start "$new_bin" "$data"
echo "   first start on $old's journal: ready after $ready s"
approved=$(load_until "$new_bin" "$restart_load" 200000)
stop
echo "   $approved more payments; journal $(du -sm "$data/journal" | cut -f1) MB, all retained"
for run in 1 2 3; do
  start "$new_bin" "$data"
  stop
  echo "   restart $run: ready after $ready s"
done
grep 'journal recovered' "$data.log" | tail -2 | sed 's/^/   /' || true
rm -rf "$work"
