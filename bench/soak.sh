#!/usr/bin/env bash
# bench/soak.sh — a long-running mixed load against one wsgate (or two, with --cluster) that fails on leaks, loss
# and crashes.
#
# Usage: bench/soak.sh [--minutes N] [--quick] [--cluster]
#   --minutes N  length of the load (default 30; 2 with --quick)
#   --quick      a smoke run: 2 minutes, recorded in bench/out/soak/ only (no bench/RESULTS.md section)
#   --cluster    two gateway nodes on a real redis-server (started here on a free loopback port) that is
#                restarted (SIGTERM, 2 s down, data lost) every 3 minutes (every 40 s with --quick)
#
# The load, all at once and each bounded in count and time (about 1600 connections in all, loopback only):
#   churn    `wsgate-bench churn`: 1000 subscribers of soak-churn, 20 leave and rejoin per second, 10 publishes/s
#            of 512 B (rounds of 5 min, 1 min with --quick); counts what a subscriber missed while connected
#   fanout   `wsgate-bench fanout`: 500 subscribers of soak-fanout, 5 publishes/s of 1 KiB (rounds of 1 min: all
#            500 connect, receive, leave); with --cluster on node 2, publishing through node 2's API
#   users    bench/soak.py users: 40 authenticated users (HS256 tokens) that stay 5-40 s, leave and come back;
#            20 pushes/s via POST /api/publish {"user": ...} to the connected ones, each checked for loss,
#            duplicates and order; with --cluster every second user is on node 2 (cross-node, through Redis)
#   swarm    bench/soak.py swarm: 4 workers of misbehaving clients (fragmenting, not reading, closing mid-frame,
#            trickling, oversize, invalid UTF-8, protocol violations, subscribe churn, slow subscribers, silent),
#            each ending tallied against the close code docs/PROTOCOL.md documents
# Every 10 s it samples each gateway's RSS (/proc/PID/status VmRSS), open fds (/proc/PID/fd), threads and the
# gauges/counters of GET /api/stats (connections, channels, lent read buffers, slow-consumer closes, ...; in cluster
# mode Redis connectivity, outbox and upstream queue sizes, drops) into bench/out/soak/soak.csv.
#
# It FAILS (exit 1, reasons printed) when: after a warm-up (60 s, a quarter of the run if shorter), the last third's
# maximum RSS exceeds the first third's maximum by more than 20% + 32 MiB, or the maximum fd count by more than 10%
# + 128; after the load the gateway does not return to 0 connections / 0 lent read buffers, or holds more than 8
# fds over its count before the load; a well-behaved subscriber or user lost, duplicated or reordered a message
# while connected (on its own node); a misbehaving client saw neither its documented close code nor a TCP close;
# a load round aborted; a gateway exited or logged a panic. (Cross-node user pushes lost across Redis restarts are
# reported, not judged.)
#
# Output: bench/out/soak/ (git-ignored): soak.csv, soak.svg (RSS and fds over time), summary.txt, bench.jsonl
# (one wsgate-bench JSON line per round), users.jsonl, swarm.jsonl, logs. A full (non-quick) run also appends a
# dated section to bench/RESULTS.md and writes bench/soak.svg (the latest full run).
# Environment: WSGATE, WSGATE_BENCH (binaries; default ${CARGO_TARGET_DIR:-target}/release, built with
# `cargo build --release --workspace` if missing). Only the processes started here are ever signalled (by PID).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
GW="${WSGATE:-$TARGET_DIR/release/wsgate}"
BENCH="${WSGATE_BENCH:-$TARGET_DIR/release/wsgate-bench}"
OUT="$ROOT/bench/out/soak"
HELPER="$ROOT/bench/soak.py"
MINUTES=""
QUICK=0
CLUSTER=0
ARGS="$*"

while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES="${2:?--minutes needs a number}"; shift ;;
        --quick) QUICK=1 ;;
        --cluster) CLUSTER=1 ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$MINUTES" ]; then
    if [ "$QUICK" -eq 1 ]; then MINUTES=2; else MINUTES=30; fi
fi
if ! [[ "$MINUTES" =~ ^[0-9]+$ ]] || [ "$MINUTES" -lt 1 ] || [ "$MINUTES" -gt 1440 ]; then
    echo "soak.sh: --minutes must be a whole number from 1 to 1440" >&2
    exit 2
