#!/usr/bin/env bash
# build-static.sh [EXTRA CARGO ARGS...] — build a statically linked x86-64 `wsgate` binary into dist/wsgate.
#
# How: glibc "static-pie". `-C target-feature=+crt-static` makes rustc link the C runtime (glibc's libc.a) into
# the executable, and on x86_64-unknown-linux-gnu the result is a position-independent static executable
# (no dynamic loader, no shared libraries, ASLR still works). No musl target is needed.
#
# Why the explicit `--target x86_64-unknown-linux-gnu`: with --target, cargo applies RUSTFLAGS only to the code
# built *for the target*. Build scripts and proc-macros (serde_derive, clap_derive, ring's build.rs, ...) are
# built for the host without crt-static and stay ordinary dynamic programs — a proc-macro is a shared library
# loaded into rustc and cannot be built with crt-static. Without --target the flag would hit them too and fail.
# Side effect: output goes to target/x86_64-unknown-linux-gnu/release/, a separate cache from target/release/,
# so this build does not invalidate normal `cargo build --release` artifacts.
#
# C code: ring (rustls' crypto provider) compiles C and assembly with the system cc into a static archive that
# is linked into the executable like any Rust code; it needs no shared library at run time.
#
# Caveat of static glibc: host-name lookups (getaddrinfo) go through NSS. The "files" (/etc/hosts) and "dns"
# sources are built into glibc >= 2.34, so `hosts: files dns` works; other NSS modules (resolve, myhostname,
# mdns, ...) would have to be dlopen()ed from the host's glibc and are not reliable. Listen addresses are IP
# literals anyway; prefer an IP address in the Redis URL too.
#
# Extra arguments go to cargo, e.g. `scripts/build-static.sh --locked`.
# Another cargo process may hold the build-directory lock ("Blocking waiting for file lock"); that just waits.
set -euo pipefail

TARGET=x86_64-unknown-linux-gnu
PACKAGE=wsgate
BIN=wsgate

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [[ $(uname -m) != x86_64 ]]; then
    echo "build-static: this script builds for x86-64 on an x86-64 host (this host: $(uname -m))" >&2
    exit 2
fi
# The target's standard library must be installed; it is the host target here, so normally it is.
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$TARGET"; then
    echo "build-static: Rust target $TARGET is not installed: rustup target add $TARGET" >&2
    exit 2
fi
# Static glibc archives come from libc6-dev.
if [[ ! -e /usr/lib/x86_64-linux-gnu/libc.a && ! -e /usr/lib64/libc.a && ! -e /usr/lib/libc.a ]]; then
    echo "build-static: libc.a not found; install the static glibc (Debian: apt-get install -y libc6-dev)" >&2
    exit 2
fi

# Keep any RUSTFLAGS the caller set (e.g. -C target-cpu=...) and add crt-static.
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static"
echo "build-static: RUSTFLAGS='$RUSTFLAGS' cargo build --release --target $TARGET -p $PACKAGE $*"
cargo build --release --target "$TARGET" -p "$PACKAGE" --bin "$BIN" "$@"

target_dir=${CARGO_TARGET_DIR:-target}
built="$target_dir/$TARGET/release/$BIN"
[[ -x "$built" ]] || { echo "build-static: expected binary not found: $built" >&2; exit 1; }

mkdir -p dist
# Copy to a temporary name and rename: a half-written dist/wsgate never exists, even if interrupted.
cp "$built" dist/.wsgate.tmp
mv -f dist/.wsgate.tmp "dist/$BIN"

size=$(stat -c %s "dist/$BIN")
echo "build-static: dist/$BIN: $size bytes ($(numfmt --to=iec-i --suffix=B "$size" 2>/dev/null || echo "$size B"))" \
     "— keeps line-table debug info from [profile.release] debug = 1; 'strip' shrinks it for shipping"

"$root/scripts/check-static.sh" "dist/$BIN"

# Smoke test: the kernel must be able to load and run it. Exit codes >= 126 mean "could not execute" or a
# signal; anything below is the program's own answer to --help.
set +e
"./dist/$BIN" --help >/dev/null 2>&1
rc=$?
set -e
if [[ $rc -ge 126 ]]; then
    echo "build-static: FAIL: dist/$BIN --help could not run (exit $rc)" >&2
    exit 1
fi
echo "build-static: OK: dist/$BIN runs (--help exit $rc)"
