//! The hot restart RPC: what the child asks its parent and what the parent
//! answers, framed as a 4-byte big-endian length and a JSON body. Listening
//! sockets travel beside a `Sockets` reply as SCM_RIGHTS descriptors, in the
//! order the reply lists them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The largest frame either side accepts (a stats reply of a large config
/// is well under this).
pub const MAX_FRAME: usize = 64 << 20;

/// The child's requests, in the order a restart uses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Who is asking: refused unless `epoch` is the parent's epoch + 1.
    Hello { epoch: u32 },
    /// Close the admin listener so the child can bind the same address.
    ShutdownAdmin,
    /// The addresses the parent listens on.
    ListenAddresses,
    /// Every per-worker socket listening on `address` (as Envoy's child asks
    /// per address), so the connections queued on each are not lost.
    PassSockets { address: String },
    /// Stop accepting and drain open connections for `--drain-time-s`.
    DrainListeners,
    /// Current counters and gauges.
    Stats,
    /// Exit now.
    Terminate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Hello {
        epoch: u32,
    },
    /// The admin listener is closed; `original_start_time` is when epoch 0
    /// started (seconds since the Unix epoch), carried for `/server_info`.
    AdminShutDown {
        original_start_time: u64,
    },
    Addresses {
        addresses: Vec<String>,
    },
    /// `count` descriptors travel with this frame.
    Sockets {
        address: String,
        count: usize,
    },
    Draining,
    Stats {
        counters: BTreeMap<String, u64>,
        gauges: BTreeMap<String, i64>,
    },
    Terminating,
    Refused {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// A message as one frame: length, then JSON.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len()))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The length announced by a frame's first four bytes, checked.
pub fn frame_len(head: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = Reply::Sockets { address: "127.0.0.1:80".into(), count: 2 };
        let f = encode(&r).expect("encode");
        let len = frame_len([f[0], f[1], f[2], f[3]]).expect("len");
        assert_eq!(len, f.len() - 4);
        assert_eq!(decode::<Reply>(&f[4..]).expect("decode"), r);
    }

    #[test]
    fn refuses_huge_and_garbage() {
        assert!(frame_len(u32::MAX.to_be_bytes()).is_err());
        assert!(decode::<Request>(b"{\"Nope\":1}").is_err());
    }
}