fi
DURATION=$((MINUTES * 60))
WARMUP=$((DURATION / 4 < 60 ? DURATION / 4 : 60))

# The load (see the header).
CHURN_CONNS=1000 CHURN_RATE=20 CHURN_INTERVAL_MS=100 CHURN_SIZE=512
FANOUT_CONNS=500 FANOUT_INTERVAL_MS=200 FANOUT_SIZE=1024 FANOUT_ROUND=60
USERS=40 USER_RATE=20
SWARM_WORKERS=4
# Gateway limits the swarm provokes (small, so oversize / slow-consumer / idle endings come quickly).
MAX_MESSAGE=65536 MAX_OUTBOUND=1048576 PING_INTERVAL=10 IDLE_TIMEOUT=20
if [ "$QUICK" -eq 1 ]; then
    CHURN_ROUND=60 REDIS_RESTART_EVERY=40
else
    CHURN_ROUND=300 REDIS_RESTART_EVERY=180
fi
SAMPLE_EVERY=10

for tool in python3 curl; do
    command -v "$tool" >/dev/null || { echo "soak.sh: $tool is needed" >&2; exit 2; }
done
if [ "$CLUSTER" -eq 1 ] && ! command -v redis-server >/dev/null; then
    echo "soak.sh: --cluster needs redis-server (apt-get install -y redis-server)" >&2
    exit 2
fi
if [ ! -x "$GW" ] || [ ! -x "$BENCH" ]; then
    echo "soak.sh: building the release binaries once (cargo build --release --workspace)"
    (cd "$ROOT" && cargo build --release --workspace)
fi
for bin in "$GW" "$BENCH"; do
    [ -x "$bin" ] || { echo "soak.sh: $bin not found (set WSGATE / WSGATE_BENCH)" >&2; exit 2; }
done

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
PROG=soak.sh
COMMIT="$(git_commit "$ROOT")"

