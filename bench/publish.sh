#!/usr/bin/env bash
# bench/publish.sh — publish throughput with few subscribers per channel, and pushes to 10k distinct users: old
# wsgate vs new wsgate vs µWebSockets (optional), in one run, alternating.
#
# Usage: bench/publish.sh --old OLD_WSGATE --new NEW_WSGATE [--uws UWS_BENCH_SERVER] [--rounds N] [--only LIST]
#                         [--quick]
#   --uws PATH   the µWebSockets peer (/work/shared/peers/uws-bench: build it as its README says); skipped if absent
#   --rounds N   rounds (default 3); each round runs every side once per scenario, in the order old, new, uws
#   --only LIST  comma-separated scenarios (default: all): pub1,pub4,batch,users1,users4,users-batch
#   --quick      small numbers (a smoke test); recorded in bench/out/publish/quick.md only
# Environment: WSGATE_BENCH (generator binary); default ${CARGO_TARGET_DIR:-target}/release/wsgate-bench.
#
# Scenarios, all with 10 subscribers on the channel and ~100-byte messages (a 100-byte "data" object):
#   pub1     64 publishes in flight, pipelined over 1 API connection (POST /api/publish): publishes/s
#   pub4     the same over 4 API connections
#   batch    POST /api/batch with 1000 publishes per request, 4 requests in flight, 1 connection (wsgate only;
#            a build without the batch endpoint shows as failed publishes): publishes/s
# and with 10 000 connected users instead (wsgate-bench users: one connection per user, each authenticated with an
# HS256 token of its own, auth.mode = "jwt" with a random secret per run; push N goes to user N mod 10000; every
# user must get exactly its own pushes), ~100-byte data:
#   users1       64 pushes ({"user":"uN","data":...}) in flight over 1 API connection: pushes/s
#   users4       the same over 4 API connections
#   users-batch  POST /api/batch with 1000 user pushes per request, 4 requests in flight (wsgate only)
# µWebSockets has no users: there a user push is a publish to the channel "user:N", which only user N's connection
# subscribes to (wsgate-bench users --topics).
# Also the server's CPU time per publish (getrusage over the load phase / publishes: steadier than publishes/s on a
# shared machine), its context switches per publish (perf stat, if installed) and, for a wsgate with hand-over counters (/api/stats "handoff"), its wake-ups per publish,
# all three over the load phase only (from the generator's "connected" line on); deliveries/s, end-to-end latency
# p50/p99 and lost + failed + duplicated + misdelivered per run.
# Each run is bounded (--messages and --duration 4 s) against a fresh server. Output: a table of medians, spreads
# ((max-min)/median) and every round's figure on stdout, appended to bench/RESULTS.md with the exact command line
# and the binaries' sha256.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH="${WSGATE_BENCH:-$TARGET_DIR/release/wsgate-bench}"
OLD=""
NEW=""
UWS=""
ROUNDS=3
QUICK=0
ALL_SCENARIOS="pub1 pub4 batch users1 users4 users-batch"
ONLY="$ALL_SCENARIOS"
COMMAND_LINE="bench/publish.sh $*"
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
        --only) ONLY="${2:?}"; ONLY="${ONLY//,/ }"; shift ;;
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
for scenario in $ONLY; do
    case " $ALL_SCENARIOS " in *" $scenario "*) ;; *) die "--only: unknown scenario $scenario ($ALL_SCENARIOS)" ;; esac
done

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
USERS=10000
if [ "$QUICK" = 1 ]; then
    MESSAGES=20000
    BATCH_MESSAGES=100000
    USERS=1000
fi
# The users scenarios' gateways verify HS256 tokens signed with this; a fresh one per run of the script.
SECRET="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
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

