#!/usr/bin/env bash
# sysctl.sh — kernel tuning for a bare-metal wsgate node that holds 1M+ WebSocket connections.
#
# Usage:
#   scripts/sysctl.sh            apply: write /etc/sysctl.d/90-wsgate.conf and load it (sysctl -p FILE); root only
#   scripts/sysctl.sh --dry-run  show what apply would change (current → target) and the file it would write
#   scripts/sysctl.sh --check    report current vs recommended for every key; exit 1 if any is worse
#   scripts/sysctl.sh --help
# Environment: WSGATE_SYSCTL_CONF overrides the file path (default /etc/sysctl.d/90-wsgate.conf).
#
# Policy:
# - Recommendations are floors or ceilings, never downgrades: a value that is already better than recommended
#   (a larger fs.file-max, a wider port range, ...) is kept as it is. "Better" is defined per value by an
#   operator: ge (current >= recommended is fine), le (current <= recommended is fine), eq (must be equal).
# - Safe to run twice: the file is rewritten only when its content changes, and loading the same values again
#   changes nothing. A second apply reports "unchanged".
# - Keys that do not exist in this kernel or network namespace (e.g. nf_conntrack when the module is not
#   loaded) are reported and skipped, never fatal. --check does not count them as failures.
# - Exit codes: 0 = ok; 1 = --check found a value worse than recommended, or apply could not set a key;
#   2 = usage error / apply without root.
#
# The file is named 90-*: systemd-sysctl and `sysctl --system` read /etc/sysctl.d in lexical order, so a
# later file (e.g. 99-sysctl.conf -> /etc/sysctl.conf) can still override these values; --check detects that.
set -euo pipefail

CONF=${WSGATE_SYSCTL_CONF:-/etc/sysctl.d/90-wsgate.conf}

# Design target the arithmetic below is sized for: 2^20 connections (>= server.max_connections = 1,000,000).
CONNS=1048576
# The systemd unit's LimitNOFILE (deploy/wsgate.service): 1,000,000 connections + 48,576 spare descriptors for
# listeners, epoll instances, eventfds, API clients, the Redis bridge, log and certificate files.
LIMIT_NOFILE=1048576

PAGE=$(getconf PAGESIZE 2>/dev/null || echo 4096)
MEM_KB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
MEM_PAGES=$(( MEM_KB * 1024 / PAGE ))

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

mode=apply
case "${1:-}" in
    "") ;;
    --dry-run) mode=dry-run ;;
    --check) mode=check ;;
    -h|--help) usage; exit 0 ;;
    *) echo "sysctl.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac
