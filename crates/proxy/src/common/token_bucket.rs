//! Envoy's token bucket (`envoy.type.v3.TokenBucket`), shared by the HTTP
//! and network local rate limits.

use legate_api::pb::envoy::r#type::v3::TokenBucket as PbTokenBucket;
use std::time::{Duration, Instant};

/// A token bucket refilled lazily: `tokens_per_fill` every `fill_interval`,
/// up to `max_tokens`, starting full. One bucket per filter, shared by every
/// worker (Envoy's default), so a short mutex per take: ~20 ns uncontended.
pub struct TokenBucket {
    max: u64,
    per_fill: u64,
    interval: Duration,
    state: std::sync::Mutex<(u64, Instant)>,
}

impl TokenBucket {
    /// `path` names the field in errors.
    pub fn compile(tb: &PbTokenBucket, path: &str) -> Result<Self, String> {
        let interval = tb.fill_interval.as_ref().map_or(Duration::ZERO, legate_api::duration::from_pb);
        if interval.is_zero() {
            return Err(format!("{path}.fill_interval must be greater than 0"));
        }
        let max = u64::from(tb.max_tokens);
        Ok(Self {
            max,
            per_fill: tb.tokens_per_fill.map_or(1, |v| u64::from(v.value)),
            interval,
            state: std::sync::Mutex::new((max, Instant::now())),
        })
    }

    /// Tokens per second, by which Envoy orders matched descriptors.
    pub fn fill_rate(&self) -> f64 {
        self.per_fill as f64 / self.interval.as_secs_f64()
    }

    /// A new, full bucket with the same settings.
    pub fn fresh(&self) -> Self {
        Self {
            max: self.max,
            per_fill: self.per_fill,
            interval: self.interval,
            state: std::sync::Mutex::new((self.max, Instant::now())),
        }
    }

    /// Takes a token if there is one.
    pub fn take(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let fills = (now.duration_since(st.1).as_nanos() / self.interval.as_nanos().max(1)) as u64;
        if fills > 0 {
            st.0 = (st.0 + fills.saturating_mul(self.per_fill)).min(self.max);
            st.1 += self.interval * fills.min(u32::MAX as u64) as u32;
        }
        if st.0 > 0 {
            st.0 -= 1;
            true
        } else {
            false
        }
    }
}
