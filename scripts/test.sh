#!/usr/bin/env bash
# Runs every test of Strata. Needs root: integration tests boot a private systemd 252 in a
# PID+mount namespace (strata-testkit) and fail, never skip, when they cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: run as root: the integration tests boot a private systemd in a namespace" >&2
    exit 1
fi

# A fresh machine lacks some of what the tests use (nix-instantiate above all): install only
# what is missing (Debian packages; nothing when all is present).
echo "==> test dependencies (scripts/install-test-deps.sh)"
scripts/install-test-deps.sh

echo "==> nix-instantiate --parse of every .nix file"
if ! command -v nix-instantiate >/dev/null; then
    echo "test.sh: nix-instantiate is still missing after scripts/install-test-deps.sh" >&2
    exit 1
fi
while IFS= read -r -d '' f; do
    nix-instantiate --parse "$f" >/dev/null || { echo "test.sh: $f does not parse" >&2; exit 1; }
    echo "parsed $f"
done < <(find . -name '*.nix' -not -path './target/*' -print0)

echo "==> NixOS module: re-render the example configuration, diff it against the fixture, check the assertions"
if [ -d ../shared/tools/nixos-eval ]; then
    scripts/check-nixos-fixture.sh
else
    echo "test.sh: SKIPPED (optional) the NixOS module evaluation: the offline evaluator" \
        "../shared/tools/nixos-eval is absent beside this clone; strata-ctl/tests/nixos_fixture.rs" \
        "still checks the fixture with strata-ctl"
fi

echo "==> cargo build --workspace --bins (the integration tests run these inside a private systemd)"
cargo build --workspace --bins --locked

echo "==> cargo test --workspace"
cargo test --workspace --locked --all-targets

# The benchmarks are not here: they print numbers rather than pass or fail on them, and take
# minutes. .ci/run runs them in short mode after this script (scripts/bench.sh --quick, failing
# only when a benchmark itself fails); scripts/bench.sh runs them in full by hand.
