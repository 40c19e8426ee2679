#!/usr/bin/env bash
# The test command of kaskade: lint, unit tests, bounded fuzzing (fuzz/run.sh), build, and the
# end-to-end suite against a real bridge (signaling, aiortc media, headless Chromium on the demo page).
#
# Works on a fresh Debian machine with only the Rust toolchain and python3: installs Debian's
# chromium + chromium-driver when missing, and a Python venv at .venv with tests/e2e/requirements.txt.
# Extra arguments go to pytest, e.g. `tests/run.sh -m "not browser"` or `tests/run.sh -k signaling`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

section() {
    printf '\n==== %s ====\n' "$*"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

section "system packages"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "installing chromium and chromium-driver"
    apt_install chromium chromium-driver
fi
# The cluster tests run a real redis-server (its package brings redis-cli) and haproxy.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "installing redis-server"
    apt_install redis-server
fi
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    echo "installing haproxy"
    apt_install haproxy
fi
# promtool (Debian's prometheus package) parses the Grafana dashboard's PromQL and
# docker/prometheus.yml; the package's service is not needed.
if ! command -v promtool >/dev/null 2>&1; then
    echo "installing prometheus (for promtool)"
    apt_install --no-install-recommends prometheus
fi
# Debian starts a redis on 6379 when it installs the package; the tests use their own ports.
redis-server --version
# First lines only, read with sed: `| head -1` closes the pipe early, and under pipefail the
# writer's SIGPIPE (exit 141) fails the whole run when it has more to print.
HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
"$HAPROXY" -v | sed -n 1p
/usr/bin/chromium --version 2>/dev/null || true
promtool --version 2>&1 | sed -n 1p
/usr/bin/chromedriver --version

section "rust toolchain"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    echo "adding rustfmt and clippy"
    rustup component add rustfmt clippy
fi
cargo --version
rustc --version

section "python venv (.venv)"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ] || [ ! -x "$VENV/bin/pip" ]; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV"; then
        # Debian's python3 ships venv without ensurepip until python3-venv is installed
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV"
    fi
fi
REQ="$ROOT/tests/e2e/requirements.txt"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    "$VENV/bin/pip" install --no-input --disable-pip-version-check -q -r "$REQ"
    echo "$WANT" > "$STAMP"
fi
"$VENV/bin/python" --version

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy"
cargo clippy --all-targets -- -D warnings

section "cargo test"
cargo test --workspace

section "fuzz targets (bounded runs, fuzz/README.md)"
# libFuzzer is C++: cargo-fuzz's libfuzzer-sys builds it with the system's C++ compiler.
if ! command -v c++ >/dev/null 2>&1; then
    echo "installing g++ (libFuzzer)"
    apt_install g++
fi
"$ROOT/fuzz/run.sh"

section "cargo build -p kaskade -p kaskade-netsim"
# kaskade-netsim: the impairment relay the end-to-end suite puts on a lossy Octo link.
cargo build -p kaskade -p kaskade-netsim
export KASKADE_BIN="${KASKADE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/kaskade}"
echo "bridge binary: $KASKADE_BIN"

section "end-to-end tests (pytest tests/e2e)"
export PYTHONDONTWRITEBYTECODE=1
status=0
"$VENV/bin/pytest" -v -p no:cacheprovider tests/e2e "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: the end-to-end suite is broken" >&2
fi
if [ "$status" -ne 0 ]; then
    echo "end-to-end tests FAILED (pytest exit $status)" >&2
    exit "$status"
fi

section "all checks passed"
