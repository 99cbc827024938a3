#!/usr/bin/env bash
# bench/compare.sh — old vs new wsgate side by side in one run, with one wsgate-bench binary for every run.
#
# Usage: bench/compare.sh --old PATH_TO_OLD_WSGATE --new PATH_TO_NEW_WSGATE [--rounds N] [--quick] [--only LIST]
#                         [--wait-quiet SECONDS] [--old-args FLAGS] [--new-args FLAGS]
#   --rounds N   rounds per scenario (default 3); a round runs old, then new, each against a fresh gateway
#   --quick      small parameters (a smoke test, ~20 s per round); recorded in bench/out/quick-compare.md only
#   --only LIST  comma-separated subset of: connect, fanout, fanout-paced, and the optional fanout-paced10,
#                fanout-64k, echo (1000 clients sending 1 KiB messages to /echo, 8 in flight each: the input path)
#   --wait-quiet N   before each run wait up to N seconds for the machine to be at least 90% idle
#   --old-args FLAGS, --new-args FLAGS   extra gateway flags per side, e.g. the same binary twice with
#                --old-args "--io-backend epoll" --new-args "--io-backend uring"
#   --netns      gateway and generator in two network namespaces joined by a veth pair (created for the run,
#                removed at exit; needs root): traffic crosses a device instead of loopback, where the kernel
#                copies zero-copy payloads anyway
# Environment: WSGATE_BENCH (generator binary); default ${CARGO_TARGET_DIR:-target}/release/wsgate-bench
# (build it with `cargo build --release --workspace`).
#
# Scenarios (full size), each giving the figures compared:
#   connect       15000 connections opened at --rate 40000: idle bytes per connection (server RSS delta / conns,
#                 target <= 256 B) and handshakes/s
#   fanout        15000 subscribers, 300 publishes of 1 KiB, 8 in flight: deliveries/s
#   fanout-paced  15000 subscribers, 100 publishes of 1 KiB, one every 100 ms: end-to-end latency p50 and p99
# all with --procs 2 --source-ips 2, loopback only, every run bounded by --duration and --timeout.
# Duration: about 1 minute per round (~3 s connect, ~6 s fanout, ~14 s paced, plus ~2 s per gateway start/stop and
# idle check, times two binaries), so ~3 minutes with the default 3 rounds, plus any --wait-quiet waiting.
#
# The three binaries are copied to bench/out/compare/bin/ first, so a rebuild during the run cannot change what is
# measured. Output: the human summaries on stdout and in bench/out/compare/, every run's JSON line in
# bench/out/compare/results.jsonl, a per-run table in bench/out/compare/detail.md, and the comparison table (per
# figure: old median, new median, new/old, and each round's pair) on stdout, appended to bench/RESULTS.md under a
# dated "old vs new" heading with both binaries' sha256, the commit and the TCP sysctls (bench/out/quick-compare.md
# with --quick). Exit status 1 if any run failed (its figures are then missing from the medians).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH_SRC="${WSGATE_BENCH:-$TARGET_DIR/release/wsgate-bench}"
OLD_SRC=""
NEW_SRC=""
ROUNDS=3
QUICK=0
ONLY=""
WAIT_QUIET=0
OLD_ARGS=""
NEW_ARGS=""
NETNS=0
SCENARIOS=(connect fanout fanout-paced)
# Run only when named in --only (the io backend comparison): 1 KiB every 10 ms; 64 KiB frames to 2000 subscribers.
EXTRA_SCENARIOS=(fanout-paced10 fanout-64k echo)

usage() { awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; }
die() {
    echo "compare.sh: $*" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --old) OLD_SRC="${2:?--old needs a path}"; shift ;;
        --new) NEW_SRC="${2:?--new needs a path}"; shift ;;
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
        --quick) QUICK=1 ;;
        --only) ONLY="${2:?--only needs a list}"; shift ;;
        --wait-quiet) WAIT_QUIET="${2:?--wait-quiet needs seconds}"; shift ;;
        --old-args) OLD_ARGS="${2?--old-args needs flags}"; shift ;;
        --new-args) NEW_ARGS="${2?--new-args needs flags}"; shift ;;
        --netns) NETNS=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

