//! The monotonic millisecond clock that upstream timing shares: connection
//! idle times, slow-start windows and health stamps.

/// Milliseconds since the process first asked (a monotonic clock; never 0).
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}
