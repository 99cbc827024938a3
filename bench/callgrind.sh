#!/usr/bin/env bash
# bench/callgrind.sh — instructions a gateway build executes for a fixed, bounded load, counted by
# valgrind --tool=callgrind (instruction counts repeat on a noisy machine where timings do not).
#
# Usage: bench/callgrind.sh WSGATE_BINARY connect|fanout|publish|batch [OUT_FILE]
#   connect  3000 connections opened at 1000/s and held, then SIGTERM (handshake, idle and shutdown paths)
#   fanout   2000 subscribers, 200 publishes of 1 KiB, 4 in flight (the fan-out hot path): 400k deliveries
#   publish  10 subscribers, 20000 publishes of 100 B through POST /api/publish, 64 in flight over 1 connection
#            (the API's publish path, one request per publish): 200k deliveries
#   batch    the same 20000 publishes through POST /api/batch, 1000 per request, 4 requests in flight
# Prints the generator's counts and the program total; OUT_FILE (default bench/out/callgrind-SCENARIO.out) can be
# read with callgrind_annotate. One reactor thread, loopback only, bounded in count and time (~1 minute).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GW="${1:?usage: bench/callgrind.sh WSGATE_BINARY connect|fanout|publish|batch [OUT_FILE]}"
SCENARIO="${2:?usage: bench/callgrind.sh WSGATE_BINARY connect|fanout|publish|batch [OUT_FILE]}"
BENCH="${WSGATE_BENCH:-${CARGO_TARGET_DIR:-$ROOT/target}/release/wsgate-bench}"
mkdir -p "$ROOT/bench/out"
OUT="${3:-$ROOT/bench/out/callgrind-$SCENARIO.out}"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
# On epoll: valgrind cannot follow the kernel's writes into io_uring's shared rings, and a run there took 40 minutes
# instead of one. Builds older than the io_uring backend do not know the key: unset it for them (env -u).
export WSGATE_SERVER__IO_BACKEND="${WSGATE_SERVER__IO_BACKEND:-epoll}"
env -u WSGATE_BENCH valgrind --tool=callgrind --callgrind-out-file="$OUT" "$GW" --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 \
    --threads 1 >"$LOG" 2>&1 &
GW_PID=$!
for _ in $(seq 300); do grep -q "wsgate ready" "$LOG" && break; sleep 0.2; done
WS=$(grep -o "ws=[0-9.:]*" "$LOG" | head -1 | cut -d= -f2)
API=$(grep -o "api=[0-9.:]*" "$LOG" | head -1 | cut -d= -f2)
case "$SCENARIO" in
    connect) "$BENCH" connect --url "ws://$WS/ws" --api "http://$API" --conns 3000 --rate 1000 --duration 10 \
        --timeout 30 | tail -1 | jq -c '.results | {connected, failed}' ;;
    fanout) "$BENCH" fanout --url "ws://$WS/ws" --api "http://$API" --conns 2000 --rate 1000 --messages 200 \
        --size 1024 --inflight 4 --duration 60 --timeout 60 | tail -1 | jq -c '.results | {connected, deliveries, lost}' ;;
    publish) "$BENCH" fanout --url "ws://$WS/ws" --api "http://$API" --conns 10 --messages 20000 --size 100 \
        --inflight 64 --pub-conns 1 --duration 60 --timeout 60 | tail -1 | jq -c '.results | {connected, deliveries, lost}' ;;
    batch) "$BENCH" fanout --url "ws://$WS/ws" --api "http://$API" --conns 10 --messages 20000 --batch 1000 \
        --size 100 --inflight 4000 --pub-conns 1 --duration 60 --timeout 60 | tail -1 |
        jq -c '.results | {connected, deliveries, lost}' ;;
    *) echo "callgrind.sh: unknown scenario $SCENARIO" >&2; kill "$GW_PID"; exit 2 ;;
esac
kill -TERM "$GW_PID"
wait "$GW_PID" || true
callgrind_annotate "$OUT" 2>/dev/null | grep -m1 "PROGRAM TOTALS"
