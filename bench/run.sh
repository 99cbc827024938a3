#!/usr/bin/env bash
# bench/run.sh — the standard wsgate benchmark suite, scaled to a 2-core machine (a few minutes in all).
#
# Builds nothing: run `cargo build --release --workspace` first (wsgate and wsgate-bench; without --workspace only
# wsgate is built). For every scenario it starts a fresh gateway on ephemeral loopback ports, reads the ports from its
# "wsgate ready ws=IP:PORT api=IP:PORT" line, runs wsgate-bench against it, and stops that gateway by its PID
# (SIGTERM, then SIGKILL after 15 s). Every load is bounded in count and time and targets 127.0.0.x only.
#
# Results: the human summaries on stdout and in bench/out/, one JSON line per scenario in bench/out/results.jsonl,
# a dated section appended to bench/RESULTS.md (earlier sections are kept) and bench/latency.svg (latest run).
#
# Usage: bench/run.sh [--quick] [--only NAME[,NAME...]] [--wait-quiet SECONDS]
#   --quick   small parameters (a smoke test, well under a minute); recorded in bench/out/quick-RESULTS.md and
#             bench/out/quick-latency.svg instead of bench/RESULTS.md / bench/latency.svg
#   --only    run only these scenarios: connect, fanout, fanout-paced, churn, echo, acks
#   --wait-quiet N   before each scenario wait up to N seconds for the machine to be at least 90% idle (a shared
#             machine's builds disturb the figures; every summary also reports what other processes used)
# Environment: WSGATE (gateway binary), WSGATE_BENCH (generator binary); default ${CARGO_TARGET_DIR:-target}/release.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
GW="${WSGATE:-$TARGET_DIR/release/wsgate}"
BENCH="${WSGATE_BENCH:-$TARGET_DIR/release/wsgate-bench}"
OUT="$ROOT/bench/out"
QUICK=0
ONLY=""
WAIT_QUIET=0

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) ONLY="${2:?--only needs a list}"; shift ;;
        --wait-quiet) WAIT_QUIET="${2:?--wait-quiet needs seconds}"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

for bin in "$GW" "$BENCH"; do
    if [ ! -x "$bin" ]; then
        echo "run.sh: $bin not found; run 'cargo build --release --workspace' first (or set WSGATE / WSGATE_BENCH)" >&2
        exit 2
    fi
done

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
PROG=run.sh

# Identify what is measured now: another build may replace the binary while the suite runs.
COMMIT="$(git_commit "$ROOT")"
gw_id() { echo "sha256 $(sha256sum "$GW" | cut -c1-12), built $(date -u -r "$GW" '+%Y-%m-%d %H:%M:%SZ')"; }
GW_ID="$(gw_id)"

mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
FAILED=()

trap stop_gateway EXIT
trap 'stop_gateway; exit 130' INT TERM

wanted() {
    [ -z "$ONLY" ] && return 0
    case ",$ONLY," in *",$1,"*) return 0 ;; esac
    return 1
}

# run NAME SCENARIO PATH ARGS...: fresh gateway, one wsgate-bench run, gateway stopped (bench/lib.sh).
run() {
    wanted "$1" || return 0
    run_scenario "$@"
}

if [ "$QUICK" -eq 1 ]; then
    MD="$OUT/quick-RESULTS.md"
    SVG="$OUT/quick-latency.svg"
    NOTE="bench/run.sh --quick"
    run connect connect /ws --conns 2000 --procs 2 --rate 2000 --duration 10 --timeout 5
    run fanout fanout /ws --conns 2000 --procs 2 --messages 50 --size 1024 --inflight 8 --duration 10 --timeout 5
    run fanout-paced fanout /ws --conns 2000 --procs 2 --messages 20 --interval-ms 50 --size 1024 --duration 10 --timeout 5
    run churn churn /ws --conns 1000 --procs 2 --churn-rate 100 --messages 100 --interval-ms 20 --duration 5 --timeout 5
    run echo echo /echo --conns 100 --procs 2 --size 1024 --inflight 8 --duration 3 --timeout 5
    run acks acks /ws --conns 2000 --procs 2 --messages 5 --interval-ms 500 --duration 5 --timeout 5
else
    MD="$ROOT/bench/RESULTS.md"
    SVG="$ROOT/bench/latency.svg"
    # The TCP settings change these figures (the generator's sockets share the kernel): record them.
    NOTE="bench/run.sh; $(tcp_sysctls)"
    # 15000 connections: under the gateway's fd budget; two generator processes on two source addresses.
    run connect connect /ws --conns 15000 --procs 2 --source-ips 2 --rate 5000 --duration 30 --timeout 10
    # Handshakes/s: the same 15000 as fast as they can be opened (needs net.core.somaxconn above the burst, see
    # scripts/sysctl.sh, or the accept queue overflows and SYN retries dominate).
    run connect-burst connect /ws --conns 15000 --procs 2 --source-ips 2 --rate 40000 --duration 30 --timeout 10
    # Throughput: 300 publishes of 1 KiB through an 8-deep pipelined window (the reference setup: 15k subscribers on
    # channel bench). The API hands publishes to the reactors' bounded queues, so latency includes that queueing.
    run fanout fanout /ws --conns 15000 --procs 2 --source-ips 2 --rate 5000 --messages 300 --size 1024 \
        --inflight 8 --duration 30 --timeout 40
    # Latency at a light steady load: 5 publishes/s to the same audience (75k deliveries/s).
    run fanout-paced fanout /ws --conns 15000 --procs 2 --source-ips 2 --rate 5000 --messages 50 --size 1024 \
        --interval-ms 200 --duration 30 --timeout 15
    # Latency under load: 100 publishes/s (1.5M deliveries/s offered), publishes arrive during long flushes.
    run fanout-paced-high fanout /ws --conns 15000 --procs 2 --source-ips 2 --rate 5000 --messages 300 \
        --size 1024 --interval-ms 10 --duration 30 --timeout 40
    # Churn: 10000 subscribers, 200 leave and rejoin per second, 10 publishes/s of 1 KiB for 20 s.
    run churn churn /ws --conns 10000 --procs 2 --source-ips 2 --rate 5000 --churn-rate 200 --messages 200 \
        --interval-ms 100 --size 1024 --duration 20 --timeout 15
    # Echo: 1000 connections with 8 messages of 1 KiB outstanding each.
    run echo echo /echo --conns 1000 --procs 2 --rate 5000 --size 1024 --inflight 8 --duration 15 --timeout 10
    # The seed workload scaled down: push to all 15000 every second (instead of 5 s), each answers with a receipt.
    run acks acks /ws --conns 15000 --procs 2 --source-ips 2 --rate 5000 --messages 15 --interval-ms 1000 \
        --size 256 --duration 30 --timeout 15
fi

GW_NOTE="$GW ($GW_ID) --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --echo-path /echo, fresh per scenario"
if [ "$(gw_id)" != "$GW_ID" ]; then
    echo "run.sh: WARNING: $GW was rebuilt during the suite; the results mix two builds" >&2
    GW_NOTE="$GW_NOTE; WARNING: the binary was rebuilt during the suite (now $(gw_id))"
fi
if [ -s "$RESULTS" ]; then
    "$BENCH" report --results "$RESULTS" --md "$MD" --svg "$SVG" --commit "$COMMIT" --note "$NOTE" \
        --gateway "$GW_NOTE"
else
    echo "run.sh: no results to record" >&2
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "run.sh: failed scenarios:" >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
