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

echo "== static release binary"
scripts/build-static.sh
