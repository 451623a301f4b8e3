#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: the same
# number for the same binary, bootstrap and load whatever else the machine is
# doing, so two builds can be compared where wall-clock runs are too noisy.
#
#   bash bench/instructions.sh BIN [BIN...]      # e.g. an old and a new build
#   REQUESTS=4000 PROTOCOLS="h1 h2c" bash bench/instructions.sh target/release/legate
#
# Each binary runs bench/bootstrap.yaml (one worker) under callgrind, with its
# own `legate echo --plain` upstream; 500 requests warm it up, the counters are
# zeroed, then REQUESTS requests (h2load, 10 connections, one stream each) are
# counted. The count covers every thread of the proxy, the runtime included.
# HTTP/1.1 repeats within a few hundred instructions; h2c depends more on how
# the streams interleave, so run it twice.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash bench/instructions.sh BIN [BIN...]" >&2; exit 2; }
REQUESTS="${REQUESTS:-4000}"
PROTOCOLS="${PROTOCOLS:-h1 h2c}"
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for tool in valgrind callgrind_control h2load curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (Debian: valgrind, nghttp2-client, curl)" >&2; exit 1; }
done
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

count() { # BIN PROTO: sets RESULT to the instructions per request (run in this shell, so the exit trap stops its processes)
  local bin=$1 proto=$2 up listen admin proxy upstream flag dump total
  up=$(free_port) listen=$(free_port) admin=$(free_port)
  sed -e "s/@LISTEN_PORT@/$listen/g" -e "s/@ADMIN_PORT@/$admin/g" -e "s/@UPSTREAM_PORT@/$up/g" \
    "$BENCH_DIR/bootstrap.yaml" >"$WORK/boot.yaml"
  "$bin" echo --listen "127.0.0.1:$up" --name up --plain >"$WORK/up.log" 2>&1 &
  upstream=$!
  PIDS=("$upstream")
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
    "$bin" proxy -c "$WORK/boot.yaml" --concurrency 1 -l warning >"$WORK/proxy.log" 2>&1 &
  proxy=$!
  PIDS+=("$proxy")
  for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -sf "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 ||
    { echo "$bin did not get ready under valgrind; see its log:" >&2; cat "$WORK/proxy.log" >&2; exit 1; }
  flag=""
  [ "$proto" = h1 ] && flag="--h1"
  h2load $flag -n 500 -c 10 -m 1 "http://127.0.0.1:$listen/" >/dev/null
  callgrind_control -z "$proxy" >/dev/null 2>&1
  h2load $flag -n "$REQUESTS" -c 10 -m 1 "http://127.0.0.1:$listen/" | grep -q "$REQUESTS succeeded" ||
    { echo "not every request succeeded against $bin ($proto)" >&2; exit 1; }
  callgrind_control -d "$proxy" >/dev/null 2>&1
  sleep 1
  kill "$proxy" "$upstream"
  wait "$proxy" 2>/dev/null || true
  wait "$upstream" 2>/dev/null || true
  PIDS=()
  dump=$(ls "$WORK"/cg."$proxy".* | sort | head -1)
  total=$(grep -E '^(summary|totals):' "$dump" | head -1 | awk '{print $2}')
  rm -f "$WORK"/cg.*
  RESULT=$((total / REQUESTS))
}

printf '%-9s %-12s %s\n' protocol instructions binary
for proto in $PROTOCOLS; do
  for bin in "$@"; do
    count "$bin" "$proto"
    printf '%-9s %-12s %s\n' "$proto" "$RESULT" "$bin"
  done
done