# run SIDE SCENARIO ROUND: one bounded run; appends "SIDE SCENARIO ROUND PUBLISHES_PER_S WAKEUPS_PER_PUBLISH
# ERRORS SERVER_CPU_US_PER_PUBLISH CONTEXT_SWITCHES_PER_PUBLISH DELIVERIES_PER_S LATENCY_P50/P99_MS" to figures.txt.
run() {
    local side="$1" scenario="$2" round="$3" pid name="$2-$1-$3"
    local cmd=fanout args=(--size 100 --duration 4 --timeout 10 --settle-ms 1000)
    case "$scenario" in
        pub1) args+=(--conns 10 --inflight 64 --pub-conns 1 --messages "$MESSAGES") ;;
        pub4) args+=(--conns 10 --inflight 64 --pub-conns 4 --messages "$MESSAGES") ;;
        batch) args+=(--conns 10 --batch 1000 --inflight 4000 --pub-conns 1 --messages "$BATCH_MESSAGES") ;;
        users1) args+=(--conns "$USERS" --rate 5000 --inflight 64 --pub-conns 1 --messages "$MESSAGES") ;;
        users4) args+=(--conns "$USERS" --rate 5000 --inflight 64 --pub-conns 4 --messages "$MESSAGES") ;;
        users-batch)
            args+=(--conns "$USERS" --rate 5000 --batch 1000 --inflight 4000 --pub-conns 1 --messages "$BATCH_MESSAGES")
            ;;
    esac
    # GW_ARGS: extra flags of the gateway bench/lib.sh's start_gateway runs.
    # shellcheck disable=SC2034
    GW_ARGS=""
    case "$scenario" in
        users*)
            cmd=users
            if [ "$side" = uws ]; then
                args+=(--topics)
            else
                args+=(--jwt-secret "$SECRET")
                # shellcheck disable=SC2034
                GW_ARGS="--set auth.mode=jwt --set auth.hs256_secret=$SECRET"
            fi
            ;;
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
    local before after rc=0 perf_pid="" bench_pid
    "$BENCH" "$cmd" --label "$name" --url "ws://$WS_ADDR/ws" --api "http://$API_ADDR" --server-pid "$pid" "${args[@]}" \
        >"$OUT/$name.txt" 2>"$OUT/$name.progress" &
    bench_pid=$!
    # The load phase starts --settle-ms after the generator's "connected" line: count the server's wake-ups and
    # context switches from there, not over the 10k handshakes of the users scenarios.
    for _ in $(seq 1 600); do
        grep -q '^wsgate-bench: connected:' "$OUT/$name.progress" 2>/dev/null && break
        kill -0 "$bench_pid" 2>/dev/null || break
        sleep 0.05
    done
    before="$(handoff "$API_ADDR")"
    # The server's context switches over the load (perf stat, when installed): scheduler hand-offs per publish.
    if command -v perf >/dev/null; then
        perf stat -x, -e context-switches -p "$pid" -o "$OUT/$name.perf" &
        perf_pid=$!
    fi
    wait "$bench_pid" || rc=$?
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
    local pps lost cpu dps lat wpp="-" csw="-"
    if [ -s "$OUT/$name.perf" ]; then
        csw="$(awk -F, -v n="$(jq -r '.results.publish.published' <<<"$line")" \
            '$3 == "context-switches" && $1 ~ /^[0-9]+$/ && n > 0 { printf "%.3f", $1 / n }' "$OUT/$name.perf")"
        [ -n "$csw" ] || csw="-"
    fi
    pps="$(jq -r '.results.publish.publishes_per_s' <<<"$line")"
    cpu="$(jq -r '(1000 * .results.server_cpu_ms / .results.publish.published * 100 | round) / 100' <<<"$line")"
    lost="$(jq -r '(.results.lost + .results.publish.failed + .results.duplicated + (.results.misdelivered // 0))' <<<"$line")"
    dps="$(jq -r '.results.deliveries_per_s' <<<"$line")"
    lat="$(jq -r '"\(.results.latency_us.p50 / 100 | round / 10)/\(.results.latency_us.p99 / 100 | round / 10)"' <<<"$line")"
    read -r p0 w0 <<<"$before"
    read -r p1 w1 <<<"$after"
    if [ "$p0" != "-" ] && [ "$p1" != "-" ] && [ "$((p1 - p0))" -gt 0 ]; then
        wpp="$(awk -v w="$((w1 - w0))" -v p="$((p1 - p0))" 'BEGIN { printf "%.4f", w / p }')"
    fi
    printf '%s %s %s %s %s %s %s %s %s %s\n' "$side" "$scenario" "$round" "$pps" "$wpp" "$lost" "$cpu" "$csw" "$dps" "$lat" \
        >>"$OUT/figures.txt"
    printf '%-6s %-11s round %s: %8.0f publishes/s  %8.0f deliveries/s  latency p50/p99 %s ms  server CPU %s µs/publish  context switches/publish %s  wake-ups/publish %s  lost+failed+dup+misdelivered %s\n' \
        "$side" "$scenario" "$round" "$pps" "$dps" "$lat" "$cpu" "$csw" "$wpp" "$lost"
}

