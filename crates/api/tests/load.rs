//! Loading Envoy YAML: leniencies, validation rules with field paths, semantic
//! checks, and the support verdict.

use legate_api::load::{check_bootstrap, load_bootstrap};
use legate_api::LoadError;

const CLUSTER: &str = r#"
static_resources:
  clusters:
  - name: c
    connect_timeout: 0.25s
    type: STATIC
    lb_policy: round_robin
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: PORT } } }
"#;

fn errors(yaml: &str) -> Vec<String> {
    match load_bootstrap(yaml) {
        Ok(_) => vec![],
        Err(LoadError::Invalid(e)) => e.iter().map(|e| e.to_string()).collect(),
        Err(other) => vec![other.to_string()],
    }
}

#[test]
fn envoy_leniencies_are_accepted() {
    // Lower-case enum, a duration, and (below) an object-form duration and a
    // single value where a list is expected.
    let loaded = load_bootstrap(&CLUSTER.replace("PORT", "8080")).expect("valid");
    let c = &loaded.bootstrap.static_resources.as_ref().unwrap().clusters[0];
    assert_eq!(c.lb_policy, 0);
    assert_eq!(c.connect_timeout.as_ref().unwrap().nanos, 250_000_000);

    let yaml = CLUSTER.replace("PORT", "8080").replace("connect_timeout: 0.25s", "connect_timeout: {seconds: 2}");
    let loaded = load_bootstrap(&yaml).expect("object duration");
    assert_eq!(loaded.bootstrap.static_resources.unwrap().clusters[0].connect_timeout.unwrap().seconds, 2);
}

#[test]
fn validation_rules_report_field_paths_and_pgv_wording() {
    let e = errors(&CLUSTER.replace("PORT", "70000"));
    assert_eq!(
        e,
        ["static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: value must be less than or equal to 65535"]
    );
    let e = errors(&CLUSTER.replace("PORT", "80").replace("connect_timeout: 0.25s", "connect_timeout: 0s"));
    assert_eq!(e, ["static_resources.clusters[0].connect_timeout: value must be greater than 0s"]);
    let e = errors(&CLUSTER.replace("PORT", "80").replace("- name: c", "- name: \"\""));
    assert_eq!(e, ["static_resources.clusters[0].name: value length must be at least 1 characters"]);
}

#[test]
fn unknown_fields_and_types_are_errors_with_paths() {
    let e = errors(&CLUSTER.replace("PORT", "80").replace("type: STATIC", "type: STATIC\n    bogus: 1"));
    assert_eq!(e, ["static_resources.clusters[0].bogus: unknown field in envoy.config.cluster.v3.Cluster"]);
    let e = errors("static_resources:\n  listeners:\n  - name: l\n    address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n    filter_chains:\n    - filters:\n      - name: x\n        typed_config: {\"@type\": type.googleapis.com/no.such.Type}\n");
    assert_eq!(e, ["static_resources.listeners[0].filter_chains[0].filters[0].typed_config: could not find @type 'type.googleapis.com/no.such.Type'"]);
}

#[test]
fn semantic_checks_match_envoy() {
    let e = errors(&format!("{}{}", CLUSTER.replace("PORT", "80"), "  - name: c\n    connect_timeout: 1s\n"));
    assert_eq!(e, ["static_resources.clusters[1].name: cluster manager: duplicate cluster 'c'"]);
    let e = errors(&CLUSTER.replace("127.0.0.1", "localhost").replace("PORT", "80"));
    assert_eq!(e.len(), 1);
    assert!(e[0].ends_with("socket_address.address: malformed IP address: localhost"), "{e:?}");
}

const LISTENER: &str = r#"
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          http_filters:
          - name: envoy.filters.http.router
            ROUTER
          route_config:
            virtual_hosts:
            - name: all
              domains: "*"
              routes:
              - match: { prefix: "/" }
                route: { cluster: CLUSTER }
  clusters:
  - name: c
    connect_timeout: 1s
"#;

fn listener(router: &str, cluster: &str) -> String {
    LISTENER.replace("ROUTER", router).replace("CLUSTER", cluster)
}

