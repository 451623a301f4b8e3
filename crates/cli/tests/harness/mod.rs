//! The end-to-end tests' harness, one job per module:
//!
//! - `process`: processes killed by their PID when dropped, Envoy and
//!   `legate proxy` started on a file, free ports, waiting, scratch dirs;
//! - `install`: Envoy 1.40, a Python with grpcio, etcd, wrk,
//!   Chromium, Prometheus and Alertmanager, found or installed on first use;
//! - `agent`: `legate agent` for a node, stopped with its proxies;
//! - `alerting`: a webhook receiver and a real Alertmanager;
//! - `h2_load`: HTTP/2 load that resends what a draining server did not process;
//! - `sides`: Envoy and Legate side by side on the same config;
//! - `diff`: one request to both, what is compared, agreeing stats;
//! - `grpc_echo`: a gRPC server (tonic) and gRPC requests framed by hand;
//! - `template`: block-style bootstrap templates for a `sides::Pair`;
//! - `config`: flow-style bootstrap pieces for configs built per side;
//! - `xds`: control-plane resources and ADS bootstraps;
//! - `control`: the control plane, `legate ctl`, attached proxies, etcd;
//! - `certs`: test CAs and the certificates they issue;
//! - `jwt`: keys, JWKs and tokens;
//! - `upstream`: echo and TCP upstreams, Envoy as TLS or JWKS backend;
//! - `h2_raw`: an HTTP/2 upstream written frame by frame (SETTINGS, PINGs);
//! - `http_client`: HTTP/1.1 and h2c clients; `raw`: bytes on a socket;
//! - `tls`: a certificate-recording rustls client, and curl over TLS;
//! - `admin`: admin pages, stats and access logs of a proxy;
//! - `ws`: WebSocket and HTTP/2 CONNECT clients;
//! - `load`: steady traffic, counted;
//! - `browser`: headless Chromium over the DevTools Protocol (the console);
//! - `metrics_receiver`: a metrics and load-report collector that records
//!   what proxies send;
//! - `prometheus`: a real Prometheus scraping the control plane;
//! - `trace_collector`: OTLP/gRPC, Zipkin and (`trace_skywalking`)
//!   SkyWalking collectors and (`trace_datadog`) a Datadog agent that
//!   decode the spans proxies send.
//!
//! Each test binary compiles all of it and uses a part, hence
//! `allow(dead_code)`, and `allow(unused_imports)` on the re-exports.
#![allow(dead_code)]

pub mod admin;
pub mod agent;
pub mod alerting;
pub mod browser;
pub mod cache_origin;
pub mod certs;
pub mod config;
pub mod control;
pub mod diff;
pub mod grpc_echo;
pub mod grpc_server;
pub mod h2_load;
pub mod h2_raw;
pub mod http_client;
pub mod install;
pub mod jwt;
pub mod load;
pub mod metrics_receiver;
pub mod process;
pub mod prometheus;
pub mod raw;
pub mod sides;
pub mod template;
pub mod tls;
pub mod trace_collector;
pub mod trace_datadog;
pub mod trace_skywalking;
pub mod upstream;
pub mod ws;
pub mod xds;

#[allow(unused_imports)]
pub use admin::*;
#[allow(unused_imports)]
pub use control::*;
#[allow(unused_imports)]
pub use http_client::*;
#[allow(unused_imports)]
pub use install::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use sides::*;
#[allow(unused_imports)]
pub use upstream::*;
