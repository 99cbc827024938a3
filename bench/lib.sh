# bench/lib.sh — shell functions shared by bench/run.sh and bench/compare.sh. Source it; it runs nothing by itself.
#
# The caller sets:
#   PROG        prefix of this library's messages (run.sh, compare.sh)
#   GW          gateway binary that start_gateway / run_scenario start
#   GW_ARGS     extra flags for it (word-split; optional)
#   BENCH       wsgate-bench binary
#   OUT         directory for per-scenario output (NAME.txt, NAME.progress, gateway-NAME.log)
#   RESULTS     file that run_scenario appends each run's JSON line to
#   WAIT_QUIET  seconds wait_quiet may wait for an idle machine (0: measure and report only)
#   FAILED      an array that run_scenario appends failed runs to
# and installs `trap stop_gateway EXIT` and `trap 'stop_gateway; exit 130' INT TERM`.
# The library keeps the running gateway in GW_PID, WS_ADDR and API_ADDR. The only process it ever signals is the
# gateway it started itself (by PID).
# shellcheck shell=bash

GW_PID=""
WS_ADDR=""
API_ADDR=""

# Short commit of the checkout that holds this script, "+dirty" with uncommitted changes to tracked files.
git_commit() {
    local root="$1" commit
    commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null || true)" ]; then
        commit="$commit+dirty"
    fi
    echo "$commit"
}

# The TCP settings that change the figures (the generator's sockets share the kernel with the gateway).
tcp_sysctls() {
    echo "sysctl net.core.somaxconn=$(sysctl -n net.core.somaxconn) net.ipv4.tcp_rmem=\"$(sysctl -n net.ipv4.tcp_rmem | tr -s '[:space:]' ' ')\" net.ipv4.tcp_wmem=\"$(sysctl -n net.ipv4.tcp_wmem | tr -s '[:space:]' ' ')\""
}

# stop_pid PID WHAT: SIGTERM, then SIGKILL after 15 s (a process this script started; never signalled by name).
stop_pid() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$PROG: $2 $pid did not stop within 15 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

stop_gateway() {
    [ -z "$GW_PID" ] || stop_pid "$GW_PID" gateway
    GW_PID=""
}

# start_gateway NAME: starts $GW on ephemeral loopback ports, logging to $OUT/gateway-NAME.log; sets GW_PID, WS_ADDR
# and API_ADDR from its ready line.
start_gateway() {
    local log="$OUT/gateway-$1.log"
    # Emptied first: the background start below may truncate it only after the loop has read an old ready line
    # (of an earlier run under the same name) and sent the generator to ports nobody listens on.
    : >"$log"
    # The gateway reads WSGATE_SECTION_KEY variables as config: keep the scripts' own (WSGATE_BENCH) away from it.
    # GW_ARGS: extra gateway flags of the side being measured (compare.sh --old-args / --new-args).
    # shellcheck disable=SC2086
    # GW_NETNS / GW_HOST: the network namespace and address the gateway runs in and listens on (compare.sh --netns;
    # default: this namespace, loopback). `ip netns exec` execs the gateway, so $! is its pid.
    local host="${GW_HOST:-127.0.0.1}"
    # shellcheck disable=SC2086
    ${GW_NETNS:+ip netns exec "$GW_NETNS"} env -u WSGATE_BENCH "$GW" --listen "$host:0" --api-listen "$host:0" \
        --echo-path /echo ${GW_ARGS:-} 2>"$log" &
    GW_PID=$!
    local line=""
    for _ in $(seq 1 100); do
        line="$(grep -m1 '^wsgate ready ' "$log" || true)"
        [ -n "$line" ] && break
        if ! kill -0 "$GW_PID" 2>/dev/null; then
            echo "$PROG: gateway exited before it was ready:" >&2
            cat "$log" >&2
            GW_PID=""
            return 1
        fi
        sleep 0.1
    done
    if [ -z "$line" ]; then
        echo "$PROG: no ready line from the gateway within 10 s" >&2
        return 1
    fi
    WS_ADDR="$(sed -n 's/^wsgate ready ws=\([^ ]*\) api=\([^ ]*\).*$/\1/p' <<<"$line")"
    API_ADDR="$(sed -n 's/^wsgate ready ws=\([^ ]*\) api=\([^ ]*\).*$/\2/p' <<<"$line")"
    echo "$PROG: gateway pid $GW_PID ready: ws=$WS_ADDR api=$API_ADDR"
}

# Percentage of CPU time idle over one second, whole machine.
idle_pct() {
    local a b
    read -r -a a </proc/stat
    sleep 1
    read -r -a b </proc/stat
    local total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    local idle=$((b[4] + b[5] - a[4] - a[5]))
    [ "$total" -gt 0 ] && echo $((100 * idle / total)) || echo 100
}

wait_quiet() {
    local deadline=$((SECONDS + WAIT_QUIET)) idle
    idle="$(idle_pct)"
    while [ "$idle" -lt 90 ] && [ "$SECONDS" -lt "$deadline" ]; do
        echo "$PROG: machine only ${idle}% idle; waiting (at most ${WAIT_QUIET}s per scenario)"
        sleep 5
        idle="$(idle_pct)"
    done
    echo "$PROG: machine ${idle}% idle before the run"
}

# run_scenario NAME SCENARIO PATH ARGS...: fresh gateway ($GW), one wsgate-bench run labelled NAME (its JSON line
# appended to $RESULTS), gateway stopped.
run_scenario() {
    local name="$1" scenario="$2" path="$3"
    shift 3
    echo
    echo "=== $name ==="
    wait_quiet
    if ! start_gateway "$name"; then
        FAILED+=("$name (gateway did not start)")
        stop_gateway
        return 0
    fi
    local log="$OUT/$name.txt" rc=0
    # BENCH_NETNS: the namespace the generator runs in (compare.sh --netns).
    ${BENCH_NETNS:+ip netns exec "$BENCH_NETNS"} "$BENCH" "$scenario" --label "$name" --url "ws://$WS_ADDR$path" --api "http://$API_ADDR" --server-pid "$GW_PID" "$@" \
        >"$log" 2>"$OUT/$name.progress" || rc=$?
    grep -v '^{' "$log" || true
    tail -n 1 "$log" | grep '^{' >>"$RESULTS" || true
    [ "$rc" -eq 0 ] || FAILED+=("$name (wsgate-bench exit $rc; see $OUT/$name.progress)")
    stop_gateway
}
