//! Bounds on what xDS clients can make the control plane hold, so a hostile
//! or broken client (garbage frames, floods of resource names or streams,
//! streams that never ACK) cannot exhaust its memory. Each refusal is a gRPC
//! status that says which bound and its value.
//!
//! - a request message: at most `MAX_MESSAGE_BYTES` decoded (tonic's limit,
//!   `RESOURCE_EXHAUSTED` beyond it);
//! - HTTP/2: at most `MAX_STREAMS_PER_CONNECTION` concurrent streams on a
//!   connection (SETTINGS; a stream over it is refused), header lists of at
//!   most `MAX_HEADER_LIST_BYTES`, and at most `MAX_PENDING_RESETS` streams
//!   reset before they were served (the rapid-reset flood);
//! - a stream: at most `MAX_NAMES_PER_STREAM` subscribed resource names (and
//!   delta's `initial_resource_versions`) over all its types, and
//!   `MAX_NAME_BYTES_PER_STREAM` of them;
//! - a client address: at most `--xds-max-connections-per-address`
//!   connections (default `MAX_CONNECTIONS_PER_ADDRESS`; `incoming`);
//! - the server: at most `MAX_STREAMS` streams, and `NAME_BUDGET_BYTES` of
//!   subscribed names over all streams (each name counted with
//!   `NAME_OVERHEAD` for the set that holds it).
//!
//! A stream that never ACKs holds nothing more: responses go out through a
//! channel of 16 and HTTP/2 flow control, and a session keeps only the
//! latest of what it sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tonic::Status;

pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The default of `--xds-max-connections-per-address` (`incoming`).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 1_000;
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
pub const MAX_PENDING_RESETS: usize = 64;
pub const MAX_NAMES_PER_STREAM: usize = 10_000;
pub const MAX_NAME_BYTES_PER_STREAM: usize = 1 << 20;
pub const MAX_STREAMS: usize = 20_000;
pub const NAME_BUDGET_BYTES: usize = 64 << 20;
/// What a subscribed name costs beyond its bytes (the set's node, the
/// string's header).
pub const NAME_OVERHEAD: usize = 64;

/// What all streams hold, shared by the services.
#[derive(Default)]
pub struct Budget {
    streams: AtomicUsize,
    name_bytes: AtomicUsize,
}

/// Adds `n` to `counter` unless that would pass `limit`.
fn take(counter: &AtomicUsize, n: usize, limit: usize) -> bool {
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_add(n).filter(|t| *t <= limit)).is_ok()
}

impl Budget {
    /// A stream's share of the budget: one stream, no names yet; refused
    /// when the server already serves `MAX_STREAMS`.
    pub fn open_stream(self: &Arc<Self>) -> Result<StreamCharge, Status> {
        if !take(&self.streams, 1, MAX_STREAMS) {
            return Err(Status::resource_exhausted(format!(
                "the control plane serves at most {MAX_STREAMS} xDS streams; try another replica or later"
            )));
        }
        Ok(StreamCharge { budget: self.clone(), names: 0, name_bytes: 0 })
    }

    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }
}

/// What one stream holds of the budget, given back when it ends.
pub struct StreamCharge {
    budget: Arc<Budget>,
    names: usize,
    name_bytes: usize,
}

/// The count and the charged bytes of `names`.
pub fn footprint<'a>(names: impl Iterator<Item = &'a String>) -> (usize, usize) {
    names.fold((0, 0), |(n, b), name| (n + 1, b + name.len() + NAME_OVERHEAD))
}

impl StreamCharge {
    /// Sets the stream's subscribed names to `count` names of `bytes`
    /// (charged); refused, leaving the charge as it was, over a bound.
    pub fn set_names(&mut self, count: usize, bytes: usize) -> Result<(), Status> {
        if count > MAX_NAMES_PER_STREAM {
            return Err(Status::resource_exhausted(format!(
                "{count} resource names on one xDS stream; at most {MAX_NAMES_PER_STREAM}"
            )));
        }
        if bytes > MAX_NAME_BYTES_PER_STREAM {
            return Err(Status::resource_exhausted(format!(
                "{bytes} bytes of resource names on one xDS stream; at most {MAX_NAME_BYTES_PER_STREAM}"
            )));
        }
        if bytes > self.name_bytes && !take(&self.budget.name_bytes, bytes - self.name_bytes, NAME_BUDGET_BYTES) {
            return Err(Status::resource_exhausted(format!(
                "the control plane holds {NAME_BUDGET_BYTES} bytes of subscribed resource names over all xDS streams already"
            )));
        }
        if bytes < self.name_bytes {
            self.budget.name_bytes.fetch_sub(self.name_bytes - bytes, Ordering::AcqRel);
        }
        (self.names, self.name_bytes) = (count, bytes);
        Ok(())
    }
}

impl Drop for StreamCharge {
    fn drop(&mut self) {
        self.budget.name_bytes.fetch_sub(self.name_bytes, Ordering::AcqRel);
        self.budget.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_bounded_and_gives_its_share_back() {
        let budget = Arc::new(Budget::default());
        let mut s = budget.open_stream().expect("stream");
        assert!(s.set_names(MAX_NAMES_PER_STREAM + 1, 10).is_err());
        assert!(s.set_names(10, MAX_NAME_BYTES_PER_STREAM + 1).is_err());
        s.set_names(10, 1000).expect("names");
        assert_eq!(budget.name_bytes.load(Ordering::Acquire), 1000);
        s.set_names(5, 400).expect("fewer");
        assert_eq!(budget.name_bytes.load(Ordering::Acquire), 400);
        drop(s);
        assert_eq!((budget.streams(), budget.name_bytes.load(Ordering::Acquire)), (0, 0));
    }

    #[test]
    fn the_server_refuses_a_stream_over_its_stream_count() {
        let budget = Arc::new(Budget::default());
        let held: Vec<StreamCharge> = (0..MAX_STREAMS).map(|_| budget.open_stream().expect("stream")).collect();
        let e = budget.open_stream().err().expect("one over");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("at most 20000 xDS streams"), "{}", e.message());
        drop(held);
        assert!(budget.open_stream().is_ok());
    }

    #[test]
    fn the_server_wide_name_budget_refuses_the_stream_that_would_pass_it() {
        let budget = Arc::new(Budget::default());
        let mut held = Vec::new();
        let per = MAX_NAME_BYTES_PER_STREAM;
        for _ in 0..NAME_BUDGET_BYTES / per {
            let mut s = budget.open_stream().expect("stream");
            s.set_names(1, per).expect("within the budget");
            held.push(s);
        }
        let mut last = budget.open_stream().expect("stream");
        let e = last.set_names(1, 1).expect_err("over the budget");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        held.pop();
        last.set_names(1, 1).expect("room again");
    }
}