: >"$OUT/figures.txt"
START_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
# Before the run: the results section appended to RESULTS.md below would make the checkout look modified.
COMMIT="$(git_commit "$ROOT")"
START_LOAD="$(sed 's/^\([^ ]* [^ ]* [^ ]*\).*/\1/' /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
    for scenario in $ONLY; do
        for side in "${SIDES[@]}"; do
            # µWebSockets has no batch endpoint.
            case "$side/$scenario" in uws/batch | uws/users-batch) continue ;; esac
            run "$side" "$scenario" "$round"
        done
    done
done

# The table: per side and scenario the median, the spread and every round.
table() {
    echo "| scenario | server | publishes/s (median) | spread (max-min)/median | rounds | deliveries/s (median) | server CPU µs/publish (rounds) | context switches/publish (rounds) | wake-ups/publish (rounds) | latency p50/p99 ms (rounds) | lost+failed+dup+misdelivered (rounds) |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for scenario in $ONLY; do
        for side in "${SIDES[@]}"; do
            awk -v s="$side" -v sc="$scenario" '$1 == s && $2 == sc { k = n++; v[k] = $4; d[k] = $9; w = w (w ? ", " : "") $5; c = c (c ? ", " : "") $7; x = x (x ? ", " : "") $8; l = l (l ? ", " : "") $10; e = e (e ? ", " : "") $6 }
                function median(a,    i, j, t) {
                    for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                    return (n % 2) ? a[int(n / 2)] : (a[n / 2 - 1] + a[n / 2]) / 2
                }
                END {
                    if (n == 0) exit
                    med = median(v); dmed = median(d)
                    all = ""; for (i = 0; i < n; i++) all = all (i ? ", " : "") sprintf("%.0fk", v[i] / 1000)
                    printf "| %s | %s | %.0fk | %.0f %% | %s | %.0fk | %s | %s | %s | %s | %s |\n", sc, s, med / 1000, 100 * (v[n - 1] - v[0]) / med, all, dmed / 1000, c, x, w, l, e
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
    echo "## $START_DATE — publish throughput ($ONLY): old vs new vs µWebSockets (bench/publish.sh)"
    echo
    echo "\`$COMMAND_LINE\`; old $(sha256sum "$OLD" | cut -c1-16), new $(sha256sum "$NEW" | cut -c1-16)${UWS:+, µWebSockets $(sha256sum "$UWS" | cut -c1-16)}; commit $COMMIT; load average (1/5/15 min) $START_LOAD at the start, ${LOAD#load average: } at the end (a shared machine)."
    echo "Rounds alternate old, new$([ -n "$UWS" ] && echo ', µWebSockets') per scenario; pub1/pub4: 10 subscribers, up to $MESSAGES publishes of a 100-byte \`data\` (64 in flight over 1/4 connections); batch: up to $BATCH_MESSAGES publishes, 1000 per \`POST /api/batch\`, 4 requests in flight; users1/users4/users-batch: the same to $USERS connected users (JWT, one connection each), every push to one user (round robin), and for µWebSockets, which has no users, to $USERS channels \`user:N\` with one subscriber each. Each run is bounded by 4 s. The publishes/s rounds are listed sorted, the other columns in round order; CPU, context switches and wake-ups over the load phase."
    echo
    echo "$TABLE"
    [ "${#FAILED[@]}" -eq 0 ] || echo "Failed runs: ${FAILED[*]}"
} >>"$([ "$QUICK" = 1 ] && echo "$OUT/quick.md" || echo "$ROOT/bench/RESULTS.md")"
[ "${#FAILED[@]}" -eq 0 ]
