#!/usr/bin/env bash
# bench/publish.sh — publish throughput with few subscribers per channel: old wsgate vs new wsgate vs µWebSockets
# (optional), in one run, alternating.
#
# Usage: bench/publish.sh --old OLD_WSGATE --new NEW_WSGATE [--uws UWS_BENCH_SERVER] [--rounds N] [--quick]
#   --uws PATH   the µWebSockets peer (/work/shared/peers/uws-bench: build it as its README says); skipped if absent
#   --rounds N   rounds (default 3); each round runs every side once per scenario, in the order old, new, uws
#   --quick      small numbers (a smoke test); recorded in bench/out/publish/quick.md only
# Environment: WSGATE_BENCH (generator binary); default ${CARGO_TARGET_DIR:-target}/release/wsgate-bench.
#
# Scenarios, all with 10 subscribers on the channel and ~100-byte messages (a 100-byte "data" object):
#   pub1     64 publishes in flight, pipelined over 1 API connection (POST /api/publish): publishes/s
#   pub4     the same over 4 API connections
#   batch    POST /api/batch with 1000 publishes per request, 4 requests in flight, 1 connection (wsgate with the
#            batch endpoint only): publishes/s
# Also the server's CPU time per publish (getrusage over the load phase / publishes: steadier than publishes/s on a
# shared machine), its context switches per publish (perf stat, if installed) and, for a wsgate with hand-over counters (/api/stats "handoff"), its wake-ups per publish.
# Each run is bounded (--messages and --duration 4 s) against a fresh server. Output: a table of medians, spreads
# ((max-min)/median) and every round's figure on stdout, appended to bench/RESULTS.md with the binaries' sha256.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH="${WSGATE_BENCH:-$TARGET_DIR/release/wsgate-bench}"
OLD=""
NEW=""
UWS=""
ROUNDS=3
QUICK=0
usage() { awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; }
die() {
    echo "publish.sh: $*" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
        --old) OLD="${2:?}"; shift ;;
        --new) NEW="${2:?}"; shift ;;
        --uws) UWS="${2:?}"; shift ;;
        --rounds) ROUNDS="${2:?}"; shift ;;
        --quick) QUICK=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
if [ ! -x "$OLD" ] || [ ! -x "$NEW" ]; then die "--old and --new must be executables"; fi
[ -x "$BENCH" ] || die "no generator at $BENCH (cargo build --release --workspace)"
case "$ROUNDS" in '' | *[!0-9]*) die "--rounds must be a number" ;; esac
if [ "$ROUNDS" -lt 1 ] || [ "$ROUNDS" -gt 20 ]; then die "--rounds must be 1..20"; fi
command -v jq >/dev/null || die "needs jq"
if [ -n "$UWS" ] && [ ! -x "$UWS" ]; then die "--uws $UWS is not an executable"; fi

PROG=publish.sh
OUT="$ROOT/bench/out/publish"
RESULTS="$OUT/results.jsonl"
# Read by bench/lib.sh.
# shellcheck disable=SC2034
WAIT_QUIET=0
FAILED=()
mkdir -p "$OUT"
: >"$RESULTS"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
UWS_PID=""
stop_uws() {
    [ -z "$UWS_PID" ] || stop_pid "$UWS_PID" "µWebSockets"
    UWS_PID=""
}
trap 'stop_gateway; stop_uws' EXIT
trap 'stop_gateway; stop_uws; exit 130' INT TERM

MESSAGES=300000
BATCH_MESSAGES=2000000
if [ "$QUICK" = 1 ]; then
    MESSAGES=20000
    BATCH_MESSAGES=100000
fi
SIDES=(old new)
[ -n "$UWS" ] && SIDES+=(uws)