const ROUTER: &str = "typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}";

#[test]
fn routes_to_unknown_clusters_and_unconfigured_filters_are_errors() {
    assert!(errors(&listener(ROUTER, "c")).is_empty());
    let e = errors(&listener(ROUTER, "nope"));
    assert_eq!(e.len(), 1);
    assert!(e[0].ends_with("routes[0].route.cluster: route: unknown cluster 'nope'"), "{e:?}");
    let e = errors(&listener("", "c"));
    assert_eq!(
        e,
        ["static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]: Didn't find a registered implementation for 'envoy.filters.http.router' with type URL: ''"]
    );
}

#[test]
fn unsupported_fields_are_listed_not_ignored() {
    let ok = check_bootstrap(&listener(ROUTER, "c"));
    assert!(ok.is_valid() && ok.unsupported.is_empty(), "{:?}", ok.unsupported);
    let with_breakers = listener(ROUTER, "c").replace(
        "    connect_timeout: 1s\n",
        "    connect_timeout: 1s\n    circuit_breakers: { thresholds: [{ max_requests: 5, max_connection_pools: 2 }], per_host_thresholds: [{ max_connections: 2 }] }\n    common_http_protocol_options: { max_requests_per_connection: 3 }\n",
    );
    let r = check_bootstrap(&with_breakers);
    assert!(r.is_valid());
    assert_eq!(r.unsupported.len(), 1, "{:?}", r.unsupported);
    assert_eq!(r.unsupported[0].path, "static_resources.clusters[0].circuit_breakers.per_host_thresholds");
    // The same message is honoured on a cluster and refused, in part, on
    // the HTTP connection manager (the stream duration applies upstream
    // only; the header limits downstream only).
    let downstream_limits = listener(ROUTER, "c").replace(
        "stat_prefix: ingress\n",
        "stat_prefix: ingress\n          max_request_headers_kb: 8\n          common_http_protocol_options: { idle_timeout: 10s, max_requests_per_connection: 3, max_headers_count: 50, headers_with_underscores_action: DROP_HEADER, max_stream_duration: 1s }\n",
    );
    let r = check_bootstrap(&downstream_limits);
    assert_eq!(r.unsupported.len(), 1, "{:?}", r.unsupported);
    assert!(
        r.unsupported[0].path.ends_with("typed_config.common_http_protocol_options.max_stream_duration"),
        "{:?}",
        r.unsupported
    );
    let with_ext_proc = listener(ROUTER, "c").replace(
        "          - name: envoy.filters.http.router\n",
        "          - name: envoy.filters.http.ext_proc\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor, observability_mode: true}\n          - name: envoy.filters.http.router\n",
    );
    let r = check_bootstrap(&with_ext_proc);
    assert!(r.is_valid(), "{:?}", r.errors);
    assert!(
        r.unsupported.iter().any(|e| e.reason.contains("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor")),
        "{:?}",
        r.unsupported
    ); // `metadata_options` is honoured but for cluster metadata, refused by name.
    let with_metadata = with_ext_proc.replace(
        "observability_mode: true",
        "metadata_options: {forwarding_namespaces: {untyped: [a], typed: [b]}, receiving_namespaces: {untyped: [c]}, cluster_metadata_forwarding_namespaces: {untyped: [d]}}",
    );
    let r = check_bootstrap(&with_metadata);
    assert!(r.is_valid(), "{:?}", r.errors);
    assert_eq!(r.unsupported.len(), 1, "{:?}", r.unsupported);
    assert!(
        r.unsupported[0].path.ends_with("typed_config.metadata_options.cluster_metadata_forwarding_namespaces"),
        "{:?}",
        r.unsupported
    );
}

