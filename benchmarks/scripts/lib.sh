# Shared by the macro scripts (sourced, not run): from the repository root, release
# binaries built, a free-ish loopback port pair ($port for participants, $admin), and a
# switch started later (as $switch_pid) killed on any exit.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --quiet --release --bin switch --bin loadgen
port=$((30000 + RANDOM % 20000))
admin=$((port + 1))
switch_pid=
trap '[ -n "$switch_pid" ] && kill "$switch_pid" 2>/dev/null || true' EXIT

# Prints the demo network's routes and six participants, each with a key of its own (the
# load generator reads them from the same file), for a configuration the caller heads
# with its [switch] table. A function named in $1, if any, is called with each
# participant's id to print extra keys of its table (a frame MAC, a settlement currency).
demo_participants() {
  local extra=${1:-} entry id roles key
  printf '[[qr_network]]\nguid = "A000000333010101"\nacquirer = "UNIONPAY"\n'
  printf '[[unionpay_institution]]\ncode = "00010000"\nacquirer = "UNIONPAY"\n'
  for entry in ACQ0001:acquirer ACQ0002:acquirer WECHATPAY:issuer,acquirer ALIPAY:issuer,acquirer \
    UNIONPAY:issuer,network WAL0001:issuer; do
    id=${entry%%:*}
    roles=$(sed 's/\([a-z]*\)/"\1"/g' <<<"${entry#*:}")
    key=$(printf 'benchmark-key-%-10s' "$id" | od -An -tx1 | tr -d ' \n')
    printf '[[participant]]\nid = "%s"\nname = "%s"\nroles = [%s]\n' "$id" "$id" "$roles"
    if [ -n "$extra" ]; then "$extra" "$id"; fi
    printf '[[participant.key]]\nid = 1\nsecret_hex = "%s"\n' "$key"
  done
}

# One measured closed loop: starts BIN/switch on CONFIG (1 shard, its journal in DATA,
# its log in DATA.log), runs a 3 s warm-up and then $seconds s with BIN/loadgen (512 in
# flight, the participants of CONFIG, any further arguments), and stops the switch. Leaves
# the run's output in $out and its figures in $throughput, $p50, $p99 and $cpu; DATA stays
# for the caller to read.
closed_loop() {
  local bin=$1 config=$2 data=$3
  shift 3
  rm -rf "$data"
  "$bin/switch" run --config "$config" --admin-listen "127.0.0.1:$admin" --shards 1 --data-dir "$data" \
    > "$data.log" 2>&1 &
  switch_pid=$!
  for _ in $(seq 1 50); do grep -q "switch running" "$data.log" && break; sleep 0.1; done
  "$bin/loadgen" run --target "127.0.0.1:$port" --admin "127.0.0.1:$admin" --participants "$config" \
    --in-flight 512 --duration 3s "$@" > /dev/null
  out=$("$bin/loadgen" run --target "127.0.0.1:$port" --admin "127.0.0.1:$admin" --participants "$config" \
    --in-flight 512 --duration "${seconds}s" "$@")
  kill -INT "$switch_pid"; wait "$switch_pid" || true; switch_pid=
  throughput=$(sed -n 's/.*s: \([0-9]*\)\/s$/\1/p' <<<"$out")
  cpu=$(sed -n 's/.*: \([0-9.]*\) us per transaction/\1/p' <<<"$out")
  p50=$(sed -n 's/.*p50 \([0-9.]*\).*/\1/p' <<<"$out" | head -1)
  p99=$(sed -n 's/.*p99 \([0-9.]*\).*/\1/p' <<<"$out" | head -1)
}