# start_uws: the peer on a free loopback port; sets UWS_PID and WS_ADDR/API_ADDR (one port for both).
start_uws() {
    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    "$UWS" "$port" >"$OUT/uws.log" 2>&1 &
    UWS_PID=$!
    for _ in $(seq 1 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            WS_ADDR="127.0.0.1:$port"
            API_ADDR="127.0.0.1:$port"
            return 0
        fi
        sleep 0.1
    done
    echo "$PROG: µWebSockets did not listen on $port" >&2
    return 1
}

# handoff API_ADDR: "publishes wakeups" from /api/stats, or "- -" for a server without the counters.
handoff() {
    curl -s --max-time 2 "http://$1/api/stats" | jq -r '(.handoff.publishes_total // "-" | tostring) + " " + (.handoff.wakeups_total // "-" | tostring)' 2>/dev/null || echo "- -"
}

# run SIDE SCENARIO ROUND: one bounded run; appends
# "SIDE SCENARIO ROUND PUBLISHES_PER_S WAKEUPS_PER_PUBLISH LOST SERVER_CPU_US_PER_PUBLISH".
run() {
    local side="$1" scenario="$2" round="$3" pid name="$2-$1-$3"
    local args=(--conns 10 --size 100 --duration 4 --timeout 10 --quiet)
    case "$scenario" in
        pub1) args+=(--inflight 64 --pub-conns 1 --messages "$MESSAGES") ;;
        pub4) args+=(--inflight 64 --pub-conns 4 --messages "$MESSAGES") ;;
        batch) args+=(--batch 1000 --inflight 4000 --pub-conns 1 --messages "$BATCH_MESSAGES") ;;
    esac
    if [ "$side" = uws ]; then
        start_uws || { FAILED+=("$name"); stop_uws; return 0; }
        pid="$UWS_PID"
    else
        # GW: the binary bench/lib.sh's start_gateway runs.
        # shellcheck disable=SC2034
        GW="$OLD"
        # shellcheck disable=SC2034
        [ "$side" = new ] && GW="$NEW"
        start_gateway "$name" >/dev/null || { FAILED+=("$name"); stop_gateway; return 0; }
        pid="$GW_PID"
    fi
    local before after rc=0 perf_pid=""
    before="$(handoff "$API_ADDR")"
    # The server's context switches over the run (perf stat, when installed): scheduler hand-offs per publish.
    if command -v perf >/dev/null; then
        perf stat -x, -e context-switches -p "$pid" -o "$OUT/$name.perf" &
        perf_pid=$!
    fi
    "$BENCH" fanout --label "$name" --url "ws://$WS_ADDR/ws" --api "http://$API_ADDR" --server-pid "$pid" "${args[@]}" \
        >"$OUT/$name.txt" 2>"$OUT/$name.progress" || rc=$?
    after="$(handoff "$API_ADDR")"
    if [ -n "$perf_pid" ]; then
        # SIGINT makes perf stat write its counts; a perf that had not set up its handler yet gets SIGTERM.
        kill -INT "$perf_pid" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$perf_pid" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
    fi
    if [ "$side" = uws ]; then stop_uws; else stop_gateway; fi
    local line
    line="$(tail -n 1 "$OUT/$name.txt" | grep '^{' || true)"
    if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
        FAILED+=("$name (exit $rc)")
        return 0
    fi
    echo "$line" >>"$RESULTS"
    local pps lost cpu wpp="-" csw="-"
    if [ -s "$OUT/$name.perf" ]; then
        csw="$(awk -F, -v n="$(jq -r '.results.publish.published' <<<"$line")" \
            '$3 == "context-switches" && $1 ~ /^[0-9]+$/ && n > 0 { printf "%.3f", $1 / n }' "$OUT/$name.perf")"
        [ -n "$csw" ] || csw="-"
    fi
    pps="$(jq -r '.results.publish.publishes_per_s' <<<"$line")"
    cpu="$(jq -r '(1000 * .results.server_cpu_ms / .results.publish.published * 100 | round) / 100' <<<"$line")"
    lost="$(jq -r '(.results.lost + .results.publish.failed)' <<<"$line")"
    read -r p0 w0 <<<"$before"
    read -r p1 w1 <<<"$after"
    if [ "$p0" != "-" ] && [ "$p1" != "-" ] && [ "$((p1 - p0))" -gt 0 ]; then
        wpp="$(awk -v w="$((w1 - w0))" -v p="$((p1 - p0))" 'BEGIN { printf "%.4f", w / p }')"
    fi
    printf '%s %s %s %s %s %s %s %s\n' "$side" "$scenario" "$round" "$pps" "$wpp" "$lost" "$cpu" "$csw" >>"$OUT/figures.txt"
    printf '%-6s %-5s round %s: %8.0f publishes/s  server CPU %s µs/publish  context switches/publish %s  wake-ups/publish %s  lost+failed %s\n' \
        "$side" "$scenario" "$round" "$pps" "$cpu" "$csw" "$wpp" "$lost"
}

: >"$OUT/figures.txt"
START_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
for round in $(seq 1 "$ROUNDS"); do
    for scenario in pub1 pub4; do
        for side in "${SIDES[@]}"; do run "$side" "$scenario" "$round"; done
    done
    run new batch "$round"
done

# The table: per side and scenario the median, the spread and every round.
table() {
    echo "| scenario | server | publishes/s (median) | spread (max-min)/median | rounds | server CPU µs/publish (rounds) | context switches/publish (rounds) | wake-ups/publish (rounds) |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    for scenario in pub1 pub4 batch; do
        for side in "${SIDES[@]}"; do
            awk -v s="$side" -v sc="$scenario" '$1 == s && $2 == sc { v[n++] = $4; w = w (w ? ", " : "") $5; c = c (c ? ", " : "") $7; x = x (x ? ", " : "") $8 }
                END {
                    if (n == 0) exit
                    for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
                    med = (n % 2) ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2
                    all = ""; for (i = 0; i < n; i++) all = all (i ? ", " : "") sprintf("%.0fk", v[i] / 1000)
                    printf "| %s | %s | %.0fk | %.0f %% | %s | %s | %s | %s |\n", sc, s, med / 1000, 100 * (v[n - 1] - v[0]) / med, all, c, x, w
                }' "$OUT/figures.txt"
        done
    done
}
TABLE="$(table)"
echo
echo "$TABLE"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "failed runs: ${FAILED[*]}"
fi
LOAD="$(uptime | sed 's/.*load average/load average/')"
{
    echo
    echo "## $START_DATE — publish throughput, 10 subscribers, ~100-byte messages: old vs new vs µWebSockets (bench/publish.sh)"
    echo
    echo "\`bench/publish.sh --old OLD --new NEW${UWS:+ --uws UWS} --rounds $ROUNDS$([ "$QUICK" = 1 ] && echo ' --quick')\`; old $(sha256sum "$OLD" | cut -c1-16), new $(sha256sum "$NEW" | cut -c1-16)${UWS:+, µWebSockets $(sha256sum "$UWS" | cut -c1-16)}; commit $(git_commit "$ROOT"); $LOAD at the end."
    echo "Rounds alternate old, new$([ -n "$UWS" ] && echo ', µWebSockets') per scenario; pub1/pub4: $MESSAGES publishes (64 in flight over 1/4 connections); batch: $BATCH_MESSAGES publishes, 1000 per \`POST /api/batch\`, 4 requests in flight. The publishes/s rounds are listed sorted, the other columns in round order."
    echo
    echo "$TABLE"
    [ "${#FAILED[@]}" -eq 0 ] || echo "Failed runs: ${FAILED[*]}"
} >>"$([ "$QUICK" = 1 ] && echo "$OUT/quick.md" || echo "$ROOT/bench/RESULTS.md")"
[ "${#FAILED[@]}" -eq 0 ]
