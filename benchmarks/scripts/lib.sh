# Shared by the macro scripts (sourced, not run): from the repository root, release
# binaries built, a free-ish loopback port pair ($port for participants, $admin), and a
# switch started later (as $switch_pid) killed on any exit.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --quiet --release --bin switch --bin loadgen
port=$((30000 + RANDOM % 20000))
admin=$((port + 1))
switch_pid=
trap '[ -n "$switch_pid" ] && kill "$switch_pid" 2>/dev/null || true' EXIT
