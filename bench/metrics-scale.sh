#!/usr/bin/env bash
# The cost of fleet monitoring: N simulated proxies streaming their stats
# (10 clusters each, one flush every 5 s, as Envoy's metrics_service sink)
# to one `legate control-plane`, measuring its CPU and RSS over 60 s, then
# checking that /v1/top/services counts exactly what the streams reported.
# Loopback only; every run is bounded.
#
#   bash bench/metrics-scale.sh                 # N = 1,000
#   STREAMS="1000 5000" bash bench/metrics-scale.sh
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

ulimit -n 65536 2>/dev/null || true
for n in ${STREAMS:-1000}; do
  xds=$(free_port); api=$(free_port)
  rm -rf "$WORK/data"
  "$LEGATE" control-plane --data-dir "$WORK/data" --xds-addr "127.0.0.1:$xds" --api-addr "127.0.0.1:$api" -l warn \
    >"$WORK/cp.log" 2>&1 &
  CP=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$api/healthz" >/dev/null && break
    sleep 0.1
  done
  timeout 300 "$LEGATE" metrics-load --xds "127.0.0.1:$xds" --api "http://127.0.0.1:$api" --cp-pid "$CP" \
    --streams "$n" --clusters "${CLUSTERS:-10}" --every 5 --duration "${DURATION:-60}"
  echo "monitor.db: $(du -k "$WORK/data/monitor.db" | cut -f1) KiB"
  kill "$CP"; wait "$CP" 2>/dev/null || true; CP=""
done
