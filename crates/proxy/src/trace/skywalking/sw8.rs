//! SkyWalking's cross-process propagation header `sw8` (protocol v3):
//! `{sample}-{trace}-{segment}-{span}-{service}-{instance}-{endpoint}-{target}`,
//! every text field base64-encoded, read and written as Envoy's SkyWalking
//! tracer (cpp2sky) does.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;

/// Padding optional when reading, as cpp2sky's `decodeWithoutPadding`.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The calling segment's context, as an `sw8` header carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub trace_id: String,
    pub segment_id: String,
    pub span_id: i32,
    pub service: String,
    pub instance: String,
    /// The caller's endpoint: its segment's first operation.
    pub endpoint: String,
    /// The address the caller used for this process.
    pub target: String,
}

/// An `sw8` value; None when it is not one (Envoy then starts a new trace,
/// or traces nothing when the request is not sampled).
pub fn parse(v: &str) -> Option<Context> {
    let fields: Vec<&str> = v.split('-').collect();
    let [sample, trace, segment, span, service, instance, endpoint, target] = fields.as_slice() else {
        return None;
    };
    if *sample != "0" && *sample != "1" {
        return None;
    }
    let text = |s: &str| LENIENT.decode(s).ok().and_then(|b| String::from_utf8(b).ok());
    Some(Context {
        trace_id: text(trace)?,
        segment_id: text(segment)?,
        span_id: span.parse().ok()?,
        service: text(service)?,
        instance: text(instance)?,
        endpoint: text(endpoint)?,
        target: text(target)?,
    })
}

/// The `sw8` value naming `c` as the parent (always sampled: `1`).
pub fn encode(c: &Context) -> String {
    let b = |s: &str| STANDARD.encode(s);
    format!(
        "1-{}-{}-{}-{}-{}-{}-{}",
        b(&c.trace_id),
        b(&c.segment_id),
        c.span_id,
        b(&c.service),
        b(&c.instance),
        b(&c.endpoint),
        b(&c.target)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sw8_round_trips_and_bad_values_are_refused() {
        // cpp2sky's own example: trace "1", segment "uuid", span 1.
        let v = "1-MQ==-dXVpZA==-1-bWVzaA==-c2VydmljZV8w-c2FtcGxlMQ==-MTAuMC4wLjE6NDQz";
        let c = parse(v).unwrap();
        assert_eq!((c.trace_id.as_str(), c.segment_id.as_str(), c.span_id), ("1", "uuid", 1));
        assert_eq!((c.service.as_str(), c.endpoint.as_str(), c.target.as_str()), ("mesh", "sample1", "10.0.0.1:443"));
        assert_eq!(encode(&c), v);
        assert!(parse("1-MQ-dXVpZA-1-bWVzaA-c2VydmljZV8w-c2FtcGxlMQ-MTAuMC4wLjE6NDQz").is_some(), "no padding");
        assert!(parse("2-MQ==-dXVpZA==-1-bWVzaA==-c2VydmljZV8w-c2FtcGxlMQ==-MTAuMC4wLjE6NDQz").is_none());
        assert!(parse("1-MQ==-dXVpZA==-x-bWVzaA==-c2VydmljZV8w-c2FtcGxlMQ==-MTAuMC4wLjE6NDQz").is_none());
        assert!(parse("1-MQ==-dXVpZA==-1-bWVzaA==").is_none());
    }
}
