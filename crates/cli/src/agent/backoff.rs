//! When to restart a proxy that stopped: an exponential backoff over the
//! restarts of the recent window, and the crash-loop limit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// Unplanned restarts within a window.
pub struct Backoff {
    limit: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

/// What to do about a proxy that stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// Too many restarts in the window: stop trying for a while.
    CrashLoop,
}

impl Backoff {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self { limit, window, recent: VecDeque::new() }
    }

    /// A process stopped at `now`: when to start the next one.
    pub fn stopped(&mut self, now: Instant) -> Next {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.limit {
            return Next::CrashLoop;
        }
        self.recent.push_back(now);
        let doublings = u32::try_from(self.recent.len() - 1).unwrap_or(u32::MAX).min(16);
        Next::RestartAfter(FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY))
    }

    /// After the crash-loop pause: a fresh start.
    pub fn reset(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_until_the_crash_loop_limit() {
        let mut b = Backoff::new(5, Duration::from_secs(60));
        let t = Instant::now();
        let delays: Vec<Next> = (0..6).map(|i| b.stopped(t + Duration::from_secs(i))).collect();
        let ms = |m| Next::RestartAfter(Duration::from_millis(m));
        assert_eq!(delays, vec![ms(100), ms(200), ms(400), ms(800), ms(1600), Next::CrashLoop]);
        // Restarts older than the window no longer count: those at 0 s and
        // 1 s have left it, three remain.
        assert_eq!(b.stopped(t + Duration::from_secs(62)), ms(800));
        b.reset();
        assert_eq!(b.stopped(t + Duration::from_secs(63)), ms(100));
    }
}
