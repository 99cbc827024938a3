#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests need, then runs them.
# .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
command -v file >/dev/null 2>&1 || need_pkgs+=(file)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)  # tests/auth.rs makes RSA test keys
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3 python3-venv)  # tests/deflate.rs (below)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "installing: ${need_pkgs[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# The operator's view: promtool (Prometheus's own parser) checks /metrics and deploy/prometheus/alerts.yml; headless
# Chromium with puppeteer-core (tests/browser/, pinned in its package-lock.json) drives the status page. Debian's
# prometheus package is the only one that ships promtool (~30 MB download; its service is not needed, and without
# systemd nothing starts it).
browser_pkgs=()
command -v promtool >/dev/null 2>&1 || browser_pkgs+=(prometheus)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || browser_pkgs+=(chromium)
command -v node >/dev/null 2>&1 || browser_pkgs+=(nodejs npm)
if [ ${#browser_pkgs[@]} -gt 0 ]; then
    echo "installing: ${browser_pkgs[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${browser_pkgs[@]}" >/dev/null
fi
if [ ! -d tests/browser/node_modules/puppeteer-core ] || [ ! -d tests/browser/node_modules/ws ]; then
    echo "installing: tests/browser npm packages"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
# tests/deflate.rs: a standard client library (Python `websockets`) speaking permessage-deflate, from a venv.
py_venv="$(realpath -m "${CARGO_TARGET_DIR:-target}")/pyvenv"
if ! "$py_venv/bin/python" -c 'import websockets' >/dev/null 2>&1; then
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then  # Debian ships venv's pip apart
        if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv "$py_venv"
    "$py_venv/bin/pip" install -q websockets
fi
export WSGATE_TEST_PYTHON="$py_venv/bin/python"

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== tests"
cargo test --workspace

echo "== black-box tests again, on the other io backend (tests/*.rs with WSGATE_TEST_IO_BACKEND)"
# The pass above ran them on the default backend (`auto`: io_uring where the kernel offers it); this one on the
# other. The unit tests and the hand-driven reactor do not depend on the backend. Left out here: files whose
# subject lives above the reactor's system calls (the cluster bridge, history and acks bookkeeping, token checks,
# the browser and Node clients, the operator's view); they reach the reactor through paths the other files cover
# on both backends. A new test file runs on both unless it is named here. About 2 minutes.
above_the_transport=" cluster cluster_faults cluster_history cluster_sessions history user_acks auth operator_view \
    status_page demo_page js_sdk fallback_cors "
second_pass=()
for file in tests/*.rs; do
    name="$(basename "$file" .rs)"
    [[ "$above_the_transport" == *" $name "* ]] || second_pass+=(--test "$name")
done
# An empty environment: the gateway would read this script's WSGATE_* settings as config keys.
default_backend="$(env -i "${CARGO_TARGET_DIR:-target}/debug/wsgate" --print-io-backend)"
echo "$default_backend"
if [[ "$default_backend" == "io backend: io_uring"* ]]; then
    WSGATE_TEST_IO_BACKEND=epoll cargo test "${second_pass[@]}"
else
    echo "skipped: this kernel refuses io_uring, so the pass above ran on epoll"
fi

echo "== fuzz smoke (every parser target for 5 s; long runs: scripts/fuzz.sh, docs/FUZZING.md)"
# Needs nightly and cargo-fuzz; CI does not install them, so without them this step says why it is skipped.
# The first run also builds fuzz/ (several minutes on 2 cores); WSGATE_FUZZ_SMOKE=0 skips it.
if [ "${WSGATE_FUZZ_SMOKE:-1}" = 0 ]; then
    echo "skipped: WSGATE_FUZZ_SMOKE=0"
elif ! command -v rustup >/dev/null 2>&1 || ! rustup toolchain list | grep -q '^nightly'; then
    echo "skipped: no nightly toolchain (rustup toolchain install nightly)"
elif ! cargo fuzz --version >/dev/null 2>&1; then
    echo "skipped: cargo-fuzz is not installed (cargo install cargo-fuzz)"
else
    scripts/fuzz.sh all 5
fi

echo "== static release binary"
scripts/build-static.sh