mkdir -p "$OUT"
rm -f "$OUT"/soak.csv "$OUT"/soak.svg "$OUT"/summary.txt "$OUT"/*.jsonl "$OUT"/*.log "$OUT"/*.txt \
    "$OUT"/round-*.out
CSV="$OUT/soak.csv"
EVENTS="$OUT/events.txt"
IDLE="$OUT/idle.txt"
ROUND_FAILURES="$OUT/round-failures.txt"
: >"$EVENTS"
: >"$IDLE"
: >"$ROUND_FAILURES"

SECRET="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
NODE_NAMES=()
NODE_PIDS=()
NODE_WS=()
NODE_API=()
JOB_PIDS=()
REDIS_PID=""
REDIS_PORT=""

# --- processes we start, and how they are stopped (by PID only) ---------------------------------------------------


stop_jobs() {
    # Each load job runs in its own process group (set -m): the group holds the job's loop and its current
    # wsgate-bench / soak.py, nothing else.
    local pid
    for pid in "${JOB_PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in "${JOB_PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    JOB_PIDS=()
}

cleanup() {
    stop_jobs
    local i
    for i in "${!NODE_PIDS[@]}"; do
        stop_pid "${NODE_PIDS[$i]}" "gateway ${NODE_NAMES[$i]}"
    done
    NODE_PIDS=()
    [ -z "$REDIS_PID" ] || stop_pid "$REDIS_PID" redis-server
    REDIS_PID=""
}
trap cleanup EXIT
trap 'echo "soak.sh: interrupted" >&2; exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_redis() {
    mkdir -p "$OUT/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --protected-mode no \
        --dir "$OUT/redis" >>"$OUT/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 100); do
        [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null || true)" = PONG ] && return 0
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "soak.sh: redis-server did not come up on port $REDIS_PORT (see $OUT/redis.log)" >&2
    return 1
}

GW_ARGS=(--listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --echo-path /echo
    --set auth.mode=jwt --set "auth.hs256_secret=$SECRET"
    --set "ws.max_message_size=$MAX_MESSAGE" --set "ws.max_outbound_bytes=$MAX_OUTBOUND"
    --set "ws.ping_interval=$PING_INTERVAL" --set "ws.idle_timeout=$IDLE_TIMEOUT")

start_node() { # NAME [ARGS...]
    local name="$1" log="$OUT/gateway-$1.log" line="" pid
    shift
    env -u WSGATE_BENCH "$GW" "${GW_ARGS[@]}" "$@" 2>"$log" &  # WSGATE_* variables are gateway config
    pid=$!
    NODE_NAMES+=("$name")
    NODE_PIDS+=("$pid")
    for _ in $(seq 1 300); do
        line="$(grep -m1 '^wsgate ready ' "$log" || true)"
        [ -n "$line" ] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "soak.sh: gateway $name exited before it was ready:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    [ -n "$line" ] || { echo "soak.sh: no ready line from gateway $name within 30 s" >&2; return 1; }
    NODE_WS+=("$(sed -n 's/^wsgate ready ws=\([^ ]*\) api=\([^ ]*\).*$/\1/p' <<<"$line")")
    NODE_API+=("$(sed -n 's/^wsgate ready ws=\([^ ]*\) api=\([^ ]*\).*$/\2/p' <<<"$line")")
    echo "soak.sh: gateway $name pid $pid ready: ws=${NODE_WS[-1]} api=${NODE_API[-1]}"
}

fds_of() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# --- start ---------------------------------------------------------------------------------------------------------

if [ "$CLUSTER" -eq 1 ]; then
    REDIS_PORT="$(free_port)"
    start_redis
    echo "soak.sh: redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT"
    start_node node1 --set "cluster.redis=redis://127.0.0.1:$REDIS_PORT/"
    start_node node2 --set "cluster.redis=redis://127.0.0.1:$REDIS_PORT/"
else
    start_node gateway
fi
sleep 2 # let the bridge connect (cluster) before the pre-load fd count
BASE_FDS=()
for pid in "${NODE_PIDS[@]}"; do BASE_FDS+=("$(fds_of "$pid")"); done

WS_LIST="$(IFS=,; echo "${NODE_WS[*]}")"
LAST=$((${#NODE_NAMES[@]} - 1))
TOKEN="$(python3 "$HELPER" token --secret "$SECRET" --sub soak-bench --ttl $((DURATION + 3600)))"
START=$(date +%s)
END=$((START + DURATION))
echo "soak.sh: $MINUTES min of load ($([ "$QUICK" -eq 1 ] && echo quick || echo full), $([ "$CLUSTER" -eq 1 ] \
    && echo "cluster of ${#NODE_NAMES[@]} nodes, redis restarted every ${REDIS_RESTART_EVERY}s" || echo standalone)); \
sampling every ${SAMPLE_EVERY}s into $CSV"

# --- the load, as background jobs in their own process groups -----------------------------------------------------

# bench_round NAME SCENARIO ARGS...: one bounded wsgate-bench run; its JSON line goes to bench.jsonl.
bench_round() {
    local name="$1" scenario="$2" out="$OUT/round-$1.out" rc=0
    shift 2
    "$BENCH" "$scenario" --label "$name" --quiet "$@" >"$out" 2>>"$OUT/$name.progress" || rc=$?
    tail -n 1 "$out" | grep '^{' >>"$OUT/bench.jsonl" || true
    grep -v '^{' "$out" >>"$OUT/$name.txt" || true
    if [ "$rc" -ne 0 ]; then
        echo "$name at $(($(date +%s) - START))s: wsgate-bench $scenario exited with $rc (see $OUT/$name.progress)" \
            >>"$ROUND_FAILURES"
    fi
}

churn_loop() {
    local left secs
    while true; do
        left=$((END - $(date +%s)))
        { [ "$left" -ge 20 ] && kill -0 "${NODE_PIDS[0]}" 2>/dev/null; } || break
        secs=$((left < CHURN_ROUND ? left : CHURN_ROUND))
        secs=$((secs - 12)) # connection phase and stragglers fit in the round
        bench_round churn churn --url "ws://${NODE_WS[0]}/ws?token=$TOKEN" --api "http://${NODE_API[0]}" \
            --server-pid "${NODE_PIDS[0]}" --channel soak-churn --conns "$CHURN_CONNS" --procs 1 --rate 1000 --churn-rate "$CHURN_RATE" \
            --messages $((secs * 1000 / CHURN_INTERVAL_MS)) --interval-ms "$CHURN_INTERVAL_MS" \
            --size "$CHURN_SIZE" --duration "$secs" --timeout 10
    done
}

fanout_loop() {
    local left secs
    while true; do
        left=$((END - $(date +%s)))
        { [ "$left" -ge 20 ] && kill -0 "${NODE_PIDS[$LAST]}" 2>/dev/null; } || break
        secs=$((left < FANOUT_ROUND ? left : FANOUT_ROUND))
        secs=$((secs - 8))
        bench_round fanout fanout --url "ws://${NODE_WS[$LAST]}/ws?token=$TOKEN" --api "http://${NODE_API[$LAST]}" \
            --server-pid "${NODE_PIDS[$LAST]}" --channel soak-fanout --conns "$FANOUT_CONNS" --procs 1 --rate 1000 \
            --messages $((secs * 1000 / FANOUT_INTERVAL_MS)) --interval-ms "$FANOUT_INTERVAL_MS" \
            --size "$FANOUT_SIZE" --duration "$secs" --timeout 10
    done
}

users_job() {
    local extra=()
    [ "$CLUSTER" -eq 1 ] && extra=(--cluster)
    python3 "$HELPER" users --ws "$WS_LIST" --api "${NODE_API[0]}" --secret "$SECRET" --users "$USERS" \
        --rate "$USER_RATE" --duration "$DURATION" "${extra[@]}" >"$OUT/users.out" 2>"$OUT/users.log" || \
        echo "users: soak.py users exited with $? (see $OUT/users.log)" >>"$ROUND_FAILURES"
    tail -n 1 "$OUT/users.out" | grep '^{' >>"$OUT/users.jsonl" || true
}

swarm_job() {
    python3 "$HELPER" swarm --ws "$WS_LIST" --api "${NODE_API[0]}" --secret "$SECRET" --workers "$SWARM_WORKERS" \
        --duration "$((DURATION - 10))" --max-message "$MAX_MESSAGE" --max-outbound "$MAX_OUTBOUND" \
        --idle-timeout "$IDLE_TIMEOUT" >"$OUT/swarm.out" 2>"$OUT/swarm.log" || \
        echo "swarm: soak.py swarm exited with $? (see $OUT/swarm.log)" >>"$ROUND_FAILURES"
    tail -n 1 "$OUT/swarm.out" | grep '^{' >>"$OUT/swarm.jsonl" || true
}

set -m # every background job below gets its own process group (stopped as a group by stop_jobs)
churn_loop &
JOB_PIDS+=($!)
fanout_loop &
JOB_PIDS+=($!)
users_job &
JOB_PIDS+=($!)
swarm_job &
JOB_PIDS+=($!)
set +m

# --- sampling, Redis restarts, watching the gateways ---------------------------------------------------------------

sample() {
    local specs=() i
    for i in "${!NODE_NAMES[@]}"; do specs+=(--node "${NODE_NAMES[$i]}=${NODE_PIDS[$i]}@${NODE_API[$i]}"); done
    python3 "$HELPER" sample --csv "$CSV" --start "$START" "${specs[@]}" || true
}

jobs_running() {
    local pid
    for pid in "${JOB_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done
    return 1
}

DIED=""
NEXT_SAMPLE=$START
NEXT_RESTART=$((START + REDIS_RESTART_EVERY))
HARD_END=$((END + 150)) # the last rounds' stragglers and close handshakes are bounded well inside this
while true; do
    now=$(date +%s)
    if [ "$now" -ge "$NEXT_SAMPLE" ]; then
        sample
        NEXT_SAMPLE=$((NEXT_SAMPLE + SAMPLE_EVERY))
    fi
    for i in "${!NODE_PIDS[@]}"; do
        if ! kill -0 "${NODE_PIDS[$i]}" 2>/dev/null; then
            DIED="gateway ${NODE_NAMES[$i]} (pid ${NODE_PIDS[$i]}) exited during the run at $((now - START))s (see $OUT/gateway-${NODE_NAMES[$i]}.log)"
        fi
    done
    if [ -n "$DIED" ]; then
        echo "soak.sh: FAIL: $DIED" >&2
        tail -n 20 "$OUT"/gateway-*.log >&2 || true
        sample
        break
    fi
    if [ "$CLUSTER" -eq 1 ] && [ "$now" -ge "$NEXT_RESTART" ] && [ "$now" -lt $((END - 30)) ]; then
        echo "soak.sh: $((now - START))s: restarting redis-server (down for 2 s, data lost)"
        echo "$((now - START)) redis restart" >>"$EVENTS"
        stop_pid "$REDIS_PID" redis-server
        REDIS_PID=""
        sleep 2
        start_redis
        NEXT_RESTART=$((NEXT_RESTART + REDIS_RESTART_EVERY))
    fi
    if [ "$now" -ge "$END" ] && ! jobs_running; then
        break
    fi
    if [ "$now" -ge "$HARD_END" ]; then
        echo "soak.sh: the load did not end within 150 s of its deadline; stopping it" >&2
        echo "the load did not end within 150 s of its deadline" >>"$ROUND_FAILURES"
        break
    fi
    sleep 1
done
stop_jobs

# --- back to idle? --------------------------------------------------------------------------------------------------

if [ -z "$DIED" ]; then
    for i in "${!NODE_NAMES[@]}"; do
        echo "${NODE_NAMES[$i]} ${BASE_FDS[$i]} $(python3 "$HELPER" idle --api "${NODE_API[$i]}" \
            --pid "${NODE_PIDS[$i]}" --timeout 30)" >>"$IDLE"
    done
    sample
fi
EXTRA=()
[ -z "$DIED" ] || EXTRA+=(--extra-failure "$DIED")
for i in "${!NODE_NAMES[@]}"; do
    if grep -q 'panicked' "$OUT/gateway-${NODE_NAMES[$i]}.log"; then
        EXTRA+=(--extra-failure "gateway ${NODE_NAMES[$i]} logged a panic (see $OUT/gateway-${NODE_NAMES[$i]}.log)")
    fi
done
cleanup

# --- judge and record -----------------------------------------------------------------------------------------------

if [ "$CLUSTER" -eq 1 ]; then
    MODE="cluster: ${#NODE_NAMES[@]} gateway nodes, redis-server restarted every ${REDIS_RESTART_EVERY}s"
else
    MODE="standalone gateway"
fi
PARAMS="$MINUTES min, $MODE"
LOAD="churn $CHURN_CONNS subscribers, $CHURN_RATE/s leave and rejoin, $((1000 / CHURN_INTERVAL_MS)) publishes/s of \
$CHURN_SIZE B (rounds of ${CHURN_ROUND}s); fanout $FANOUT_CONNS subscribers, $((1000 / FANOUT_INTERVAL_MS)) publishes/s \
of $FANOUT_SIZE B (rounds of ${FANOUT_ROUND}s$([ "$CLUSTER" -eq 1 ] && echo ", on node2")); $USERS JWT users staying 5-40 s, \
$USER_RATE user pushes/s$([ "$CLUSTER" -eq 1 ] && echo ", every second user on node2"); $SWARM_WORKERS workers of \
misbehaving clients; $(tcp_sysctls)"
GW_NOTE="$GW (sha256 $(sha256sum "$GW" | cut -c1-12)) ${GW_ARGS[*]//$SECRET/SECRET}"
MD=""
SVG="$OUT/soak.svg"
FIN=(--svg "$SVG" --svg-link soak.svg)
if [ "$QUICK" -eq 0 ]; then
    MD="$ROOT/bench/RESULTS.md"
    FIN=(--svg "$ROOT/bench/soak.svg" --svg-link soak.svg)
fi
echo
echo "=== soak: $PARAMS ==="
rc=0
python3 "$HELPER" finish --csv "$CSV" --bench "$OUT/bench.jsonl" --users "$OUT/users.jsonl" \
    --swarm "$OUT/swarm.jsonl" --idle "$IDLE" --events "$EVENTS" --round-failures "$ROUND_FAILURES" \
    "${FIN[@]}" --summary "$OUT/summary.txt" --md "$MD" --warmup "$WARMUP" \
    --expect-churn --expect-fanout --expect-users --expect-swarm "${EXTRA[@]}" \
    --params="$PARAMS" --args="$ARGS" --commit="$COMMIT" --gateway="$GW_NOTE" --load="$LOAD" || rc=$?
[ "$QUICK" -eq 1 ] || cp "$ROOT/bench/soak.svg" "$SVG"
echo "soak.sh: CSV $CSV, chart $SVG, summary $OUT/summary.txt$([ -n "$MD" ] && echo ", section appended to $MD")"
if [ "$rc" -ne 0 ]; then
    echo "soak.sh: FAILED (reasons above)" >&2
fi
exit "$rc"
