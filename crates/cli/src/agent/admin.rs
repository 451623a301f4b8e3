//! The supervised proxy's admin, on loopback: `/ready` (is it serving) and
//! the calls a command makes.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_millis(800);

/// One HTTP/1.1 request to the admin on `port`: its status code.
fn request(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let req = format!("{method} {path} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    // "HTTP/1.1 200 ..."
    std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}

/// Whether the proxy answers `/ready` with 200 (LIVE).
pub fn ready(port: u16) -> bool {
    request(port, "GET", "/ready").is_ok_and(|c| c == 200)
}

/// `POST path` on the admin: Ok when answered 200.
pub fn post(port: u16, path: &str) -> Result<(), String> {
    match request(port, "POST", path) {
        Ok(200) => Ok(()),
        Ok(code) => Err(format!("{path} answered {code}")),
        Err(e) => Err(format!("{path}: {e}")),
    }
}
