#!/usr/bin/env bash
# Re-renders the NixOS module's example configuration (nixos-module/tests/example-config.nix)
# with the offline evaluator ../shared/tools/nixos-eval and diffs the manifest it produces
# against the fixture nixos-module/tests/example-config.expected.toml, whose acceptance by
# `strata-ctl check` strata-ctl/tests/nixos_fixture.rs asserts. Together: what the module
# renders is what strata-ctl accepts. The example must evaluate without a warning.
#
# Then it evaluates variants of the example with one mistake each and checks that the
# module's assertions refuse each with the message an operator needs, next to valid variants
# (positive controls) that must evaluate.
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
if result.get("warnings"):
    sys.exit(f"check-nixos-fixture: the example configuration evaluates with warnings: {result['warnings']}")
etc = result["etc"].get("strata/strata.toml")
if etc is None or etc.get("content") is None:
    sys.exit("check-nixos-fixture: the module defined no /etc/strata/strata.toml with content")
open(sys.argv[2], "w").write(etc["content"])
PY

if $update; then
    cp "$tmp/rendered.toml" "$fixture"
    echo "check-nixos-fixture: wrote $fixture"
    exit 0
elif diff -u "$fixture" "$tmp/rendered.toml"; then
    echo "check-nixos-fixture: $fixture matches the module's rendering"
else
    echo "check-nixos-fixture: the module renders something else than $fixture (above);" \
        "if the change is intended, run $0 --update and commit the fixture" >&2
    exit 1
fi

# evaluate NAME CONFIG: the example configuration plus CONFIG (an attribute set of options,
# may use `lib`); the result in $tmp/NAME.out, the errors in $tmp/NAME.err. CONFIG is merged
# with mkMerge rather than imported as a module of its own: the offline evaluator drops a
# module written inline in `imports`.
evaluate() {
    cat >"$tmp/$1.nix" <<NIX
{ lib, ... }:
{
  imports = [ $PWD/nixos-module/tests/example-config.nix ];
  config = lib.mkMerge [
    { services.strata.checkConfig = false; }
    ($2)
  ];
}
NIX
    STUB_PKGS=strata "$eval_dir/eval-module.sh" nixos-module/default.nix "$tmp/$1.nix" \
        >"$tmp/$1.out" 2>"$tmp/$1.err"
}

failures=0
# refused NAME EXPECTED MODULE: the evaluation fails on the module's assertions, one of which
# says EXPECTED
refused() {
    if evaluate "$1" "$3"; then
        echo "check-nixos-fixture: $1: evaluated, expected the assertion \"$2\"" >&2
        failures=$((failures + 1))
    elif ! grep -q 'Failed assertions:' "$tmp/$1.err" || ! grep -qF -- "$2" "$tmp/$1.err"; then
        echo "check-nixos-fixture: $1: refused, but not with \"$2\":" >&2
        cat "$tmp/$1.err" >&2
        failures=$((failures + 1))
    else
        echo "refused as expected: $1: $(grep -F -- "$2" "$tmp/$1.err" | head -n 1 | sed 's/^ *- //')"
    fi
}
# accepted NAME MODULE: the evaluation succeeds without a warning
accepted() {
    if ! evaluate "$1" "$2"; then
        echo "check-nixos-fixture: $1: expected to evaluate:" >&2
        cat "$tmp/$1.err" >&2
        failures=$((failures + 1))
    elif ! python3 -c 'import json, sys; sys.exit(bool(json.load(open(sys.argv[1]))["warnings"]))' \
        "$tmp/$1.out"; then
        echo "check-nixos-fixture: $1: evaluated with warnings:" >&2
        cat "$tmp/$1.err" >&2
        failures=$((failures + 1))
    else
        echo "accepted as expected: $1"
    fi
}

echo "==> the module's assertions: variants of the example with one mistake each, and controls"
refused unknown-dependency 'services.strata.services.web: depends on `nope`, which is neither' \
    '{ services.strata.services.web.after = [ "nope" ]; }'
refused dependency-on-disabled-core 'services.strata.services.probe: depends on the core service registry, which is disabled' \
    '{ services.strata.core.registry.enable = false; services.strata.services.probe.capabilities = lib.mkForce [ ]; }'
refused self-dependency 'services.strata.services.cache: a service cannot depend on itself' \
    '{ services.strata.services.cache.requires = [ "cache" ]; }'
