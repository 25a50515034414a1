#!/usr/bin/env bash
# Coverage-guided fuzzing of flannel-core's parsers (cargo-fuzz + libFuzzer).
#
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20)
#
# Runs every target of fuzz/ (net_conf, lease_json, subnet_key, subnet_env,
# subnet_env_roundtrip) for SECONDS_PER_TARGET seconds each, starting from the
# committed seeds in fuzz/seeds/<target>/ copied into the scratch corpus
# fuzz/corpus/<target>/ (git-ignored, kept between runs so coverage grows; the
# seeds themselves are never written to), with the libFuzzer dictionary
# fuzz/dicts/<target>.dict when there is one, and with -use_value_profile=1
# (comparison feedback: without it libFuzzer did not reach the IPv4-mapped
# IPv6 inputs behind a round-trip defect it found, now fixed, within minutes;
# with it, subnet_key found one in about a minute).
#
# Prints one line per target with the
# number of executions and exits non-zero if any target crashed, printing the
# artifact (the crashing input) path. Reproduce a crash with
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <artifact>
# Full libFuzzer logs are in fuzz/target/fuzz-logs/<target>.log.
#
# Toolchain: stable Rust only. cargo-fuzz needs nightly rustc flags
# (-Zsanitizer=address, -Cpasses=sancov-module options), which stable accepts
# with RUSTC_BOOTSTRAP=1. The default AddressSanitizer build works with the
# stable toolchain here (its ASan runtime ships with rust-std), so no
# `--sanitizer none` fallback is needed; flannel-core has no unsafe code, so
# ASan mostly guards the dependencies. Set FUZZ_SANITIZER=none to build
# without it (faster, e.g. where the ASan runtime is missing).
#
# Build: release (-O) with debug assertions and overflow checks on (-a), so
# arithmetic overflow in flannel-core panics and is reported as a crash.
set -euo pipefail

secs="${1:-20}"
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]  (a positive integer, default 20)" >&2
    exit 2
fi
sanitizer="${FUZZ_SANITIZER:-address}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/fuzz"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found; installing it (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked
fi

cd "$fuzz_dir"
build=(-O -a --sanitizer "$sanitizer")
echo "building fuzz targets (release, debug assertions, sanitizer: $sanitizer)" >&2
cargo fuzz build "${build[@]}"

mapfile -t targets < <(cargo fuzz list)
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "no fuzz targets found in $fuzz_dir" >&2
    exit 1
fi

log_dir="$fuzz_dir/target/fuzz-logs"
mkdir -p "$log_dir"
failed=()
summary=()
for target in "${targets[@]}"; do
    seeds="$fuzz_dir/seeds/$target"
    corpus="$fuzz_dir/corpus/$target"
    log="$log_dir/$target.log"
    mkdir -p "$corpus"
    if [[ -d "$seeds" ]]; then
        # Seeds are copied, never fuzzed in place: libFuzzer adds new inputs
        # to the first corpus directory it is given.
        for seed in "$seeds"/*; do
            if [[ -f "$seed" && ! -e "$corpus/$(basename "$seed")" ]]; then
                cp "$seed" "$corpus/"
            fi
        done
    fi
    extra=()
    if [[ -f "$fuzz_dir/dicts/$target.dict" ]]; then
        extra+=(-dict="$fuzz_dir/dicts/$target.dict")
    fi
    echo "fuzzing $target for ${secs}s" >&2
    status=0
    cargo fuzz run "${build[@]}" "$target" "$corpus" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -use_value_profile=1 "${extra[@]}" >"$log" 2>&1 || status=$?
    runs="$(grep -Eo '^Done [0-9]+ runs' "$log" | tail -n 1 | awk '{print $2}' || true)"
    if [[ $status -eq 0 ]]; then
        line="$(printf '%-22s ok     %12s runs in %ss' "$target" "${runs:-?}" "$secs")"
    else
        artifact="$(grep -Eo 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/^Test unit written to //' || true)"
        line="$(printf '%-22s FAILED (exit %s) artifact: %s  log: %s' "$target" "$status" "${artifact:-none}" "$log")"
        failed+=("$target")
        # Show the panic message (or sanitizer report) right away.
        grep -E -A3 "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" | head -n 12 >&2 || true
    fi
    echo "$line"
    summary+=("$line")
done

echo
echo "summary (${secs}s per target):"
printf '  %s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashes in: ${failed[*]}" >&2
    exit 1
fi