/// A file config source is implemented for secrets only: under an
/// `SdsSecretConfig` it is accepted, for CDS it is listed.
#[test]
fn file_config_source_only_for_secrets() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let tls = "static_resources:\n  listeners:\n  - address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n    filter_chains:\n    - transport_socket: {name: tls, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {tls_certificate_sds_secret_configs: [{name: s, sds_config: {path_config_source: {path: FILE, watched_directory: {path: /}}}}], validation_context_sds_secret_config: {name: ca}}}}\n      filters: [{name: tcp, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}]\n  secrets:\n  - {name: ca, validation_context: {trusted_ca: {inline_string: x}}}\n";
    let r = check_bootstrap(&tls.replace("FILE", file));
    assert!(r.is_valid(), "{:?}", r.errors);
    assert!(r.unsupported.is_empty(), "{:?}", r.unsupported);
    let cds = format!("dynamic_resources:\n  cds_config: {{path_config_source: {{path: {file}}}}}\n");
    let r = check_bootstrap(&cds);
    assert!(r.is_valid(), "{:?}", r.errors);
    assert_eq!(r.unsupported.len(), 1, "{:?}", r.unsupported);
    assert_eq!(r.unsupported[0].path, "dynamic_resources.cds_config.path_config_source");
}

/// The metrics service sink and load reporting are honoured field by field
/// (tags as labels and batches included); other sinks are named.
#[test]
fn stats_sinks_and_load_reports_in_the_support_table() {
    let sinks = "stats_flush_interval: 5s\nstats_sinks:\n- name: envoy.stat_sinks.metrics_service\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig\n    transport_api_version: V3\n    report_counters_as_deltas: true\n    histogram_emit_mode: HISTOGRAM\n    grpc_service: { envoy_grpc: { cluster_name: c } }\ncluster_manager:\n  load_stats_config: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: c } }] }\n";
    let ok = check_bootstrap(&format!("{sinks}{}", listener(ROUTER, "c")));
    assert!(ok.is_valid() && ok.unsupported.is_empty(), "{:?} {:?}", ok.errors, ok.unsupported);
    let tags = sinks.replace(
        "    transport_api_version: V3\n",
        "    transport_api_version: V3\n    emit_tags_as_labels: true\n    batch_size: 10\n",
    );
    let r = check_bootstrap(&format!("{tags}{}", listener(ROUTER, "c")));
    assert!(r.is_valid() && r.unsupported.is_empty(), "{:?} {:?}", r.errors, r.unsupported);
    let statsd = "stats_sinks:\n- name: envoy.stat_sinks.statsd\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink\n    address: { socket_address: { address: 127.0.0.1, port_value: 8125 } }\n";
    let r = check_bootstrap(&format!("{statsd}{}", listener(ROUTER, "c")));
    assert!(
        r.unsupported.iter().any(|e| e.reason.contains("envoy.config.metrics.v3.StatsdSink")),
        "{:?}",
        r.unsupported
    );
}

