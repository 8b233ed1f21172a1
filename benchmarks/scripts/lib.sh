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
