//! How long series are kept and at what resolution:
//! `--metrics-retention 10s:24h,5m:30d` (the default) keeps services at 10 s
//! for a day and at 5 min for 30 days; proxies at the fine resolution for
//! at most an hour (a thousand proxies at 10 s for a day would not be small).
//! Services are also kept at one second for five minutes, so a short window
//! (a release step's analysis, an alert's) counts that window and not the
//! whole ten-second slot around it.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub fine: (Duration, Duration),
    pub coarse: (Duration, Duration),
    /// How long per-proxy series are kept (at the fine resolution).
    pub proxies: Duration,
    /// Services at one second, for short windows.
    pub recent: (Duration, Duration),
}

const RECENT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

impl Default for Retention {
    fn default() -> Self {
        Self {
            fine: (Duration::from_secs(10), Duration::from_secs(24 * 3600)),
            coarse: (Duration::from_secs(300), Duration::from_secs(30 * 24 * 3600)),
            proxies: Duration::from_secs(3600),
            recent: RECENT,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad retention {0:?}: expected RES:KEEP,RES:KEEP (e.g. 10s:24h,5m:30d), the coarse resolution a multiple of the fine one")]
pub struct RetentionError(String);

impl std::str::FromStr for Retention {
    type Err = RetentionError;
    fn from_str(s: &str) -> Result<Self, RetentionError> {
        let bad = || RetentionError(s.to_string());
        let tier = |t: &str| -> Result<(Duration, Duration), RetentionError> {
            let (res, keep) = t.split_once(':').ok_or_else(bad)?;
            let res = humantime::parse_duration(res.trim()).map_err(|_| bad())?;
            let keep = humantime::parse_duration(keep.trim()).map_err(|_| bad())?;
            if res.as_millis() < 1000 || keep < res {
                return Err(bad());
            }
            Ok((res, keep))
        };
        let parts: Vec<&str> = s.split(',').collect();
        let (fine, coarse) = match parts.as_slice() {
            [f] => (tier(f)?, tier(f)?),
            [f, c] => (tier(f)?, tier(c)?),
            _ => return Err(bad()),
        };
        if coarse.0.as_millis() % fine.0.as_millis() != 0 {
            return Err(bad());
        }
        Ok(Self { fine, coarse, proxies: fine.1.min(Duration::from_secs(3600)), recent: RECENT })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tiers() {
        assert_eq!("10s:24h,5m:30d".parse::<Retention>(), Ok(Retention::default()));
        assert!("10s".parse::<Retention>().is_err());
        assert!("10s:1h,7s:2h".parse::<Retention>().is_err());
    }
}
