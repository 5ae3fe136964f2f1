#!/usr/bin/env bash
# Re-renders the NixOS module's example configuration (nixos-module/tests/example-config.nix)
# with the offline evaluator ../shared/tools/nixos-eval and diffs the manifest it produces
# against the fixture nixos-module/tests/example-config.expected.toml, whose acceptance by
# `strata-ctl check` strata-ctl/tests/nixos_fixture.rs asserts. Together: what the module
# renders is what strata-ctl accepts.
#
#   scripts/check-nixos-fixture.sh            check (exit 1 on a difference)
#   scripts/check-nixos-fixture.sh --update   rewrite the fixture from the module
#
# The evaluator lives outside the repository (NIXOS_EVAL overrides its location); without it
# this script fails, saying so. It evaluates with the build-time check off (the evaluator
# cannot build derivations; the Rust test runs that check on the fixture instead).
set -euo pipefail
cd "$(dirname "$0")/.."

update=false
case "${1:-}" in
    "") ;;
    --update) update=true ;;
    *) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

eval_dir="${NIXOS_EVAL:-../shared/tools/nixos-eval}"
if [ ! -x "$eval_dir/eval-module.sh" ]; then
    echo "check-nixos-fixture: cannot re-render: no offline evaluator at $eval_dir/eval-module.sh" >&2
    exit 1
fi
if ! command -v nix-instantiate >/dev/null; then
    echo "check-nixos-fixture: cannot re-render: nix-instantiate missing (scripts/install-test-deps.sh)" >&2
    exit 1
fi

fixture=nixos-module/tests/example-config.expected.toml
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/config.nix" <<NIX
{
  imports = [ $PWD/nixos-module/tests/example-config.nix ];
  config.services.strata.checkConfig = false;
}
NIX

STUB_PKGS=strata "$eval_dir/eval-module.sh" nixos-module/default.nix "$tmp/config.nix" >"$tmp/eval.json"
python3 - "$tmp/eval.json" "$tmp/rendered.toml" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
etc = result["etc"].get("strata/strata.toml")
if etc is None or etc.get("content") is None:
    sys.exit("check-nixos-fixture: the module defined no /etc/strata/strata.toml with content")
open(sys.argv[2], "w").write(etc["content"])
PY

if $update; then
    cp "$tmp/rendered.toml" "$fixture"
    echo "check-nixos-fixture: wrote $fixture"
elif diff -u "$fixture" "$tmp/rendered.toml"; then
    echo "check-nixos-fixture: $fixture matches the module's rendering"
else
    echo "check-nixos-fixture: the module renders something else than $fixture (above);" \
        "if the change is intended, run $0 --update and commit the fixture" >&2
    exit 1
fi
