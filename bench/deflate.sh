#!/usr/bin/env bash
# permessage-deflate on vs off in one run: the same gateway binary, 15k subscribers, 1 KiB JSON-like publishes
# (--text-pad: compresses about like real JSON), rounds of plain then deflate subscribers. Prints, per side, the
# medians of deliveries/s, server CPU per delivery and bytes on the wire per delivery, and the deflate/plain ratios
# (goal: ≥ 80 % of the deliveries/s with ≤ 40 % of the bytes). Output in bench/out/deflate/.
#
#   bench/deflate.sh [--rounds N] [--quick] [--wait-quiet SECONDS]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS=3
WAIT_QUIET=0
CONNS=15000
MESSAGES=300
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
        --quick) CONNS=2000; MESSAGES=50; ROUNDS=1 ;;
        --wait-quiet) WAIT_QUIET="${2:?--wait-quiet needs seconds}"; shift ;;
        *) echo "deflate.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
GW="${WSGATE:-$TARGET/release/wsgate}"
BENCH="${WSGATE_BENCH:-$TARGET/release/wsgate-bench}"
OUT="$ROOT/bench/out/deflate"
RESULTS="$OUT/results.jsonl"
mkdir -p "$OUT"
: >"$RESULTS"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PROG=deflate.sh
FAILED=()
trap stop_gateway EXIT
trap 'stop_gateway; exit 130' INT TERM

ARGS=(--conns "$CONNS" --procs 2 --source-ips 2 --rate 5000 --messages "$MESSAGES" --size 1024 --inflight 8
    --text-pad --duration 30 --timeout 40)
for round in $(seq 1 "$ROUNDS"); do
    run_scenario "plain-$round" fanout /ws "${ARGS[@]}"
    run_scenario "deflate-$round" fanout /ws "${ARGS[@]}" --deflate
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
side = {"plain": [], "deflate": []}
for r in runs:
    side[r["label"].split("-")[0]].append(r["results"])
def fig(rs, f):
    return statistics.median(f(r) for r in rs) if rs else float("nan")
rows = [
    ("deliveries/s", lambda r: r["deliveries_per_s"], "{:,.0f}"),
    ("server CPU µs per delivery (load phase)", lambda r: 1000.0 * r["server_cpu_ms"] / max(r["deliveries"], 1), "{:.3f}"),
    ("bytes on the wire per delivery", lambda r: r["bytes_in"] / max(r["deliveries"], 1), "{:.0f}"),
    ("lost", lambda r: r["lost"], "{:.0f}"),
]
print("| figure | plain (median) | deflate (median) | deflate/plain |")
print("| --- | --- | --- | --- |")
for name, f, fmt in rows:
    p, d = fig(side["plain"], f), fig(side["deflate"], f)
    ratio = f"{d / p:.2f}" if p else "-"
    print(f"| {name} | {fmt.format(p)} | {fmt.format(d)} | {ratio} |")
gens = [(r["label"], r["results"]["generator_cpu_ms"], r["results"]["machine_load_pct"].get("other", 0)) for r in runs]
print("\nper run (label, generator CPU ms, other processes % of a core):", gens)
PY
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'deflate.sh: failed: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
