#!/usr/bin/env bash
# check-static.sh BINARY — verify that BINARY is a statically linked ELF executable.
#
# A wsgate node runs one self-contained binary: no shared libraries, no dynamic loader, so the same file runs
# on any x86-64 Linux regardless of its glibc version. This script proves that with three independent tools:
#   1. `file`    must say "statically linked" (classic static) or "static-pie linked" (glibc static-pie, what
#                scripts/build-static.sh produces) — never "dynamically linked" / "interpreter".
#   2. `ldd`     must say "not a dynamic executable" or "statically linked" (glibc ldd prints the latter for
#                static-pie) and list no libraries.
#   3. `readelf` (if installed) must find no PT_INTERP program header and no NEEDED dynamic entries.
# Exit status: 0 = static; 1 = not static (or not an ELF executable); 2 = usage error / tool missing.
set -euo pipefail

usage() { echo "usage: $0 BINARY" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
bin=$1
[[ -f "$bin" ]] || { echo "check-static: no such file: $bin" >&2; exit 2; }
[[ -x "$bin" ]] || { echo "check-static: not executable: $bin" >&2; exit 1; }

# `file` is not installed on minimal Debian images; install it when we can (root + apt), otherwise stop.
if ! command -v file >/dev/null 2>&1; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "check-static: installing 'file' (apt-get install -y file)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y file >/dev/null
    else
        echo "check-static: the 'file' command is missing; install it (apt-get install -y file)" >&2
        exit 2
    fi
fi
command -v ldd >/dev/null 2>&1 || { echo "check-static: 'ldd' is missing (package libc-bin)" >&2; exit 2; }

fail=0

# 1. file(1)
file_out=$(file -L -b "$bin")
echo "file:    $file_out"
if [[ $file_out != ELF* ]]; then
    echo "check-static: FAIL: not an ELF file" >&2
    fail=1
elif [[ $file_out == *"dynamically linked"* || $file_out == *"interpreter"* ]]; then
    echo "check-static: FAIL: file reports a dynamically linked executable" >&2
    fail=1
elif [[ $file_out != *"statically linked"* && $file_out != *"static-pie linked"* ]]; then
    echo "check-static: FAIL: file does not report static linking" >&2
    fail=1
fi

# 2. ldd(1): exits non-zero for static binaries, so only its text matters.
ldd_out=$(ldd "$bin" 2>&1 || true)
echo "ldd:     $(printf '%s' "$ldd_out" | tr '\n' ' ' | sed 's/[[:space:]]\+/ /g; s/^ //')"
if [[ $ldd_out == *"=>"* || $ldd_out == *"ld-linux"* ]]; then
    echo "check-static: FAIL: ldd lists shared libraries" >&2
    fail=1
elif [[ $ldd_out != *"not a dynamic executable"* && $ldd_out != *"statically linked"* ]]; then
    echo "check-static: FAIL: ldd does not report a static executable" >&2
    fail=1
fi

# 3. readelf (binutils): the authoritative view of the ELF headers. Optional, because binutils may be absent.
if command -v readelf >/dev/null 2>&1; then
    readelf_fail=0
    if readelf -lW "$bin" | grep -q 'INTERP'; then
        echo "check-static: FAIL: readelf finds a PT_INTERP (dynamic loader) header" >&2
        readelf_fail=1
    fi
    needed=$(readelf -dW "$bin" 2>/dev/null | grep '(NEEDED)' || true)
    if [[ -n $needed ]]; then
        echo "check-static: FAIL: readelf finds NEEDED shared libraries:" >&2
        echo "$needed" >&2
        readelf_fail=1
    fi
    if [[ $readelf_fail -eq 0 ]]; then
        echo "readelf: no INTERP header, no NEEDED entries"
    else
        fail=1
    fi
fi

if [[ $fail -ne 0 ]]; then
    echo "check-static: $bin is NOT statically linked" >&2
    exit 1
fi
echo "check-static: OK: $bin is statically linked"