[[ $# -le 1 ]] || { echo "sysctl.sh: one mode at a time" >&2; usage >&2; exit 2; }

# ---------------------------------------------------------------------------------------------------------------
# The recommendations. rec KEY OPS VALUE WHY — OPS has one operator per number in VALUE; WHY goes into the file.
# ---------------------------------------------------------------------------------------------------------------
KEYS=(); OPS=(); RECS=(); WHYS=()
rec() { KEYS+=("$1"); OPS+=("$2"); RECS+=("$3"); WHYS+=("$4"); }

# --- File descriptors -------------------------------------------------------------------------------------------
# Every connection is one socket = one file descriptor, plus one epoll registration.
#
# fs.file-max: system-wide number of open files. 1M wsgate sockets plus everything else on the box; 2^21 leaves
# 2x headroom. The limit itself costs nothing (file structures are allocated only when files are opened).
rec fs.file-max ge 2097152 "system-wide open files: 1M sockets plus 2x headroom; costs nothing until used"
# fs.nr_open: per-process ceiling for RLIMIT_NOFILE. systemd's LimitNOFILE (and setrlimit) cannot exceed it.
# The kernel default is exactly 1048576 = the unit's LimitNOFILE, i.e. no room to grow; 2^21 allows raising
# LimitNOFILE later (bigger nodes) without touching sysctl again.
rec fs.nr_open ge 2097152 "per-process RLIMIT_NOFILE ceiling; must be >= LimitNOFILE=$LIMIT_NOFILE of wsgate.service"
# fs.epoll.max_user_watches: epoll registrations per user (all of that user's epoll instances together). Each
# connection is one registration (~160 bytes of kernel memory when used). The default is ~4% of RAM divided by
# that cost, which on small-RAM machines is below 1M.
rec fs.epoll.max_user_watches ge 2097152 "epoll registrations per user: one per connection, 2x headroom"

# --- Accepting bursts (reconnect storms) ------------------------------------------------------------------------
# When a node restarts or a load balancer fails over, hundreds of thousands of clients reconnect within seconds.
#
# net.core.somaxconn: cap on every listen() backlog (the queue of established connections waiting for accept()).
# The kernel uses min(backlog passed to listen(), somaxconn), so wsgate must also pass a large backlog. 65535 is
# the classic maximum (the backlog was a 16-bit field before Linux 4.1; larger values gain nothing in practice).
rec net.core.somaxconn ge 65535 "accept queue cap: absorbs reconnect storms while reactors accept()"
# net.ipv4.tcp_max_syn_backlog: half-open connections (SYN received, handshake not finished) per listener.
# Sized like the accept queue: a reconnect storm is a burst of SYNs.
rec net.ipv4.tcp_max_syn_backlog ge 65535 "SYN queue per listener: sized like the accept queue"
# net.ipv4.tcp_syncookies: when the SYN queue still overflows (storm or SYN flood), answer with cookies instead
# of dropping. 1 = only on overflow (the kernel default; kept explicit because some images turn it off).
rec net.ipv4.tcp_syncookies eq 1 "SYN cookies on SYN-queue overflow instead of dropping connection attempts"
# net.core.netdev_max_backlog: per-CPU queue of received packets waiting for the network stack (also used by
# loopback and RPS). The default 1000 overflows when a broadcast to 1M sockets brings back 1M ACKs within a few
# milliseconds, or during a reconnect storm; drops show up in column 2 of /proc/net/softnet_stat.
rec net.core.netdev_max_backlog ge 16384 "per-CPU input packet queue: broadcast ACK bursts and reconnect storms"

# --- TCP buffer memory for many mostly idle sockets ------------------------------------------------------------
# Arithmetic. Socket buffer memory is charged against the global tcp_mem limit in whole PAGES (the kernel
# reserves buffer memory per socket in page-sized quanta), so a socket with even one small message queued in
# either direction costs at least 1 page (4096 bytes on x86-64). An idle socket with empty queues costs 0 pages: the
# tcp_rmem/tcp_wmem values are limits, not pre-allocations.
# Per-socket minimums: tcp_rmem[0] = tcp_wmem[0] = 4096 bytes = 1 page each. Under memory pressure the kernel
# shrinks buffers down to (but not below) these, so 1M sockets each holding their minimum read AND write buffer
# need 2 pages x 1M = 2M pages = 8 GiB.
# Not part of tcp_mem, but real: every established socket also costs ~3.7 KiB of unswappable kernel objects
# (TCP socket 2.3 KiB, socket inode 0.8 KiB, file 0.2 KiB, dentry 0.2 KiB, epoll item 0.1 KiB — see
# /proc/slabinfo), i.e. ~3.6 GiB for 1M connections, plus wsgate's own per-connection state.
#
# net.ipv4.tcp_mem = "low pressure high", in pages, for all TCP sockets together:
#   low      = 1 page  x 1M connections (4 GiB): every socket may hold one page with no regulation at all;
#   pressure = 2 pages x 1M (8 GiB): each socket holding its minimum read + write buffer; above this the kernel
#              enters memory pressure and shrinks buffers towards the minimums;
#   high     = 3 pages x 1M (12 GiB): headroom for bursts (a broadcast sits in 1M send queues at once) before
#              the kernel refuses buffer allocations (drops).
# Capped so that `high` is at most half of RAM (the other half is for the socket objects above, wsgate's
# memory and the page cache), scaling all three down proportionally. Kernel defaults (~4.5%, 6%, 9% of RAM) are
# far too low for 1M sockets on most machines.
tcp_high=$(( CONNS * 3 ))
if (( tcp_high > MEM_PAGES / 2 )); then tcp_high=$(( MEM_PAGES / 2 )); fi
tcp_pressure=$(( tcp_high * 2 / 3 ))
tcp_low=$(( tcp_high / 3 ))
rec net.ipv4.tcp_mem "ge ge ge" "$tcp_low $tcp_pressure $tcp_high" \
    "pages (${PAGE} B): 1, 2, 3 pages per connection for $CONNS connections, high capped at 1/2 RAM"
# net.ipv4.tcp_rmem = "min default max" bytes per socket receive buffer:
#   min 4096     one page, the floor under memory pressure;
#   default 16384  initial buffer of every new socket; clients send small frames (subscribe, ping), and this is
#                  what a socket may queue before autotuning. 1M x 16 KiB = 16 GiB worst case vs 128 GiB with the
#                  common 131072 default;
#   max 4194304  receive autotuning (tcp_moderate_rcvbuf) still grows the rare bulk uploader up to 4 MiB.
# Lower min/default and higher max are fine. This is for a gateway host: on a host that also runs many
# receiving clients (the bundled load generator on a test box), a 16 KiB default slows *their* receiving several
# times over (bench/RESULTS.md: 3.7M -> 0.75M deliveries/s); benchmark such a box with the distribution's default.
rec net.ipv4.tcp_rmem "le le ge" "4096 16384 4194304" \
    "bytes: 1-page floor, small initial buffer for many small-message sockets, autotuning up to >= 4 MiB"
# net.ipv4.tcp_wmem = "min default max" bytes per socket send buffer: same reasoning for pushes. wsgate keeps
# each connection's backlog in user space (shared encode-once frames, bounded by ws.max_outbound_bytes); the
# kernel copy per socket stays small and send autotuning grows it for fast consumers up to 4 MiB.
rec net.ipv4.tcp_wmem "le le ge" "4096 16384 4194304" \
    "bytes: 1-page floor, small initial send buffer, autotuning up to >= 4 MiB"
# Not set: net.core.rmem_default / wmem_default apply to non-TCP sockets (UDP, Unix) — TCP uses the tcp_rmem /
# tcp_wmem middle values instead — and net.core.rmem_max / wmem_max only cap explicit SO_RCVBUF/SO_SNDBUF, which
# wsgate does not set. Changing them would not affect wsgate.

# --- Closing connections -----------------------------------------------------------------------------------------
# net.ipv4.tcp_fin_timeout: seconds an orphaned socket (closed by wsgate) waits in FIN_WAIT_2 for the peer's FIN.
# Mass closes (shutdown sends close 1001 to every client; slow-consumer and idle kicks) meet mobile clients that
# vanished without a word; 60 s (default) keeps their kernel memory a minute, 15 s is plenty on the Internet.
rec net.ipv4.tcp_fin_timeout le 15 "seconds in FIN_WAIT_2 after close: release vanished clients sooner"
# net.ipv4.tcp_max_orphans: closed-but-not-finished sockets; above it the kernel resets them and logs "too many
# orphaned sockets". A shutdown closes up to 1M at once; 262144 (each bounded by tcp_fin_timeout, a few KiB)
# absorbs a quarter of them; the rest are reset, which clients that already got the close frame tolerate.
rec net.ipv4.tcp_max_orphans ge 262144 "closed sockets still finishing: mass closes on shutdown"
# Not set: net.ipv4.tcp_max_tw_buckets. wsgate closes first, so TIME_WAIT sockets are on the server side; on
# overflow the kernel just drops them early ("time wait bucket table overflow"), harmless for a listening server.

# --- Outgoing connections ----------------------------------------------------------------------------------------
# Accepted connections do not use local ports: 1M clients on :8080 differ by (client address, client port).
# Ports matter for outgoing connections: the Redis bridge, health checkers, a proxy, the load generator.
#
# net.ipv4.ip_local_port_range: ephemeral ports for outgoing connections, per destination (address, port).
# 10240-65535 = 55,296 ports (default 32768-60999 = 28,232). Starting at 10240 keeps wsgate's 8080/8081 and other
# service ports below 10240 out of the ephemeral range (a listener could otherwise find its port taken by an
# outgoing connection; reserve others with net.ipv4.ip_local_reserved_ports). Different parity of the two ends
# (even, odd) is what the kernel documentation recommends. A wider range is fine.
rec net.ipv4.ip_local_port_range "le ge" "10240 65535" "ephemeral ports for outgoing connections; keeps 8080/8081 out"
# net.ipv4.tcp_tw_reuse: reuse a TIME_WAIT socket for a new outgoing connection when TCP timestamps prove it safe.
# The default 2 allows that on loopback only; 1 everywhere (Redis bridge reconnects, same-host load tests).
# It has no effect on accepted connections.
rec net.ipv4.tcp_tw_reuse eq 1 "reuse TIME_WAIT for outgoing connections (safe, timestamp-protected)"

# --- Connection tracking (only if the firewall loads nf_conntrack) -----------------------------------------------
# net.netfilter.nf_conntrack_max: every tracked connection takes an entry (~320 bytes). The default (often 262144)
# overflows at 1M connections: "nf_conntrack: table full, dropping packet" — new connections vanish silently.
# Better still: exempt the WebSocket port from tracking (nft: `... tcp dport 8080 notrack` in a raw-priority
# chain). Skipped when the module is not loaded. If conntrack is loaded after systemd-sysctl at boot, load it
# earlier (/etc/modules-load.d/nf_conntrack.conf) or rerun this script.
rec net.netfilter.nf_conntrack_max ge 2097152 "conntrack entries: 1M connections plus headroom (if loaded)"

# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------
key_path() { printf '/proc/sys/%s' "${1//.//}"; }

# current KEY — prints the value with whitespace normalized to single spaces; fails if missing/unreadable.
current() {
    local p v
    p=$(key_path "$1")
    [[ -r $p ]] || return 1
    v=$(cat "$p" 2>/dev/null) || return 1
    # shellcheck disable=SC2086  # word splitting is the point: collapse tabs/newlines to single spaces
    set -- $v
    printf '%s' "$*"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# judge OPS CURRENT RECOMMENDED — prints "ok", or what is wrong ("2048 < 65535", "60 > 15", "2 != 1").
judge() {
    local -a ops cur want bad=()
    read -r -a ops <<<"$1"; read -r -a cur <<<"$2"; read -r -a want <<<"$3"
    if [[ ${#cur[@]} -ne ${#want[@]} ]]; then echo "expected ${#want[@]} numbers"; return; fi
    local i
    for i in "${!want[@]}"; do
        if ! is_uint "${cur[$i]}"; then bad+=("${cur[$i]} is not a number"); continue; fi
        case "${ops[$i]}" in
            ge) (( cur[i] >= want[i] )) || bad+=("${cur[$i]} < ${want[$i]}") ;;
            le) (( cur[i] <= want[i] )) || bad+=("${cur[$i]} > ${want[$i]}") ;;
            eq) (( cur[i] == want[i] )) || bad+=("${cur[$i]} != ${want[$i]}") ;;
        esac
    done
    if [[ ${#bad[@]} -eq 0 ]]; then echo ok; return; fi
    local msg=${bad[0]}
    for i in "${bad[@]:1}"; do msg+="; $i"; done
    echo "$msg"
}

# target OPS CURRENT RECOMMENDED — the value apply writes: per number the better of current and recommended.
target() {
    local -a ops cur want out=()
    read -r -a ops <<<"$1"; read -r -a cur <<<"$2"; read -r -a want <<<"$3"
    if [[ ${#cur[@]} -ne ${#want[@]} ]]; then echo "$3"; return; fi
    local i
    for i in "${!want[@]}"; do
        if ! is_uint "${cur[$i]}"; then out+=("${want[$i]}"); continue; fi
        case "${ops[$i]}" in
            ge) if (( cur[i] > want[i] )); then out+=("${cur[$i]}"); else out+=("${want[$i]}"); fi ;;
            le) if (( cur[i] < want[i] )); then out+=("${cur[$i]}"); else out+=("${want[$i]}"); fi ;;
            *) out+=("${want[$i]}") ;;
        esac
    done
    echo "${out[*]}"
}

gib() { awk -v b="$1" 'BEGIN { printf "%.1f GiB", b / 1073741824 }'; }

# Memory budget and the LimitNOFILE the unit needs. Prints; returns 1 if a check fails.
report_limits() {
    local rc=0 nr_open
    nr_open=$(current fs.nr_open || echo 0)
    echo
    echo "systemd: wsgate.service needs LimitNOFILE=$LIMIT_NOFILE (deploy/wsgate.service sets it); it must be <=" \
         "fs.nr_open (now $nr_open)."
    if (( nr_open < LIMIT_NOFILE )); then
        echo "  PROBLEM: fs.nr_open $nr_open < $LIMIT_NOFILE: systemd would fail to start the unit"
        rc=1
    fi
    # If the unit is installed, show what systemd actually gives it, and what the running process has.
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]] \
        && [[ $(systemctl show -p LoadState --value wsgate.service 2>/dev/null) == loaded ]]; then
        local unit_limit pid
        unit_limit=$(systemctl show -p LimitNOFILE --value wsgate.service 2>/dev/null || echo "?")
        echo "  wsgate.service LimitNOFILE=$unit_limit"
        if is_uint "$unit_limit" && (( unit_limit < LIMIT_NOFILE )); then
            echo "  PROBLEM: the installed unit allows fewer than $LIMIT_NOFILE descriptors"
            rc=1
        fi
        pid=$(systemctl show -p MainPID --value wsgate.service 2>/dev/null || echo 0)
        if [[ -n $pid && $pid != 0 && -r /proc/$pid/limits ]]; then
            echo "  running wsgate (pid $pid): $(grep 'Max open files' "/proc/$pid/limits" | tr -s ' ')"
        fi
    else
        echo "  (wsgate.service is not installed here; this shell's own limit is $(ulimit -Sn) soft / $(ulimit -Hn) hard)"
    fi
    local conn_objects=$(( CONNS * 3800 ))
    echo "memory for $CONNS connections: ~$(gib "$conn_objects") kernel socket objects + TCP buffers up to" \
         "$(gib $(( tcp_high * PAGE ))) (tcp_mem high) + wsgate's own; MemTotal $(gib $(( MEM_KB * 1024 )))"
    if (( MEM_KB < 16 * 1024 * 1024 )); then
        echo "  WARNING: less than 16 GiB RAM: plan for fewer connections per node (server.max_connections)"
    fi
    return $rc
}

# ---------------------------------------------------------------------------------------------------------------
# Evaluate every key once.
# ---------------------------------------------------------------------------------------------------------------
CURS=(); TARGETS=(); STATES=()
for i in "${!KEYS[@]}"; do
    if value=$(current "${KEYS[$i]}"); then
        CURS+=("$value")
        STATES+=("$(judge "${OPS[$i]}" "$value" "${RECS[$i]}")")
        TARGETS+=("$(target "${OPS[$i]}" "$value" "${RECS[$i]}")")
    else
        CURS+=(""); STATES+=(missing); TARGETS+=("")
    fi
done

# The file apply writes: one commented line per present key.
render_conf() {
    echo "# wsgate kernel tuning — generated by scripts/sysctl.sh; rerun it instead of editing (edits are replaced)."
    echo "# Sized for $CONNS connections on this machine (MemTotal ${MEM_KB} kB, page ${PAGE} B)."
    echo "# Values already better than the recommendation were kept as found. The script explains every value."
    local i
    for i in "${!KEYS[@]}"; do
        echo
        echo "# ${WHYS[$i]}"
        if [[ ${STATES[$i]} == missing ]]; then
            echo "# ${KEYS[$i]}: not present in this kernel/namespace when generated; skipped"
        else
            echo "${KEYS[$i]} = ${TARGETS[$i]}"
        fi
    done
}

# rec_text OPS VALUE — "<=10240 >=65535": each recommended number with the direction that is acceptable.
rec_text() {
    local -a ops want; local out=() i op
    read -r -a ops <<<"$1"; read -r -a want <<<"$2"
    for i in "${!want[@]}"; do
        case "${ops[$i]}" in ge) op=">=" ;; le) op="<=" ;; *) op="=" ;; esac
        out+=("$op${want[$i]}")
    done
    echo "${out[*]}"
}

case "$mode" in
check)
    fail=0
    printf '%-31s %-24s %-33s %s\n' KEY CURRENT RECOMMENDED STATUS
    for i in "${!KEYS[@]}"; do
        state=${STATES[$i]}
        case "$state" in
            ok) status=OK ;;
            missing) status="MISSING: not in this kernel/namespace, skipped" ;;
            *) status="WORSE: $state"; fail=1 ;;
        esac
        printf '%-31s %-24s %-33s %s\n' "${KEYS[$i]}" "${CURS[$i]:--}" "$(rec_text "${OPS[$i]}" "${RECS[$i]}")" "$status"
    done
    report_limits || fail=1
    if [[ -r $CONF ]]; then echo "config file: $CONF present"; else echo "config file: $CONF absent (not persisted)"; fi
    if (( fail )); then
        echo "check: some values are worse than recommended; run scripts/sysctl.sh (as root) to apply" >&2
        exit 1
    fi
    echo "check: all present keys meet the recommendations"
    ;;
