//! `google.protobuf.Duration` to `std::time::Duration`, as Envoy reads it:
//! a negative part counts as zero (validation refuses negative durations
//! where Envoy does; elsewhere they clamp).

use crate::pb::google::protobuf::Duration as PbDuration;
use std::time::Duration;

/// The duration `d` stands for; negative seconds or nanos count as zero.
pub fn from_pb(d: &PbDuration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

/// `d`'s duration, or `default` when the field is unset.
pub fn or(d: Option<&PbDuration>, default: Duration) -> Duration {
    d.map_or(default, from_pb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_parts_clamp_and_unset_takes_the_default() {
        assert_eq!(from_pb(&PbDuration { seconds: 2, nanos: 500_000_000 }), Duration::from_millis(2500));
        assert_eq!(from_pb(&PbDuration { seconds: -1, nanos: -5 }), Duration::ZERO);
        assert_eq!(or(None, Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(or(Some(&PbDuration { seconds: 1, nanos: 0 }), Duration::from_secs(5)), Duration::from_secs(1));
    }
}