#[test]
fn tracing_in_the_support_table() {
    let with = |tracing: &str| {
        listener(ROUTER, "c").replace(
            "          stat_prefix: ingress\n",
            &format!("          stat_prefix: ingress\n          tracing: {{{tracing}}}\n"),
        )
    };
    let zipkin = |fields: &str| {
        format!("provider: {{name: envoy.tracers.zipkin, typed_config: {{\"@type\": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: c, collector_endpoint: /api/v2/spans, {fields}}}}}")
    };
    let full = format!(
        "{}, random_sampling: {{value: 50}}, client_sampling: {{value: 100}}, overall_sampling: {{value: 100}}, max_path_tag_length: 64, spawn_upstream_span: true, custom_tags: [{{tag: a, literal: {{value: b}}}}, {{tag: h, request_header: {{name: x-h, default_value: d}}}}, {{tag: e, environment: {{name: E, default_value: d}}}}]",
        zipkin("collector_endpoint_version: HTTP_JSON, trace_id_128bit: true, shared_span_context: false, collector_hostname: z")
    );
    let ok = check_bootstrap(&with(&full));
    assert!(ok.is_valid() && ok.unsupported.is_empty(), "{:?} {:?}", ok.errors, ok.unsupported);
    let otel = "provider: {name: envoy.tracers.opentelemetry, typed_config: {\"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig, grpc_service: {envoy_grpc: {cluster_name: c}, timeout: 1s}, service_name: s}}";
    let ok = check_bootstrap(&with(otel));
    assert!(ok.is_valid() && ok.unsupported.is_empty(), "{:?} {:?}", ok.errors, ok.unsupported);
    let tail = |r: &legate_api::Report| -> Vec<String> {
        r.unsupported.iter().map(|e| e.path.rsplit(".tracing.").next().unwrap_or_default().to_string()).collect()
    };
    let r = check_bootstrap(&with(&format!("{}, verbose: true", zipkin("collector_endpoint_version: HTTP_JSON"))));
    assert_eq!(tail(&r), ["verbose"]);
    let r = check_bootstrap(&with(&zipkin("collector_endpoint_version: GRPC")));
    assert_eq!(tail(&r), ["provider.typed_config.collector_endpoint_version"]);
    let sky = "provider: {name: envoy.tracers.skywalking, typed_config: {\"@type\": type.googleapis.com/envoy.config.trace.v3.SkyWalkingConfig, grpc_service: {envoy_grpc: {cluster_name: c}, timeout: 0.25s}, client_config: {service_name: s, instance_name: i, backend_token: t, max_cache_size: 10}}}";
    let ok = check_bootstrap(&with(sky));
    assert!(ok.is_valid() && ok.unsupported.is_empty(), "{:?} {:?}", ok.errors, ok.unsupported);
    let dd = "provider: {name: envoy.tracers.datadog, typed_config: {\"@type\": type.googleapis.com/envoy.config.trace.v3.DatadogConfig, collector_cluster: c, service_name: s}}";
    let ok = check_bootstrap(&with(dd));
    assert!(ok.is_valid() && ok.unsupported.is_empty(), "{:?} {:?}", ok.errors, ok.unsupported);
    // The agent polled for sampling rules: observable, not built.
    let r = check_bootstrap(&with(&dd.replace("service_name: s", "service_name: s, remote_config: {}")));
    assert_eq!(tail(&r), ["provider.typed_config.remote_config"]);
}

/// The global rate limit filter's fields Legate reads load as they are;
/// those it does not are named.
#[test]
fn global_rate_limit_in_the_support_table() {
    let with = |fields: &str| {
        listener(ROUTER, "c").replace(
            "          http_filters:\n",
            &format!("          http_filters:\n          - name: envoy.filters.http.ratelimit\n            typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit, domain: d, rate_limit_service: {{grpc_service: {{envoy_grpc: {{cluster_name: c}}}}, transport_api_version: V3}}{fields}}}\n"),
        )
    };
    let ok = check_bootstrap(&with(", stage: 1, request_type: external, timeout: 1s, failure_mode_deny: true, enable_x_ratelimit_headers: DRAFT_VERSION_03, disable_x_envoy_ratelimited_header: true, rate_limited_status: {code: 503}, status_on_error: {code: 500}, stat_prefix: p"));
    assert!(ok.is_valid() && ok.unsupported.is_empty(), "{:?} {:?}", ok.errors, ok.unsupported);
    let r = check_bootstrap(&with(", rate_limited_as_resource_exhausted: true"));
    assert!(
        r.unsupported.iter().any(|e| e.path.ends_with("typed_config.rate_limited_as_resource_exhausted")),
        "{:?}",
        r.unsupported
    );
}