dry-run)
    changes=0
    for i in "${!KEYS[@]}"; do
        case "${STATES[$i]}" in
            missing) printf '%-31s missing in this kernel/namespace: would skip\n' "${KEYS[$i]}" ;;
            ok) printf '%-31s %s (ok, kept)\n' "${KEYS[$i]}" "${CURS[$i]}" ;;
            *) printf '%-31s %s → %s\n' "${KEYS[$i]}" "${CURS[$i]}" "${TARGETS[$i]}"; changes=$(( changes + 1 )) ;;
        esac
    done
    echo
    if [[ -r $CONF ]] && [[ "$(cat "$CONF")" == "$(render_conf)" ]]; then
        echo "dry-run: $CONF is already up to date; $changes running value(s) would change"
    else
        echo "dry-run: would write $CONF ($changes running value(s) would change):"
        render_conf | sed 's/^/    /'
    fi
    report_limits || true
    ;;
apply)
    if [[ $EUID -ne 0 ]]; then
        echo "sysctl.sh: applying needs root (try --dry-run or --check)" >&2
        exit 2
    fi
    mkdir -p "$(dirname "$CONF")"
    new=$(render_conf)
    if [[ -r $CONF ]] && [[ "$(cat "$CONF")" == "$new" ]]; then
        echo "apply: $CONF unchanged"
    else
        tmp=$(mktemp "$CONF.XXXXXX")
        printf '%s\n' "$new" >"$tmp"
        chmod 0644 "$tmp"
        mv -f "$tmp" "$CONF"
        echo "apply: wrote $CONF"
    fi
    for i in "${!KEYS[@]}"; do
        [[ ${STATES[$i]} != missing ]] || echo "apply: ${KEYS[$i]} not present in this kernel/namespace: skipped"
    done
    # Load exactly this file. Errors are reported per key below, by reading every value back.
    if command -v sysctl >/dev/null 2>&1; then
        sysctl -q -p "$CONF" || true
    else
        for i in "${!KEYS[@]}"; do
            [[ ${STATES[$i]} == missing ]] || echo "${TARGETS[$i]}" >"$(key_path "${KEYS[$i]}")" 2>/dev/null || true
        done
    fi
    failed=0; changed=0
    for i in "${!KEYS[@]}"; do
        [[ ${STATES[$i]} != missing ]] || continue
        now=$(current "${KEYS[$i]}" || echo "?")
        if [[ $now != "${TARGETS[$i]}" ]]; then
            echo "apply: FAILED to set ${KEYS[$i]} = ${TARGETS[$i]} (still $now)" >&2
            failed=1
        elif [[ ${CURS[$i]} != "$now" ]]; then
            echo "apply: ${KEYS[$i]}: ${CURS[$i]} → $now"
            changed=$(( changed + 1 ))
        fi
    done
    echo "apply: $changed value(s) changed"
    report_limits || failed=1
    if (( failed )); then
        echo "apply: some settings did not take effect (read-only /proc/sys in a container? a later sysctl.d file?)" >&2
        exit 1
    fi
    ;;
esac
