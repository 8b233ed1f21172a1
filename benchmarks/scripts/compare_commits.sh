#!/usr/bin/env bash
# The same closed loop against the switch of two commits, alternated ROUNDS times in one
# invocation (512 in flight from one acquirer, the weekday mix, journal at its default
# policy, frame MACs on, 1 shard): what a change costs, with drift on this shared box
# hitting both alike. Each commit runs with its own load generator (the protocol may
# differ). OLD is built in a worktree under target/compare-OLD (a few minutes the first
# time). Loopback only; about ROUNDS x 2 x (3 + SECONDS) s.
#   bash benchmarks/scripts/compare_commits.sh OLD [SECONDS] [ROUNDS]
set -euo pipefail
old=${1:?usage: compare_commits.sh OLD [SECONDS] [ROUNDS]}
seconds=${2:-10}
rounds=${3:-5}
source "$(dirname "$0")/lib.sh"
old=$(git rev-parse --short "$old")
tree=target/compare-$old
[ -d "$tree" ] || git worktree add --quiet --detach "$tree" "$old"
(cd "$tree" && CARGO_TARGET_DIR=../compare-target-$old cargo build --quiet --release --bin switch --bin loadgen)

# The demo network's participants with keys of their own, in a file both commits read.
{
  printf '[switch]\nid = "CSWITCH"\nlisten = "127.0.0.1:%s"\nplaintext = true\n' "$port"
  demo_participants
} > target/bench-compare.toml

echo "$old against $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per run, 1 shard"
echo
echo "| round | commit | throughput /s | p50 us | p99 us | switch CPU us/tx |"
echo "|---:|---|---:|---:|---:|---:|"
for round in $(seq 1 "$rounds"); do
  for build in "$old:target/compare-target-$old/release" "$(git rev-parse --short HEAD):target/release"; do
    name=${build%%:*} bin=${build#*:}
    closed_loop "$bin" target/bench-compare.toml target/bench-compare-data
    echo "| $round | $name | $throughput | $p50 | $p99 | $cpu |"
  done
done
rm -rf target/bench-compare-data target/bench-compare-data.log target/bench-compare.toml
