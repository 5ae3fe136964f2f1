#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 20) and exits non-zero if any
# target crashes (a panic, a failed assertion, a sanitizer report, a timeout or an OOM).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Works on the stable toolchain: cargo-fuzz needs nightly-only flags (-Zsanitizer), which
# RUSTC_BOOTSTRAP=1 unlocks. Installs cargo-fuzz when it is missing (about 4 minutes).
# The corpus grows in fuzz/corpus/<target> (not committed); the committed seeds are
# fuzz/seeds/<target> (and examples/ for the manifest parser); crashes land in
# fuzz/artifacts/<target>. docs/fuzzing.md explains long campaigns and what to do with a crash.
# Honours CARGO_TARGET_DIR (default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-20}
shift || true
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: SECONDS must be a positive integer, got '$secs'" >&2
    exit 2
fi

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    installing=$(date +%s)
    cargo install cargo-fuzz --locked --version 0.13.2
    echo "==> installed cargo-fuzz in $(($(date +%s) - installing)) s"
fi

target_args=()
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    target_args=(--target-dir "$CARGO_TARGET_DIR/fuzz")
fi

cd fuzz
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz.sh: no fuzz targets found" >&2
    exit 1
fi

start=$(date +%s)
echo "==> building ${#targets[@]} fuzz targets"
cargo fuzz build "${target_args[@]}"
built=$(date +%s)
echo "==> built in $((built - start)) s"

# fs_path builds a scratch directory tree under $TMPDIR: keep it in one place and remove it.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/strata-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

passed=0
failed=()
for t in "${targets[@]}"; do
    corpus="corpus/$t"
    mkdir -p "$corpus"
    inputs=("$corpus")
    [ -d "seeds/$t" ] && inputs+=("seeds/$t")
    [ "$t" = manifest_parser ] && inputs+=("../examples")
    opts=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [ -f "dicts/$t.dict" ] && opts+=(-dict="dicts/$t.dict")
    echo "==> fuzzing $t for $secs s"
    if TMPDIR="$scratch" cargo fuzz run "${target_args[@]}" "$t" "${inputs[@]}" -- "${opts[@]}" \
        >"$scratch/$t.log" 2>&1; then
        passed=$((passed + 1))
        grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)' "$scratch/$t.log" \
            | sed "s/^/    $t /" || true
    else
        failed+=("$t")
        echo "fuzz.sh: $t FAILED; what failed, then the last lines of its log:" >&2
        # the panic message comes before the sanitizer's long stack trace
        grep -E -A4 "panicked at|^SUMMARY:|^==[0-9]+==ERROR" "$scratch/$t.log" | head -n 40 >&2 || true
        echo "..." >&2
        tail -n 40 "$scratch/$t.log" >&2
        echo "fuzz.sh: reproduce with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t artifacts/$t/<file>" >&2
    fi
done

echo "==> fuzzing took $(($(date +%s) - start)) s in total (build $((built - start)) s)"
echo "fuzz: $passed passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashing targets: ${failed[*]} (see docs/fuzzing.md: every crash becomes a regression test)" >&2
    exit 1
fi
