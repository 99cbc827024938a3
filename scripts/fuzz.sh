#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read outside input (fuzz/: cargo-fuzz + libFuzzer, nightly Rust).
#
#   scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]   one target
#   scripts/fuzz.sh all SECONDS [libFuzzer flags...]      every target in turn, then executions per target
#   scripts/fuzz.sh list                                  the targets
#
# New corpus entries go to fuzz/work/corpus/TARGET (git-ignored); the committed seeds in fuzz/corpus/TARGET are
# read too. A crash, leak, timeout or OOM stops the target, saves the input in fuzz/artifacts/TARGET and makes the
# script fail. Builds go to $CARGO_TARGET_DIR/fuzz (default fuzz/target). FUZZ_SANITIZER=address builds with ASan
# (default none: the fuzzed code is safe Rust, and no sanitizer is ~2-3x faster); debug assertions and overflow
# checks are always on. Results of long runs: docs/FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(frame_decode handshake api_http client_protocol jwt config cluster_event reactor permessage_deflate msgpack)

usage() {
    echo "usage: scripts/fuzz.sh TARGET|all SECONDS [libFuzzer flags...]  (targets: ${TARGETS[*]})" >&2
    exit 2
}

[ "${1:-}" = list ] && { printf '%s\n' "${TARGETS[@]}"; exit 0; }
[ $# -ge 2 ] || usage
what=$1
secs=$2
shift 2
[[ "$secs" =~ ^[0-9]+$ ]] && [ "$secs" -gt 0 ] || usage
if [ "$what" = all ]; then
    run=("${TARGETS[@]}")
else
    printf '%s\n' "${TARGETS[@]}" | grep -qx -- "$what" || usage
    run=("$what")
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

target_dir=${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}
target_dir=${target_dir:-$PWD/fuzz/target}
sanitizer=${FUZZ_SANITIZER:-none}
cd fuzz
# One build for all targets, so the per-target time budget is spent fuzzing.
cargo +nightly fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir"

summary=()
status=0
for t in "${run[@]}"; do
    mkdir -p "work/corpus/$t" "artifacts/$t"
    log=$(mktemp)
    echo "== fuzz $t for ${secs}s"
    # -timeout: an input taking 10 s is a hang; -rss_limit_mb: a parser must not need 2 GiB.
    if cargo +nightly fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$t" \
        "work/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@" >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
        grep -E -A12 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -40 || true
        echo "(input saved in fuzz/artifacts/$t; full log $log)"
    fi
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
    execs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    corpus=$(find "work/corpus/$t" "corpus/$t" -type f | wc -l)
    line=$(printf '%-16s %-6s executions %12s  exec/s %8s  corpus %6s' \
        "$t" "$result" "${execs:-?}" "${rate:-?}" "$corpus")
    echo "$line"
    summary+=("$line")
    [ "$result" = ok ] && rm -f "$log"
done

if [ ${#run[@]} -gt 1 ]; then
    echo "== fuzz summary (${secs}s per target)"
    printf '%s\n' "${summary[@]}"
fi
exit $status
