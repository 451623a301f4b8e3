//! Unix domain socket addresses (`envoy.config.core.v3.Pipe`) as Envoy reads
//! them: a path in the file system, or, with a leading `@`, a name in
//! Linux's abstract namespace (the `@` stands for the address's first NUL
//! byte). Shown as configured, `@` included, as Envoy's `PipeInstance`
//! prints itself.

use std::fmt;

/// The longest `sun_path` Linux takes (`sizeof(sun_path)`, 108 bytes),
/// including the terminating NUL of a file-system path.
const SUN_PATH_MAX: usize = 108;

/// A Unix socket address: a file-system path or an abstract name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnixAddr {
    /// As configured (`@name` for an abstract socket).
    path: String,
}

impl UnixAddr {
    /// Reads `Pipe.path` and `Pipe.mode` as Envoy does: a path must fit a
    /// `sockaddr_un`; an abstract socket has no file, so no mode.
    pub fn parse(path: &str, mode: u32) -> Result<Self, String> {
        if path.is_empty() {
            return Err("pipe.path: must not be empty".into());
        }
        let abstract_ = path.starts_with('@');
        if abstract_ && mode != 0 {
            return Err("pipe.mode: cannot set mode for Abstract AF_UNIX sockets".into());
        }
        // A path needs room for its NUL; an abstract name's `@` takes the
        // place of its leading NUL.
        let room = if abstract_ { SUN_PATH_MAX } else { SUN_PATH_MAX - 1 };
        if path.len() > room {
            return Err(format!("pipe.path: {path} exceeds maximum UNIX domain socket path size of {}", room));
        }
        if path.contains('\0') {
            return Err("pipe.path: must not contain a NUL byte".into());
        }
        Ok(Self { path: path.to_string() })
    }

    /// The name in the abstract namespace, without its `@`.
    pub fn abstract_name(&self) -> Option<&str> {
        self.path.strip_prefix('@')
    }

    /// The path as configured.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// The socket address to connect to or bind.
    pub fn socket_addr(&self) -> std::io::Result<std::os::unix::net::SocketAddr> {
        match self.abstract_name() {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&self.path),
        }
    }

    /// Connects to it. A connect to a Unix socket completes at once or
    /// fails at once (a full backlog refuses it), so the blocking call is
    /// short; the stream is handed to tokio non-blocking.
    pub fn connect(&self) -> std::io::Result<tokio::net::UnixStream> {
        let addr = self.socket_addr()?;
        let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        s.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(s)
    }
}

impl fmt::Display for UnixAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_as_envoy_reads_them() {
        let a = UnixAddr::parse("@legate-test", 0).unwrap();
        assert_eq!(a.abstract_name(), Some("legate-test"));
        assert_eq!(a.to_string(), "@legate-test");
        assert!(UnixAddr::parse("@x", 0o644).unwrap_err().contains("Abstract"));
        assert!(UnixAddr::parse(&"/a".repeat(60), 0).unwrap_err().contains("maximum"));
        let p = UnixAddr::parse("/tmp/x.sock", 0o600).unwrap();
        assert_eq!(p.abstract_name(), None);
        assert!(UnixAddr::parse("", 0).is_err());
    }

    #[tokio::test]
    async fn connects_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("legate-unix-test-{}", std::process::id());
        let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let l = std::os::unix::net::UnixListener::bind_addr(&sa).unwrap();
        let a = UnixAddr::parse(&format!("@{name}"), 0).unwrap();
        let _s = a.connect().unwrap();
        assert!(l.accept().is_ok());
    }
}
