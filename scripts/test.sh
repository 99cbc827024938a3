#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests need, then runs them.
# .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
command -v file >/dev/null 2>&1 || need_pkgs+=(file)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)  # tests/auth.rs makes RSA test keys
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "installing: ${need_pkgs[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== tests"
cargo test --workspace

echo "== black-box tests again, on the other io backend (tests/*.rs with WSGATE_TEST_IO_BACKEND)"
# The pass above ran them on the default backend (`auto`: io_uring where the kernel offers it); this one on the
# other. The unit tests and the hand-driven reactor do not depend on the backend. About 2 minutes.
# An empty environment: the gateway would read this script's WSGATE_* settings as config keys.
default_backend="$(env -i "${CARGO_TARGET_DIR:-target}/debug/wsgate" --print-io-backend)"
echo "$default_backend"
if [[ "$default_backend" == "io backend: io_uring"* ]]; then
    WSGATE_TEST_IO_BACKEND=epoll cargo test --test '*'
else
    echo "skipped: this kernel refuses io_uring, so the pass above ran on epoll"
fi

echo "== fuzz smoke (every parser target for 10 s; long runs: scripts/fuzz.sh, docs/FUZZING.md)"
# Needs nightly and cargo-fuzz; CI does not install them, so without them this step says why it is skipped.
# The first run also builds fuzz/ (several minutes on 2 cores); WSGATE_FUZZ_SMOKE=0 skips it.
if [ "${WSGATE_FUZZ_SMOKE:-1}" = 0 ]; then
    echo "skipped: WSGATE_FUZZ_SMOKE=0"
elif ! command -v rustup >/dev/null 2>&1 || ! rustup toolchain list | grep -q '^nightly'; then
    echo "skipped: no nightly toolchain (rustup toolchain install nightly)"
elif ! cargo fuzz --version >/dev/null 2>&1; then
    echo "skipped: cargo-fuzz is not installed (cargo install cargo-fuzz)"
else
    scripts/fuzz.sh all 10
fi

echo "== static release binary"
scripts/build-static.sh
