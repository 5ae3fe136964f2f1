#!/usr/bin/env bash
# Benchmarks of Strata against raw systemd, measured in the same run on a private systemd:
# cold start (N = 10/100/500), crash -> new MainPID, supervisor at rest; then the protocol
# benchmarks (authorize, identity.issue/revoke, fs.read under load).
#   scripts/bench.sh          full run (results go to docs/performance.md by hand)
#   scripts/bench.sh --quick  CI's short mode
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (boots a private systemd)" >&2; exit 1; }
quick=()
[ "${1-}" = --quick ] && quick=(--quick)
cargo build --release --workspace --bins --locked --quiet
cargo build --release -p strata-systemd --example bench --locked --quiet
echo "### supervisor vs raw systemd"
target/release/examples/bench "${quick[@]}"
