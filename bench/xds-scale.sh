#!/usr/bin/env bash
# The control plane at scale: N simulated proxies (ADS streams, SotW and delta)
# against one `legate control-plane`, measuring memory per stream, the time from
# `apply` to the last stream receiving the change (p50/p99/max), and the control
# plane's CPU per push. Loopback only; every run is bounded.
#
#   bash bench/xds-scale.sh            # N = 1,000 and 10,000, plus 1,000 clusters / 10,000 endpoints
#   STREAMS="1000" bash bench/xds-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p legate >/dev/null
LEGATE=target/release/legate
WORK=$(mktemp -d)
CP=""
cleanup() {
  if [ -n "$CP" ]; then kill "$CP" 2>/dev/null || true; wait "$CP" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # streams clusters endpoints mode
  local streams=$1 clusters=$2 endpoints=$3 mode=$4
  local xds api
  xds=$(free_port); api=$(free_port)
  rm -rf "$WORK/data"
  "$LEGATE" control-plane --data-dir "$WORK/data" --xds-addr "127.0.0.1:$xds" --api-addr "127.0.0.1:$api" -l warn \
    >"$WORK/cp.log" 2>&1 &
  CP=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$api/healthz" >/dev/null && break
    sleep 0.1
  done
  local flag=""
  [ "$mode" = delta ] && flag="--delta"
  timeout 900 "$LEGATE" xds-load --xds "127.0.0.1:$xds" --api "http://127.0.0.1:$api" --cp-pid "$CP" \
    --streams "$streams" --clusters "$clusters" --endpoints "$endpoints" --rounds 5 $flag
  kill "$CP"; wait "$CP" 2>/dev/null || true; CP=""
}

ulimit -n 65536 2>/dev/null || true
for n in ${STREAMS:-1000 10000}; do
  for mode in sotw delta; do
    run "$n" 10 1 "$mode"
  done
done
# A large config: 1,000 clusters with 10 endpoints each.
for mode in sotw delta; do
  run "${BIG_STREAMS:-1000}" 1000 10 "$mode"
done