/// `google_grpc` (and `initial_metadata`) only where a filter calls it
/// (ext_authz); the rate limit filter's service stays `envoy_grpc` only,
/// and what a Google gRPC client Legate lacks is named.
#[test]
fn google_grpc_only_where_built() {
    let filter = |name: &str, ty: &str, grpc: &str, extra: &str| {
        listener(ROUTER, "c").replace(
            "          http_filters:\n",
            &format!("          http_filters:\n          - name: {name}\n            typed_config: {{\"@type\": type.googleapis.com/{ty}, {extra}{grpc}}}\n"),
        )
    };
    let authz = |grpc: &str| {
        filter(
            "envoy.filters.http.ext_authz",
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            &format!("grpc_service: {grpc}"),
            "transport_api_version: V3, ",
        )
    };
    let google = "{google_grpc: {target_uri: \"127.0.0.1:9191\", stat_prefix: authz, channel_credentials: {ssl_credentials: {root_certs: {inline_string: x}}}}, timeout: 0.5s, initial_metadata: [{key: x-tenant, value: a}]}";
    let ok = check_bootstrap(&authz(google));
    assert!(ok.is_valid() && ok.unsupported.is_empty(), "{:?} {:?}", ok.errors, ok.unsupported);
    let r = check_bootstrap(&authz(
        "{google_grpc: {target_uri: \"127.0.0.1:9191\", stat_prefix: a, call_credentials: [{access_token: t}]}}",
    ));
    assert!(
        r.unsupported.iter().any(|e| e.path.ends_with("grpc_service.google_grpc.call_credentials")),
        "{:?}",
        r.unsupported
    );
    let r = check_bootstrap(&filter(
        "envoy.filters.http.ratelimit",
        "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        &format!("rate_limit_service: {{grpc_service: {google}, transport_api_version: V3}}"),
        "domain: d, ",
    ));
    assert!(
        r.unsupported.iter().any(|e| e.path.ends_with("rate_limit_service.grpc_service.google_grpc")),
        "{:?}",
        r.unsupported
    );
}

/// `refresh_delay` is read by Envoy for REST sources only: a gRPC source
/// with it runs as without it; a REST source with `cluster_names` loads.
#[test]
fn refresh_delay_on_a_grpc_source() {
    let source = |api_type: &str| {
        format!("{}dynamic_resources:\n  cds_config:\n    resource_api_version: V3\n    api_config_source: {{api_type: {api_type}, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: c}}}}], refresh_delay: 5s}}\nnode: {{id: n, cluster: k}}\n", listener(ROUTER, "c"))
    };
    let ok = check_bootstrap(&source("GRPC"));
    assert!(ok.is_valid() && ok.unsupported.is_empty(), "{:?} {:?}", ok.errors, ok.unsupported);
    let rest = format!("{}dynamic_resources:\n  cds_config:\n    resource_api_version: V3\n    api_config_source: {{api_type: REST, transport_api_version: V3, cluster_names: [c], refresh_delay: 0.5s, request_timeout: 2s}}\nnode: {{id: n, cluster: k}}\n", listener(ROUTER, "c"));
    let r = check_bootstrap(&rest);
    assert!(r.is_valid() && r.unsupported.is_empty(), "{:?} {:?}", r.errors, r.unsupported);
}

#[test]
fn legates_least_response_time_policy_loads_with_its_rules() {
    let with = |cfg: &str| {
        CLUSTER.replace("PORT", "80").replace(
            "    lb_policy: round_robin\n",
            &format!("    load_balancing_policy:\n      policies:\n      - typed_extension_config:\n          name: legate.lb.least_response_time\n          typed_config: {{\"@type\": type.googleapis.com/legate.lb.v1.LeastResponseTime{cfg}}}\n"),
        )
    };
    let ok = check_bootstrap(&with(", decay: 5s, default_rtt: 0.02s"));
    assert!(ok.is_valid() && ok.unsupported.is_empty(), "{:?} {:?}", ok.errors, ok.unsupported);
    let loaded = load_bootstrap(&with(", decay: 5s")).expect("valid");
    let c = &loaded.bootstrap.static_resources.as_ref().unwrap().clusters[0];
    let any = c.load_balancing_policy.as_ref().unwrap().policies[0].typed_extension_config.as_ref().unwrap();
    let cfg: legate_api::legate::lb::v1::LeastResponseTime =
        legate_api::any::unpack(any.typed_config.as_ref().unwrap()).expect("typed");
    assert_eq!(cfg.decay.unwrap().seconds, 5);
    let e = errors(&with(", decay: 0s"));
    assert_eq!(e, ["static_resources.clusters[0].load_balancing_policy.policies[0].typed_extension_config.typed_config.decay: value must be greater than 0s"]);
    let r = check_bootstrap(&with(", bogus: 1"));
    assert!(!r.is_valid(), "an unknown field of the policy is refused");
    let unknown = with("").replace("legate.lb.v1.LeastResponseTime", "legate.lb.v1.Fastest");
    assert!(!errors(&unknown).is_empty(), "an unknown policy stays refused");
}
