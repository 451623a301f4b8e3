//! The two transports to the authorization service: gRPC
//! (`envoy.service.auth.v3.Authorization/Check` to a `GrpcService`: an
//! `envoy_grpc` cluster or a `google_grpc` target) and plain HTTP
//! (`http_service`, Envoy's `RawHttpClientImpl`).

use super::decision::{Allowed, Decision, Headers};
use crate::body::ProxyBody;
use crate::common::matcher::StringMatch;
use crate::http::filters::service::{self, GrpcTarget};
use crate::upstream::cluster::{Cluster, ClusterMap};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use legate_api::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// The header an HTTP service names request headers to remove in.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Where checks go.
pub(crate) struct Service {
    /// The HTTP service's cluster (a gRPC service names its own target).
    pub cluster: String,
    pub timeout: Duration,
    pub clusters: Arc<ArcSwap<ClusterMap>>,
    pub kind: Kind,
}

pub(crate) enum Kind {
    Grpc(GrpcTarget),
    Http(Box<HttpService>),
}

/// `http_service`, compiled.
pub(crate) struct HttpService {
    /// `server_uri`'s authority is not sent: the request keeps the client's.
    pub path_prefix: String,
    /// The request headers sent (`authorization`, `:method`, `:path`,
    /// `:authority` always, and `allowed_headers`).
    pub allowed: Vec<StringMatch>,
    pub headers_to_add: Headers,
    pub upstream: Vec<StringMatch>,
    pub upstream_append: Vec<StringMatch>,
    /// `allowed_client_headers`; empty: every header.
    pub client: Vec<StringMatch>,
    pub client_on_success: Vec<StringMatch>,
}

fn any(ms: &[StringMatch], name: &str) -> bool {
    ms.iter().any(|m| m.matches(name))
}

impl Service {
    /// Asks the service; every failure is `Decision::Error`.
    pub(crate) async fn check(&self, check: &CheckRequest) -> Decision {
        match &self.kind {
            Kind::Grpc(target) => self.grpc(target, check).await,
            Kind::Http(h) => {
                let cluster = self.clusters.load().get(&self.cluster).cloned();
                let Some(cluster) = cluster else { return Decision::Error };
                self.http(&cluster, h, check).await
            }
        }
    }

    async fn grpc(&self, target: &GrpcTarget, check: &CheckRequest) -> Decision {
        let msg = check.encode_to_vec();
        let clusters = self.clusters.load();
        let Some(bytes) = target.unary(&clusters, CHECK_PATH, &msg, self.timeout).await else {
            return Decision::Error;
        };
        match CheckResponse::decode(bytes) {
            Ok(r) => super::decision::from_grpc(r),
            Err(_) => Decision::Error,
        }
    }

    async fn http(&self, cluster: &Arc<Cluster>, s: &HttpService, check: &CheckRequest) -> Decision {
        let http = check.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        let Some(http) = http else { return Decision::Error };
        let body =
            if http.raw_body.is_empty() { Bytes::from(http.body.clone()) } else { Bytes::from(http.raw_body.clone()) };
        let mut req = http::Request::new(ProxyBody::full(body.clone()));
        let mut path = format!("{}{}", s.path_prefix, http.path);
        let mut authority = http.host.clone();
        let headers = req.headers_mut();
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let always = |k: &str| matches!(k, "authorization" | ":method" | ":path" | ":authority");
        for (k, v) in &http.headers {
            if k == "content-length" || !(always(k) || any(&s.allowed, k)) {
                continue;
            }
            match k.as_str() {
                ":method" => *req.method_mut() = http::Method::from_bytes(v.as_bytes()).unwrap_or(http::Method::GET),
                ":path" => path = format!("{}{v}", s.path_prefix),
                ":authority" => authority = v.clone(),
                k if k.starts_with(':') => {}
                _ => {
                    if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                        req.headers_mut().append(k, v);
                    }
                }
            }
        }
        for (k, v) in &s.headers_to_add {
            req.headers_mut().insert(k, v.clone());
        }
        let uri = if cluster.http2 { format!("http://{authority}{path}") } else { path };
        let Ok(uri) = uri.parse::<http::Uri>() else { return Decision::Error };
        *req.uri_mut() = uri;
        if !cluster.http2 {
            let Ok(a) = HeaderValue::from_str(&authority) else { return Decision::Error };
            req.headers_mut().insert(http::header::HOST, a);
        }
        let Some((status, head, body)) = service::send(cluster, req, self.timeout).await else {
            return Decision::Error;
        };
        from_http(s, status, head, body.to_bytes())
    }
}

/// An HTTP service's answer (Envoy's `RawHttpClientImpl::toResponse`): a
/// 5xx is an error, 200 allows with the headers its matchers pick, any
/// other status denies with its body and client headers.
fn from_http(s: &HttpService, status: u16, mut head: HeaderMap, body: Bytes) -> Decision {
    if (500..600).contains(&status) {
        return Decision::Error;
    }
    let to_remove: Vec<HeaderName> = head
        .get_all(HEADERS_TO_REMOVE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    head.remove(HEADERS_TO_REMOVE);
    // What described the service's own connection and message framing.
    for hop in [http::header::TRANSFER_ENCODING, http::header::CONNECTION, HeaderName::from_static("keep-alive")] {
        head.remove(hop);
    }
    let pick = |ms: &[StringMatch], all: bool| -> Headers {
        head.iter()
            .filter(|(k, _)| (all && ms.is_empty()) || any(ms, k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    if status == 200 {
        let a = Allowed {
            set: pick(&s.upstream, false),
            append: pick(&s.upstream_append, false),
            remove: to_remove,
            response_add: pick(&s.client_on_success, false),
            ..Default::default()
        };
        return Decision::Ok(Box::new(a));
    }
    let defaults = |k: &str| matches!(k, "content-length" | "www-authenticate" | "location");
    let headers = if s.client.is_empty() {
        pick(&[], true)
    } else {
        head.iter()
            .filter(|(k, _)| defaults(k.as_str()) || any(&s.client, k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    Decision::Denied { status, body: String::from_utf8_lossy(&body).into_owned(), headers }
}
