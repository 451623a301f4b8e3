//! The Unix domain socket between a parent and its child, named from
//! `--base-id` and the epoch in the abstract namespace (nothing on disk to
//! clean up), and framed messages over it with descriptors beside them.

use crate::server::hot_restart::messages::{decode, encode, frame_len, FrameError};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

/// The kernel passes at most this many descriptors in one message (SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the other process closed the connection")]
    Closed,
    #[error("{0} descriptors in one message (the kernel passes at most {MAX_FDS})")]
    TooManyFds(usize),
}

/// The socket name of the process at `epoch`.
pub fn name(base_id: u64, epoch: u32) -> String {
    format!("legate_hot_restart_{base_id}_{epoch}")
}

fn address(base_id: u64, epoch: u32) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name(base_id, epoch).as_bytes())
}

/// Listens as the process at `epoch`, for its future child.
pub fn listen(base_id: u64, epoch: u32) -> std::io::Result<UnixListener> {
    UnixListener::bind_addr(&address(base_id, epoch)?)
}

/// Connects to the parent at `epoch`.
pub fn connect(base_id: u64, epoch: u32) -> std::io::Result<Link> {
    Ok(Link::new(UnixStream::connect_addr(&address(base_id, epoch)?)?))
}

/// One end of the conversation.
pub struct Link {
    stream: UnixStream,
    /// Descriptors received and not yet handed out.
    fds: VecDeque<OwnedFd>,
}

impl Link {
    pub fn new(stream: UnixStream) -> Self {
        Self { stream, fds: VecDeque::new() }
    }

    pub fn set_timeout(&self, t: Option<std::time::Duration>) -> std::io::Result<()> {
        self.stream.set_read_timeout(t)?;
        self.stream.set_write_timeout(t)
    }

    /// Sends `msg` with `fds` attached to its first byte.
    pub fn send<T: Serialize>(&mut self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), LinkError> {
        if fds.len() > MAX_FDS {
            return Err(LinkError::TooManyFds(fds.len()));
        }
        let frame = encode(msg)?;
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(fds));
        }
        let mut sent = sendmsg(&self.stream, &[IoSlice::new(&frame)], &mut control, SendFlags::NOSIGNAL)
            .map_err(std::io::Error::from)?;
        // The descriptors went with the first bytes; the rest goes plainly.
        while sent < frame.len() {
            let mut none = SendAncillaryBuffer::default();
            sent += sendmsg(&self.stream, &[IoSlice::new(&frame[sent..])], &mut none, SendFlags::NOSIGNAL)
                .map_err(std::io::Error::from)?;
        }
        Ok(())
    }

    /// The next message and the descriptors that came with it (or before).
    pub fn recv<T: for<'de> Deserialize<'de>>(&mut self) -> Result<(T, Vec<OwnedFd>), LinkError> {
        let mut head = [0u8; 4];
        self.read_exact(&mut head)?;
        let mut body = vec![0u8; frame_len(head)?];
        self.read_exact(&mut body)?;
        Ok((decode(&body)?, self.fds.drain(..).collect()))
    }

    /// Fills `buf`, keeping any descriptors that arrive on the way.
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), LinkError> {
        let mut filled = 0;
        while filled < buf.len() {
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = recvmsg(
                &self.stream,
                &mut [IoSliceMut::new(&mut buf[filled..])],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            for msg in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = msg {
                    self.fds.extend(fds);
                }
            }
            if got.bytes == 0 {
                return Err(LinkError::Closed);
            }
            filled += got.bytes;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::hot_restart::messages::Reply;
    use std::os::fd::AsFd;

    /// A listening socket sent over a socket pair arrives as a working
    /// descriptor for the same socket.
    #[test]
    fn passes_a_listening_socket() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (mut a, mut b) = (Link::new(a), Link::new(b));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let reply = Reply::Sockets { address: addr.to_string(), count: 1 };
        a.send(&reply, &[tcp.as_fd()]).expect("send");
        let (got, fds): (Reply, _) = b.recv().expect("recv");
        assert_eq!(got, reply);
        assert_eq!(fds.len(), 1);
        let passed = std::net::TcpListener::from(fds.into_iter().next().expect("fd"));
        assert_eq!(passed.local_addr().expect("addr"), addr);
        drop(tcp);
        // The original is closed; the passed copy still listens.
        let _c = std::net::TcpStream::connect(addr).expect("connect");
        assert!(passed.accept().is_ok());
    }
}