if [ -z "$OLD_SRC" ] || [ -z "$NEW_SRC" ]; then die "--old and --new are required (see --help)"; fi
case "$ROUNDS" in '' | *[!0-9]*) die "--rounds must be a positive integer" ;; esac
if [ "$ROUNDS" -lt 1 ] || [ "$ROUNDS" -gt 20 ]; then die "--rounds must be between 1 and 20"; fi
case "$WAIT_QUIET" in '' | *[!0-9]*) die "--wait-quiet must be whole seconds" ;; esac
if [ -n "$ONLY" ]; then
    for name in ${ONLY//,/ }; do
        case " ${SCENARIOS[*]} ${EXTRA_SCENARIOS[*]} " in *" $name "*) ;; *) die "--only: unknown scenario $name (connect, fanout, fanout-paced, fanout-paced10, fanout-64k, echo)" ;; esac
    done
fi
for bin in "$OLD_SRC" "$NEW_SRC"; do
    [ -x "$bin" ] || die "$bin is not an executable file"
done
[ -x "$BENCH_SRC" ] || die "$BENCH_SRC not found; run 'cargo build --release --workspace' first (or set WSGATE_BENCH)"
command -v jq >/dev/null || die "needs jq (apt-get install -y jq)"

wanted() {
    [ -z "$ONLY" ] && case " ${EXTRA_SCENARIOS[*]} " in *" $1 "*) return 1 ;; *) return 0 ;; esac
    case ",$ONLY," in *",$1,"*) return 0 ;; esac
    return 1
}

