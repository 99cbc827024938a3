#!/usr/bin/env bash
# bench/history.sh — what channel history, recovery and merge windows cost, measured in one run on one gateway
# binary with bench/cluster_probe.rs (standalone, one node).
#
# Usage: bench/history.sh [--rounds N] [--subs N] [--messages N]
#   fanout    --subs subscribers (default 300), --messages publishes (default 20000) as fast as the API takes them,
#             alternately on a channel with history (h:probe, history_size 1000) and on one without (p:probe):
#             deliveries/s, the ratio history/plain (goal >= 0.9), node CPU
#   merge     the same subscribers at 1000 publishes/s for 5 s, on m:probe (merge_ms 20) and p:probe: frames,
#             deliveries/s, latency p50/p99, node CPU
#   recovery  1000 clients leave h:probe, 100 messages are published, all reconnect without and then with recover
# Environment: CARGO_TARGET_DIR (binaries in $CARGO_TARGET_DIR/release; build with
# `cargo build --release --bin wsgate --example cluster_probe`). Every process is started and killed by the probe.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
ROUNDS=3
SUBS=300
MESSAGES=20000
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="${2:?}"; shift ;;
        --subs) SUBS="${2:?}"; shift ;;
        --messages) MESSAGES="${2:?}"; shift ;;
        *) echo "history.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

PROBE="$TARGET_DIR/release/examples/cluster_probe"
WSGATE="$TARGET_DIR/release/wsgate"
CONFIG="$(mktemp --suffix=.toml)"
trap 'rm -f "$CONFIG"' EXIT
cat >"$CONFIG" <<'TOML'
[[channels.namespace]]
prefix = "h:"
history_size = 1000
history_ttl = 300
recover = true

[[channels.namespace]]
prefix = "m:"
merge_ms = 20
TOML

probe() { env -u WSGATE_BENCH "$PROBE" --wsgate "$WSGATE" --config "$CONFIG" --nodes 1 --standalone "$@"; }

for round in $(seq 1 "$ROUNDS"); do
    for channel in h:probe p:probe; do
        echo "== round $round fanout $channel"
        probe --channel "$channel" --subs "$SUBS" --messages "$MESSAGES" | grep -E "^(all|frames|node 0)"
    done
done
for round in $(seq 1 "$ROUNDS"); do
    for channel in m:probe p:probe; do
        echo "== round $round merge $channel (1000 publishes/s)"
        probe --channel "$channel" --subs "$SUBS" --messages 5000 --rate 1000 | grep -E "^(all|frames|node 0)"
    done
done
echo "== recovery"
probe --recovery --channel h:probe --subs 1000 --messages 100
