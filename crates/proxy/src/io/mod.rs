//! Byte streams: what a connection runs on (plain TCP or a Unix socket, or
//! TLS over either) and the pipe that joins two of them. A leaf: nothing
//! here imports another part of the proxy.

pub mod pipe;
pub mod unix;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a connection can run on: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed stream; costs one indirect call per read or write.
pub type BoxIo = Box<dyn Io>;
