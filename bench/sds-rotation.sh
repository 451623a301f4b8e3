#!/usr/bin/env bash
# How soon a certificate moved into place in an SDS file is served to new
# connections, by Envoy 1.40 and by legate proxy, from the same bootstrap
# (a listener whose certificate comes from `path_config_source`).
#
#   bash bench/sds-rotation.sh            # 10 rotations
#   ROTATIONS=20 bash bench/sds-rotation.sh
#
# Environment (all optional):
#   ENVOY_BIN    an Envoy 1.40 binary (default: the one the tests install
#                under ${LEGATE_CACHE:-~/.cache/legate}/envoy-1.40.0)
#   LEGATE_BIN   a legate binary (default: target/debug/legate; the time
#                measured is the file watcher's, not the build's)
# Needs python3 and openssl. Listens on 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LEGATE_CACHE:-$HOME/.cache/legate}"
ENVOY_BIN="${ENVOY_BIN:-$(compgen -G "$CACHE/envoy-1.40.0/lib/python3*/site-packages/envoy/_bin/envoy" | head -1 || true)}"
LEGATE_BIN="${LEGATE_BIN:-$ROOT/target/debug/legate}"
ROTATIONS="${ROTATIONS:-10}"
[[ -x "$ENVOY_BIN" ]] || { echo "no Envoy: set ENVOY_BIN (or run a differential test once to install it)" >&2; exit 1; }
[[ -x "$LEGATE_BIN" ]] || { echo "no legate at $LEGATE_BIN: cargo build -p legate, or set LEGATE_BIN" >&2; exit 1; }

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

for n in c1 c2; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/$n.key" \
    -out "$WORK/$n.pem" -days 30 -subj /CN=a.example.com 2>/dev/null
done

cat >"$WORK/rotate.py" <<'PY'
import json, os, random, socket, ssl, statistics, subprocess, sys, time

work, rotations = sys.argv[1], int(sys.argv[2])
ports = {"envoy": int(sys.argv[3]), "legate": int(sys.argv[4])}

def sds(name):
    c = open(f"{work}/{name}.pem").read()
    k = open(f"{work}/{name}.key").read()
    return ('resources:\n- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n'
            f'  name: server\n  tls_certificate:\n    certificate_chain: {{inline_string: {json.dumps(c)}}}\n'
            f'    private_key: {{inline_string: {json.dumps(k)}}}\n')

def served(port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            with ctx.wrap_socket(s, server_hostname="a.example.com") as t:
                return t.getpeercert(binary_form=True)
    except OSError:
        return None

if sys.argv[5] == "init":
    open(f"{work}/sds.yaml", "w").write(sds("c1"))
    sys.exit(0)

der = {n: ssl.PEM_cert_to_DER_cert(open(f"{work}/{n}.pem").read()) for n in ("c1", "c2")}
deadline = time.monotonic() + 20
while any(served(p) != der["c1"] for p in ports.values()):
    if time.monotonic() > deadline:
        sys.exit("the proxies did not start serving c1")
    time.sleep(0.1)
took = {w: [] for w in ports}
cur = "c1"
for _ in range(rotations):
    nxt = "c2" if cur == "c1" else "c1"
    open(f"{work}/sds.tmp", "w").write(sds(nxt))
    t0 = time.monotonic()
    os.rename(f"{work}/sds.tmp", f"{work}/sds.yaml")
    pending = set(ports)
    while pending and time.monotonic() - t0 < 3:
        for w in list(pending):
            if served(ports[w]) == der[nxt]:
                took[w].append((time.monotonic() - t0) * 1000)
                pending.discard(w)
        time.sleep(0.002)
    for w in pending:
        took[w].append(float("inf"))
    cur = nxt
    # A random pause: a fixed one would lock onto a polling watcher's phase.
    time.sleep(random.uniform(0.2, 0.5))
for w, v in took.items():
    print(f"{w:7s} moved into place -> served to a new connection: median {statistics.median(v):.0f} ms, max {max(v):.0f} ms ({len(v)} rotations)")
PY

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
python3 "$WORK/rotate.py" "$WORK" 0 0 0 init
declare -A LISTEN
for who in envoy legate; do
  admin="$(free_port)"; LISTEN[$who]="$(free_port)"
  cat >"$WORK/$who.yaml" <<YAML
node: {id: bench, cluster: bench}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: ${LISTEN[$who]}}}
    filter_chains:
    - transport_socket: {name: tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {tls_certificate_sds_secret_configs: [{name: server, sds_config: {path_config_source: {path: "$WORK/sds.yaml"}}}]}}}
      filters: [{name: envoy.filters.network.http_connection_manager, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: b, route_config: {virtual_hosts: [{name: a, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}]}, http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]}}]
YAML
done
"$ENVOY_BIN" -c "$WORK/envoy.yaml" --concurrency 1 --base-id "$((RANDOM + 1000))" -l error >"$WORK/envoy.log" 2>&1 &
PIDS+=($!)
"$LEGATE_BIN" proxy --concurrency 1 -l warn -c "$WORK/legate.yaml" >"$WORK/legate.log" 2>&1 &
PIDS+=($!)
python3 "$WORK/rotate.py" "$WORK" "$ROTATIONS" "${LISTEN[envoy]}" "${LISTEN[legate]}" run
