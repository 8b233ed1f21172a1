#!/usr/bin/env bash
# What link security costs end to end: the same closed loop (512 in flight, the weekday
# mix, journal at its default policy) against the switch with frame MACs off, on
# hmac-sha256 (the embedded default) and on hmac-sm3, over plain TCP; then mutual TLS
# (the example PKI in deploy/tls) without and with hmac-sha256; in one invocation.
# Loopback only; about 5 x (3 + SECONDS) s.
#   bash benchmarks/scripts/mac_cost.sh [SECONDS]
set -euo pipefail
seconds=${1:-10}
source "$(dirname "$0")/lib.sh"

# The embedded default's participants and routes, with the frame MAC given (and keys of
# their own: the load generator reads them from the same file); TLS when $2 is "tls".
with_frame_mac() { printf 'frame_mac = "%s"\n' "$frame_mac"; }
config() {
  {
    printf '[switch]\nid = "CSWITCH"\nlisten = "127.0.0.1:%s"\n' "$port"
    if [ "$2" = tls ]; then
      printf '[tls]\ncert_file = "%s/switch.crt"\nkey_file = "%s/switch.key"\n' "$tls" "$tls"
      printf 'client_ca_file = "%s/participants-ca.crt"\ncrl_files = ["%s/participants.crl"]\n' "$tls" "$tls"
    else
      printf 'plaintext = true\n'
    fi
    frame_mac=$1
    demo_participants with_frame_mac
  } > "target/bench-mac.toml"
}
tls=$(pwd)/deploy/tls

echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per run, 1 shard"
echo
echo "| link | frame MAC | throughput /s | p50 us | p99 us | switch CPU us/tx |"
echo "|---|---|---:|---:|---:|---:|"
for setting in tcp:none tcp:hmac-sha256 tcp:hmac-sm3 tls:none tls:hmac-sha256; do
  link=${setting%%:*} mac=${setting#*:}
  config "$mac" "$link"
  tls_args=()
  [ "$link" = tls ] && tls_args=(--tls-dir "$tls")
  closed_loop ./target/release target/bench-mac.toml target/bench-mac-data "${tls_args[@]}"
  echo "| $link | $mac | $throughput | $p50 | $p99 | $cpu |"
done
rm -rf target/bench-mac-data target/bench-mac-data.log target/bench-mac.toml