OUT="$ROOT/bench/out/compare"
RESULTS="$OUT/results.jsonl"
mkdir -p "$OUT/bin"
: >"$RESULTS"
rm -f "$OUT"/*.txt "$OUT"/*.progress "$OUT"/gateway-*.log "$OUT/detail.md" "$OUT/detail-latency.svg"

# Fixed copies: what is measured cannot change under a rebuild, and one generator serves every run.
OLD="$OUT/bin/wsgate-old"
NEW="$OUT/bin/wsgate-new"
BENCH="$OUT/bin/wsgate-bench"
cp "$OLD_SRC" "$OLD"
cp "$NEW_SRC" "$NEW"
cp "$BENCH_SRC" "$BENCH"
sha() { sha256sum "$1" | cut -d' ' -f1; }
built() { date -u -r "$1" '+%Y-%m-%d %H:%M:%SZ'; }
OLD_ID="$OLD_SRC ${OLD_ARGS:+$OLD_ARGS }(sha256 $(sha "$OLD"), built $(built "$OLD_SRC"))"
NEW_ID="$NEW_SRC ${NEW_ARGS:+$NEW_ARGS }(sha256 $(sha "$NEW"), built $(built "$NEW_SRC"))"
BENCH_ID="$BENCH_SRC (sha256 $(sha "$BENCH"), built $(built "$BENCH_SRC"))"
# A 15k connection burst overflows a smaller accept queue: SYN retries (1 s) then dominate the handshake rate.
SOMAXCONN_NOTE=""
if [ "$QUICK" -eq 0 ] && wanted connect && [ "$(sysctl -n net.core.somaxconn)" -lt 16384 ]; then
    SOMAXCONN_NOTE="net.core.somaxconn is $(sysctl -n net.core.somaxconn), below the 15k connection burst: accept \
queues overflow and SYN retries dominate handshakes/s (scripts/sysctl.sh raises it to 65535)."
    echo "compare.sh: WARNING: $SOMAXCONN_NOTE" >&2
fi

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
PROG=compare.sh
COMMIT="$(git_commit "$ROOT")"
FAILED=()
GW=""
NETNS_SRV=wsgate-cmp-srv
NETNS_GEN=wsgate-cmp-gen
remove_netns() {
    [ "$NETNS" -eq 1 ] || return 0
    ip netns del "$NETNS_SRV" 2>/dev/null || true
    ip netns del "$NETNS_GEN" 2>/dev/null || true
}
trap 'stop_gateway; remove_netns' EXIT
trap 'stop_gateway; remove_netns; exit 130' INT TERM
PLACE="loopback"
if [ "$NETNS" -eq 1 ]; then
    remove_netns
    ip netns add "$NETNS_SRV"
    ip netns add "$NETNS_GEN"
    ip link add wsgcmp-srv netns "$NETNS_SRV" type veth peer name wsgcmp-gen netns "$NETNS_GEN"
    ip -n "$NETNS_SRV" addr add 10.231.0.1/24 dev wsgcmp-srv
    ip -n "$NETNS_GEN" addr add 10.231.0.2/24 dev wsgcmp-gen
    for ns in "$NETNS_SRV" "$NETNS_GEN"; do ip -n "$ns" link set lo up; done
    ip -n "$NETNS_SRV" link set wsgcmp-srv up
    ip -n "$NETNS_GEN" link set wsgcmp-gen up
    GW_NETNS="$NETNS_SRV" GW_HOST=10.231.0.1 BENCH_NETNS="$NETNS_GEN"
    PLACE="a veth pair between two network namespaces (gateway 10.231.0.1, generator 10.231.0.2, MTU 1500)"
fi

# scenario_args NAME: sets SCEN (wsgate-bench scenario), WSPATH and ARGS for NAME at the chosen size.
scenario_args() {
    SCEN=""
    WSPATH=/ws
    if [ "$QUICK" -eq 1 ]; then
        case "$1" in
            connect) SCEN=connect; ARGS=(--conns 2000 --procs 2 --rate 10000 --duration 10 --timeout 5) ;;
            fanout) SCEN=fanout; ARGS=(--conns 2000 --procs 2 --messages 50 --size 1024 --inflight 8 --duration 10 --timeout 5) ;;
            fanout-paced) SCEN=fanout; ARGS=(--conns 2000 --procs 2 --messages 20 --size 1024 --interval-ms 100 --duration 10 --timeout 5) ;;
            fanout-paced10) SCEN=fanout; ARGS=(--conns 2000 --procs 2 --messages 100 --size 1024 --interval-ms 10 --duration 10 --timeout 5) ;;
            fanout-64k) SCEN=fanout; ARGS=(--conns 500 --procs 2 --messages 20 --size 65536 --interval-ms 200 --duration 10 --timeout 10) ;;
            echo) SCEN=echo; WSPATH=/echo; ARGS=(--conns 100 --procs 2 --size 1024 --inflight 8 --duration 3 --timeout 5) ;;
        esac
    else
        case "$1" in
            connect) SCEN=connect; ARGS=(--conns 15000 --procs 2 --source-ips 2 --rate 40000 --duration 30 --timeout 10) ;;
            fanout) SCEN=fanout; ARGS=(--conns 15000 --procs 2 --source-ips 2 --rate 5000 --messages 300 --size 1024 --inflight 8 --duration 30 --timeout 40) ;;
            fanout-paced) SCEN=fanout; ARGS=(--conns 15000 --procs 2 --source-ips 2 --rate 5000 --messages 100 --size 1024 --interval-ms 100 --duration 30 --timeout 15) ;;
            fanout-paced10) SCEN=fanout; ARGS=(--conns 15000 --procs 2 --source-ips 2 --rate 5000 --messages 300 --size 1024 --interval-ms 10 --duration 30 --timeout 15) ;;
            fanout-64k) SCEN=fanout; ARGS=(--conns 2000 --procs 2 --rate 5000 --messages 30 --size 65536 --interval-ms 200 --duration 30 --timeout 20) ;;
            echo) SCEN=echo; WSPATH=/echo; ARGS=(--conns 1000 --procs 2 --rate 5000 --size 1024 --inflight 8 --duration 10 --timeout 10) ;;
        esac
    fi
}

STARTED="$(date -u '+%Y-%m-%d %H:%M:%SZ')"
T0=$SECONDS
for sc in "${SCENARIOS[@]}" "${EXTRA_SCENARIOS[@]}"; do
    wanted "$sc" || continue
    scenario_args "$sc"
    for r in $(seq 1 "$ROUNDS"); do
        for side in old new; do
            if [ "$side" = old ]; then GW="$OLD" GW_ARGS="$OLD_ARGS"; else GW="$NEW" GW_ARGS="$NEW_ARGS"; fi
            run_scenario "$sc.$side.$r" "$SCEN" "$WSPATH" "${ARGS[@]}"
        done
    done
done
ELAPSED=$((SECONDS - T0))

# value LABEL JQ_EXPR: one figure of one run ("" when the run left no JSON line or lacks the figure).
value() {
    jq -r --arg l "$1" "select(.label == \$l) | .results | ($2) // empty" "$RESULTS" | tail -n 1 || true
}

# Checks that make a run's figures suspect: aborted, failed connections, loss, reordering, server closes/drops.
CHECKS=()
check_run() {
    local label="$1" issues
    issues="$(jq -r --arg l "$label" 'select(.label == $l) | .results | [
        (if .aborted then "aborted: \(.aborted)" else empty end),
        (if (.connected // 0) < (.attempted // 0) then "\(.attempted - .connected) connections failed" else empty end),
        (if (.lost // 0) > 0 then "lost \(.lost)" else empty end),
        (if (.duplicated // 0) > 0 then "duplicated \(.duplicated)" else empty end),
        (if (.out_of_order // 0) > 0 then "out of order \(.out_of_order)" else empty end),
        (if ((.server_closes // {}) | length) > 0 then "server closes \(.server_closes | tojson)" else empty end),
        (if (.dropped // 0) > 0 then "dropped \(.dropped)" else empty end),
        (if ((.machine_load_pct.other // 0) >= 20) then "other processes \(.machine_load_pct.other)% of a core" else empty end)
        ] | join(", ")' "$RESULTS" | tail -n 1 || true)"
    if [ -z "$(jq -r --arg l "$label" 'select(.label == $l) | .label' "$RESULTS" || true)" ]; then
        CHECKS+=("$label: no result")
    elif [ -n "$issues" ]; then
        CHECKS+=("$label: $issues")
    fi
}

# figure TITLE SCENARIO BETTER(lower|higher) UNIT(B|rate|ms) JQ_EXPR: one table row.
ROWS=()
figure() {
    local title="$1" sc="$2" better="$3" unit="$4" expr="$5" r olds=() news=() pairs=() o n
    wanted "$sc" || return 0
    for r in $(seq 1 "$ROUNDS"); do
        o="$(value "$sc.old.$r" "$expr")"
        n="$(value "$sc.new.$r" "$expr")"
        [ -n "$o" ] && olds+=("$o")
        [ -n "$n" ] && news+=("$n")
        pairs+=("${o:-none}/${n:-none}")
    done
    ROWS+=("$(awk -v title="$title" -v better="$better" -v unit="$unit" -v olds="${olds[*]}" -v news="${news[*]}" \
        -v pairs="${pairs[*]}" '
        function median(s,   a, n, i, j, t) {
            n = split(s, a, " ")
            if (n == 0) return ""
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function fmt(v) {
            if (v == "" || v == "none") return "–"
            if (unit == "B") return sprintf("%d", v)
            if (unit == "ms") return sprintf("%.1f", v)
            if (unit == "us") return sprintf("%.2f", v)
            if (v >= 1e6) return sprintf("%.2fM", v / 1e6)
            if (v >= 1e3) return sprintf("%.1fk", v / 1e3)
            return sprintf("%.0f", v)
        }
        BEGIN {
            mo = median(olds); mn = median(news)
            ratio = (mo != "" && mn != "" && mo + 0 != 0) ? sprintf("%.3f", mn / mo) : "–"
            np = split(pairs, p, " "); per = ""
            for (i = 1; i <= np; i++) { split(p[i], q, "/"); per = per (i > 1 ? ", " : "") fmt(q[1]) " / " fmt(q[2]) }
            printf "| %s | %s | %s | %s | %s | %s |", title, better, fmt(mo), fmt(mn), ratio, per
        }')")
}

for sc in "${SCENARIOS[@]}" "${EXTRA_SCENARIOS[@]}"; do
    wanted "$sc" || continue
    for r in $(seq 1 "$ROUNDS"); do
        check_run "$sc.old.$r"
        check_run "$sc.new.$r"
    done
done

if [ "$QUICK" -eq 1 ]; then
    SIZE="quick sizes (2000 connections)"
    MODE="bench/compare.sh --quick"
else
    SIZE="15k connections"
    MODE="bench/compare.sh"
fi
figure "idle bytes per connection (server RSS; target ≤ 256 B)" connect lower B '.server_rss_bytes_per_conn'
figure "handshakes/s (connections opened at once)" connect higher rate '.handshakes_per_s'
figure "fan-out deliveries/s (1 KiB, 8 publishes in flight)" fanout higher rate '.deliveries_per_s'
figure "paced latency p50, ms (one 1 KiB publish per 100 ms)" fanout-paced lower ms '(.latency_us.p50 // empty) / 1000'
figure "paced latency p99, ms" fanout-paced lower ms '(.latency_us.p99 // empty) / 1000'
figure "server CPU µs per delivery (1 KiB, 8 in flight)" fanout lower us '(.server_cpu_ms // empty) * 1000 / .deliveries'
figure "server CPU µs per delivery (paced, one per 100 ms)" fanout-paced lower us '(.server_cpu_ms // empty) * 1000 / .deliveries'
figure "paced latency p50, ms (one 1 KiB publish per 10 ms)" fanout-paced10 lower ms '(.latency_us.p50 // empty) / 1000'
figure "paced latency p99, ms (one per 10 ms)" fanout-paced10 lower ms '(.latency_us.p99 // empty) / 1000'
figure "server CPU µs per delivery (paced, one per 10 ms)" fanout-paced10 lower us '(.server_cpu_ms // empty) * 1000 / .deliveries'
figure "64 KiB to 2000 subscribers (one per 200 ms): latency p99, ms" fanout-64k lower ms '(.latency_us.p99 // empty) / 1000'
figure "server CPU µs per delivery (64 KiB)" fanout-64k lower us '(.server_cpu_ms // empty) * 1000 / .deliveries'
figure "echo messages/s (1000 clients, 1 KiB, 8 in flight)" echo higher rate '.messages_per_s'
figure "server CPU µs per echoed message" echo lower us '(.server_cpu_ms // empty) * 1000 / (.echo_received // empty)'

MACHINE="$(nproc) cores, $(awk '/^MemTotal:/ {printf "%.0f", $2 / 1048576}' /proc/meminfo) GiB, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), Linux $(uname -r)"
{
    echo "## $STARTED — old vs new ($MODE), $ROUNDS round(s), $SIZE — commit $COMMIT"
    echo
    echo "Machine: $MACHINE; $(tcp_sysctls)."
    echo
    [ -z "$SOMAXCONN_NOTE" ] || { echo "WARNING: $SOMAXCONN_NOTE"; echo; }
    echo "- old: $OLD_ID"
    echo "- new: $NEW_ID"
    echo "- generator (the same for every run): $BENCH_ID"
    echo "- commit: that of the checkout running bench/compare.sh; the gateways are identified by their sha256"
    echo
    echo "Every run against a fresh gateway (\`--listen HOST:0 --api-listen HOST:0 --echo-path /echo\`) over $PLACE;"
    echo "per scenario the rounds alternate old, new; ${ELAPSED} s in all. Generator arguments:"
    for sc in "${SCENARIOS[@]}" "${EXTRA_SCENARIOS[@]}"; do
        wanted "$sc" || continue
        scenario_args "$sc"
        echo "- $sc: \`wsgate-bench $SCEN ${ARGS[*]}\`"
    done
    echo
    echo "| figure | better | old median | new median | new/old | per round (old / new) |"
    echo "| --- | --- | --- | --- | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo
    if [ "${#CHECKS[@]}" -gt 0 ]; then
        echo "Runs to look at (their figures are in the table all the same):"
        printf -- '- %s\n' "${CHECKS[@]}"
    else
        echo "Every run: all connections up, no loss, duplicate, reordering, server close or drop."
    fi
    echo
} >"$OUT/compare.md"

echo
cat "$OUT/compare.md"
if [ -s "$RESULTS" ]; then
    "$BENCH" report --results "$RESULTS" --md "$OUT/detail.md" --svg "$OUT/detail-latency.svg" --commit "$COMMIT" \
        --note "bench/compare.sh, per run" --gateway "old $OLD_ID, new $NEW_ID" >/dev/null
fi
if [ "$QUICK" -eq 1 ]; then
    cat "$OUT/compare.md" >>"$ROOT/bench/out/quick-compare.md"
    echo "compare.sh: quick run: recorded in bench/out/quick-compare.md (per run: $OUT/detail.md)"
else
    {
        echo
        cat "$OUT/compare.md"
    } >>"$ROOT/bench/RESULTS.md"
    echo "compare.sh: appended to bench/RESULTS.md (per run: $OUT/detail.md)"
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "compare.sh: failed runs:" >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
