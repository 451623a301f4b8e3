//! Hot restart, with Envoy's contract: a new process started with
//! `--restart-epoch N` (N > 0) and the same `--base-id` takes the listening
//! sockets of the running process (epoch N-1), which stops accepting, drains
//! its connections for `--drain-time-s` and exits when the new one asks,
//! `--parent-shutdown-time-s` after it started. Counters and gauges are
//! carried over as Envoy carries them.
//!
//! One job per file: `messages` (the RPC and its framing), `channel` (the
//! Unix domain socket and descriptor passing), `parent` (answering a child),
//! `child` (taking over from a parent), `stats` (merging the parent's stats).

pub mod channel;
pub mod child;
pub mod messages;
pub mod parent;
pub mod stats;

use std::time::Duration;

/// How often the child pulls the parent's stats (Envoy merges on each stats
/// flush, every 5 s by default).
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// The command-line side of a hot restart.
#[derive(Debug, Clone, Copy)]
pub struct RestartOptions {
    pub base_id: u64,
    pub epoch: u32,
    pub parent_shutdown_time: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HotRestartError {
    #[error(
        "hot restart: base-id {base_id} epoch {epoch} is already in use by a running process: start the new \
         process with --restart-epoch {next} (one more than the running one's), or use another --base-id",
        next = epoch + 1
    )]
    InUse { base_id: u64, epoch: u32 },
    #[error("hot restart: cannot listen for a future child: {0}")]
    Listen(std::io::Error),
    #[error(
        "hot restart: --restart-epoch {epoch} needs a running parent at epoch {parent} with base-id {base_id}, \
         and none answers ({source}); start the first process with epoch 0, and each next one with the running \
         one's epoch + 1",
        parent = epoch - 1
    )]
    NoParent { base_id: u64, epoch: u32, source: std::io::Error },
    #[error("hot restart: the parent refused: {0}")]
    Refused(String),
    #[error("hot restart: talking to the parent: {0}")]
    Link(#[from] channel::LinkError),
    #[error("hot restart: the parent answered {answer} to {request}")]
    Unexpected { request: &'static str, answer: String },
    #[error("hot restart: the parent passed a malformed listener address '{0}'")]
    BadAddress(String),
}

/// Claims this process's socket (so a future child finds it, and so two
/// processes cannot run with one base-id and epoch).
pub fn listen(o: &RestartOptions) -> Result<std::os::unix::net::UnixListener, HotRestartError> {
    channel::listen(o.base_id, o.epoch).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => HotRestartError::InUse { base_id: o.base_id, epoch: o.epoch },
        _ => HotRestartError::Listen(e),
    })
}