refused dependency-cycle 'services.strata.services: dependency cycle cache -> web -> cache' \
    '{ services.strata.services.cache.after = [ "web" ]; }'
refused runtime-dir-outside-run 'services.strata.runtimeDir: "/srv/strata-run" must be a directory beneath /run' \
    '{ services.strata.runtimeDir = "/srv/strata-run"; }'
refused runtime-dir-is-run 'services.strata.runtimeDir: "/run" must be an absolute path' \
    '{ services.strata.runtimeDir = "/run"; }'
refused state-dir-outside-var-lib 'services.strata.stateDir: "/srv/strata" must be a directory beneath /var/lib' \
    '{ services.strata.stateDir = "/srv/strata"; }'
refused nested-dirs 'services.strata: runtimeDir (/run/strata) and stateDir (/run/strata/state) must not contain each other' \
    '{ services.strata.stateDir = "/run/strata/state"; }'
refused core-service-name 'services.strata.services.fs: `fs` is the name of a core service' \
    '{ services.strata.services.fs.exec = [ "/bin/true" ]; }'
refused reserved-name 'services.strata.services.supervisor: `supervisor` is reserved' \
    '{ services.strata.services.supervisor.exec = [ "/bin/true" ]; }'
refused bad-service-name 'services.strata.services.Web_2: the name `Web_2` is not a service name' \
    '{ services.strata.services.Web_2.exec = [ "/bin/true" ]; }'
refused relative-exec 'services.strata.services.rel.exec: the first element must be an absolute path' \
    '{ services.strata.services.rel.exec = [ "true" ]; }'
refused unknown-call-target 'services.strata.services.probe.capabilities: call:nope names no service' \
    '{ services.strata.services.probe.capabilities = [ "call:nope" ]; }'
refused call-to-disabled-core 'services.strata.services.web.capabilities: call:fs calls a core service that is disabled' \
    '{ services.strata.core.fs.enable = false; services.strata.services.web.after = lib.mkForce [ ]; }'
refused self-call 'services.strata.services.probe.capabilities: a service cannot call itself' \
    '{ services.strata.services.probe.capabilities = [ "call:probe" ]; }'
refused call-without-identity 'services.strata.services.web.capabilities: call: capabilities need the identity service' \
    '{ services.strata.core = { identity.enable = false; registry.enable = false; fs.enable = false; audit.enable = false; }; }'
refused identity-disabled-alone 'services.strata.core.identity.enable is false, but the core services registry, fs, audit are enabled' \
    '{ services.strata.core.identity.enable = false; }'
refused capability-on-state-dir '`fs.write:/var/lib` would give the service access to Strata'"'"'s own secrets and state' \
    '{ services.strata.services.cache.capabilities = [ "fs.write:/var/lib" ]; }'
refused capability-on-credentials '`fs.read:/run/strata/credentials/web` would give the service access' \
    '{ services.strata.services.probe.capabilities = [ "fs.read:/run/strata/credentials/web" ]; }'
refused fs-serves-state-dir 'services.strata.core.fs.roots: /var/lib/strata/data would let the fs service serve' \
    '{ services.strata.core.fs.roots = [ "/var/lib/strata/data" ]; }'
refused bad-node-id 'services.strata.nodeId: "node 1" is not a node id' \
    '{ services.strata.nodeId = lib.mkForce "node 1"; }'
# positive controls: the closest valid variants evaluate, without a warning
accepted other-dirs '{ services.strata = { runtimeDir = "/run/strata-2"; stateDir = "/var/lib/strata-2"; }; }'
accepted call-supervisor-and-declared '{ services.strata.services.probe.capabilities = [ "call:supervisor" "call:web" ]; }'
accepted fs-read-beside-credentials '{ services.strata.services.probe.capabilities = [ "fs.read:/run/strata/registry.sock" ]; }'
accepted dirs-anywhere-without-core-services \
    '{ services.strata = { runtimeDir = "/srv/strata-run"; stateDir = "/srv/strata"; core = { identity.enable = false; registry.enable = false; fs.enable = false; audit.enable = false; }; services = { web.capabilities = lib.mkForce [ ]; web.after = lib.mkForce [ ]; probe.capabilities = lib.mkForce [ ]; probe.after = lib.mkForce [ "web" ]; }; }; }'

if [ "$failures" -gt 0 ]; then
    echo "check-nixos-fixture: $failures assertion check(s) failed" >&2
    exit 1
fi
echo "check-nixos-fixture: every broken variant refused with its message, every control accepted"
