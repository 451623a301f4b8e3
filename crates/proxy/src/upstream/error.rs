//! Why an upstream request failed before a response arrived, with Envoy's
//! local-reply body and response flag for each reason; the router's retry
//! policy reads it too.

/// Why an upstream request failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect timeout")]
    ConnectTimeout,
    #[error("connect failure: {0}")]
    ConnectFailure(std::io::Error),
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    #[error("reset: {0}")]
    Reset(hyper::Error),
    /// A retry policy's per_try_timeout ran out on the last attempt.
    #[error("per-try timeout")]
    PerTryTimeout,
    /// A circuit breaker is open (pending requests or requests).
    #[error("overflow")]
    Overflow,
    /// The TLS handshake with the upstream failed (bad certificate, ...).
    #[error("TLS: {0}")]
    Tls(Box<dyn std::error::Error + Send + Sync>),
    /// A new connection pool was needed past `max_connection_pools`.
    #[error("connection pool overflow")]
    PoolOverflow,
}

impl UpstreamError {
    /// A request failed on its connection. With TLS 1.3 a server refuses a
    /// client certificate only after the client's handshake is done, so the
    /// refusal (an alert) arrives with the first request: Envoy reports that as
    /// a connect failure, and so does this. Walks the error's sources only on
    /// failure.
    pub fn from_request(e: hyper::Error) -> Self {
        if crate::tls::is_tls_error(&e) {
            Self::Tls(Box::new(e))
        } else {
            Self::Reset(e)
        }
    }

    /// Envoy's local-reply body for this failure (before response headers).
    pub fn local_reply_body(&self) -> String {
        match self {
            Self::ConnectTimeout => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection timeout".into()
            }
            Self::ConnectFailure(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
                    .into()
            }
            Self::Reset(e) if is_refused_stream(e) => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset"
                    .into()
            }
            Self::Handshake(_) | Self::Reset(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination".into()
            }
            Self::PerTryTimeout => "upstream request timeout".into(),
            Self::Overflow => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow".into()
            }
            Self::PoolOverflow => "no healthy upstream".into(),
            // Envoy keeps the TLS reason for the access log's details.
            Self::Tls(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
                    .into()
            }
        }
    }
    /// Envoy's response flag: UF (connect failure) or UC (connection termination).
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::ConnectTimeout | Self::ConnectFailure(_) | Self::Tls(_) => "UF",
            Self::Reset(e) if is_refused_stream(e) => "UR",
            Self::Handshake(_) | Self::Reset(_) => "UC",
            Self::PerTryTimeout => "UT",
            Self::Overflow => "UO",
            Self::PoolOverflow => "UH",
        }
    }
}

/// Whether an HTTP/2 upstream refused the stream (RST_STREAM with
/// REFUSED_STREAM): the request was not processed and can be retried under
/// `refused-stream`. Walks the error's sources; only called on failure.
pub fn is_refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            return h2e.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}
