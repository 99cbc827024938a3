#!/usr/bin/env bash
# TLS figures for bench/RESULTS.md (issue 5), next to the plaintext ones measured the same way:
#   1. user-space RSS per idle connection: server VmRSS with BASE idle connections, then BASE+N; the slope
#      (delta / N) excludes fixed costs (threads, scratch buffers, pools). Connections are upgraded WebSockets
#      subscribed to one channel; with TLS the handshake is complete and the session idle.
#   2. encryption per record (examples/tls_load.rs `encrypt`): the gateway's Session::encrypt in memory.
#   3. fan-out: SUBS subscribers of one channel, MSGS small publishes (~90-byte frames); deliveries per second
#      (wall, client included) and the server's CPU time per delivery (utime+stime from /proc, the figure to
#      compare). "pipelined" sends all publishes at once (many frames per write, small frames share a TLS
#      record); "paced" one per millisecond (one frame, and with TLS one record, per write: the common case).
# Loopback only; everything is bounded; only the PIDs started here are signalled.
# Usage: bench/tls_memory.sh            (env: N=10000 BASE=1000 SUBS=1000 MSGS=1000 THREADS=2)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
BASE=${BASE:-1000}
SUBS=${SUBS:-1000}
MSGS=${MSGS:-1000}
THREADS=${THREADS:-2}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin wsgate --example tls_load
BIN=$TARGET/release/wsgate
LOAD=$TARGET/release/examples/tls_load

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
"$LOAD" cert "$WORK"
TLS_ARGS=(--set "tls.cert=$WORK/cert.pem" --set "tls.key=$WORK/key.pem")

# start_server LABEL [ARGS...]: sets SERVER (pid), ADDR (client listener), API.
start_server() {
    local log="$WORK/server-$1-$RANDOM.log"
    shift
    "$BIN" --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --threads "$THREADS" \
        --set ws.ping_interval=3600 --set ws.idle_timeout=7200 --set log.level=warn "$@" 2>"$log" &
    SERVER=$!
    PIDS+=("$SERVER")
    local line=""
    for _ in $(seq 200); do
        line=$(grep -m1 '^wsgate ready' "$log" 2>/dev/null) && break
        sleep 0.1
    done
    [ -n "$line" ] || { echo "server did not start" >&2; cat "$log" >&2; exit 1; }
    ADDR=$(sed -E 's/.* wss?=([0-9.:]+).*/\1/' <<<"$line")
    API=$(sed -E 's/.* api=([0-9.:]+).*/\1/' <<<"$line")
}
stop_server() {
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
TICK=$(getconf CLK_TCK)

# hold_idle COUNT [--tls CERT]: opens COUNT idle connections in a client that holds them until its stdin (a
# fifo) closes; returns once they are all open. Sets HOLDER (pid) and HOLD_FD.
hold_idle() {
    local fifo="$WORK/fifo-$RANDOM"
    mkfifo "$fifo"
    "$LOAD" idle "$ADDR" "$@" <"$fifo" >"$fifo.out" &
    HOLDER=$!
    PIDS+=("$HOLDER")
    exec {HOLD_FD}>"$fifo"
    for _ in $(seq 1200); do
        grep -q '^holding' "$fifo.out" && return
        kill -0 "$HOLDER" 2>/dev/null || { echo "load client failed" >&2; exit 1; }
        sleep 0.1
    done
    echo "timed out opening connections" >&2
    exit 1
}

idle_case() {
    local label=$1
    shift
    start_server "idle-$label" "$@"
    local tls=()
    [ "$label" = tls ] && tls=(--tls "$WORK/cert.pem")
    local r0
    r0=$(rss_kib)
    hold_idle "$BASE" "${tls[@]}"
    local h1=$HOLDER f1=$HOLD_FD
    sleep 1
    local r1
    r1=$(rss_kib)
    hold_idle "$N" "${tls[@]}"
    local h2=$HOLDER f2=$HOLD_FD
    sleep 2
    local r2
    r2=$(rss_kib)
    local conns
    conns=$(curl -s "http://$API/api/stats" | sed -E 's/.*"totals":\{[^}]*"connections":([0-9]+).*/\1/')
    exec {f1}>&- {f2}>&-
    wait "$h1" "$h2" 2>/dev/null || true
    stop_server
    awk -v l="$label" -v r0="$r0" -v r1="$r1" -v r2="$r2" -v n="$N" -v b="$BASE" -v c="$conns" 'BEGIN {
        printf "idle %-5s connections=%d rss_start=%d KiB rss_%d=%d KiB rss_%d=%d KiB per_connection=%.2f KiB\n",
            l, c, r0, b, r1, b + n, r2, (r2 - r1) / n }'
}

# wait_line FILE REGEX PID: waits (bounded, 300 s) until FILE has a line matching REGEX.
wait_line() {
    for _ in $(seq 30000); do
        grep -q "$2" "$1" 2>/dev/null && return
        kill -0 "$3" 2>/dev/null || { grep -q "$2" "$1" 2>/dev/null && return; echo "load client failed" >&2; exit 1; }
        sleep 0.01
    done
    echo "timed out waiting for $2" >&2
    exit 1
}

fanout_case() {
    local label=$1 mode=$2
    shift 2
    start_server "fanout-$label" "$@"
    local tls=()
    [ "$label" = tls ] && tls=(--tls "$WORK/cert.pem")
    local paced=()
    [ "$mode" = paced ] && paced=(--paced)
    local fifo="$WORK/fan-$RANDOM" out
    out="$fifo.out"
    mkfifo "$fifo"
    "$LOAD" fanout "$ADDR" "$API" "$SUBS" "$MSGS" "${tls[@]}" "${paced[@]}" <"$fifo" >"$out" &
    local fan=$!
    PIDS+=("$fan")
    local go_fd
    exec {go_fd}>"$fifo"
    wait_line "$out" '^subscribed' "$fan"
    local c0
    c0=$(cpu_ticks)
    echo go >&"$go_fd"
    wait_line "$out" '^deliveries' "$fan"
    local c1
    c1=$(cpu_ticks)
    exec {go_fd}>&-
    wait "$fan" 2>/dev/null || true
    local line
    line=$(grep '^deliveries' "$out")
    stop_server
    local d s
    d=$(sed -E 's/deliveries=([0-9]+).*/\1/' <<<"$line")
    s=$(sed -E 's/.*seconds=([0-9.]+).*/\1/' <<<"$line")
    awk -v l="$label" -v m="$mode" -v d="$d" -v s="$s" -v c="$((c1 - c0))" -v t="$TICK" 'BEGIN {
        printf "fanout %-9s %-5s deliveries=%d wall=%.2f s rate=%.0f/s server_cpu=%.2f s server_cpu_per_delivery=%.2f us\n",
            m, l, d, s, d / s, c / t, c / t * 1e6 / d }'
}

echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cpus; N=$N BASE=$BASE SUBS=$SUBS MSGS=$MSGS THREADS=$THREADS"
idle_case plain
idle_case tls "${TLS_ARGS[@]}"
# The per-record encryption the reactor adds per TLS delivery, in memory (no syscalls, no scheduler noise).
for size in 95 1000 16000; do
    "$LOAD" encrypt "$WORK" "$size" 200000
done
for mode in pipelined paced; do
    fanout_case plain "$mode"
    fanout_case tls "$mode" "${TLS_ARGS[@]}"
done
