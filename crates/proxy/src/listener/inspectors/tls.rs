//! `envoy.filters.listener.tls_inspector`: peeks at the first bytes of a
//! connection, without consuming them, to learn whether it is TLS and, from
//! the ClientHello, its SNI and ALPN protocols.

use std::time::Duration;

/// What the inspector learned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hello {
    pub tls: bool,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Not enough bytes yet; at least this many are needed.
    NeedMore(usize),
    Done(Hello),
}

/// Envoy reads at most 64 KiB of ClientHello.
const MAX_HELLO: usize = 64 * 1024;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| (b[0] as usize) << 8 | b[1] as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// Reads a ClientHello from the start of a connection. Anything that is not
/// a TLS handshake record is `raw_buffer`, as is a malformed hello.
pub fn parse(buf: &[u8]) -> Parse {
    let not_tls = Parse::Done(Hello::default());
    // Envoy decides on a whole record header, even for plain text.
    if buf.len() < 5 {
        return Parse::NeedMore(5);
    }
    if buf[0] != 0x16 || buf[1] != 0x03 {
        return not_tls;
    }
    // Handshake messages may span records: gather the payloads. `NeedMore`
    // counts bytes from the start of the connection.
    let mut payload = Vec::new();
    let mut off = 0;
    loop {
        let rest = &buf[off..];
        if rest.len() < 5 {
            return Parse::NeedMore(off + 5);
        }
        if rest[0] != 0x16 {
            return not_tls;
        }
        let len = (rest[3] as usize) << 8 | rest[4] as usize;
        if rest.len() < 5 + len {
            return Parse::NeedMore(off + 5 + len);
        }
        payload.extend_from_slice(&rest[5..5 + len]);
        off += 5 + len;
        if payload.len() >= 4 {
            let hs_len = (payload[1] as usize) << 16 | (payload[2] as usize) << 8 | payload[3] as usize;
            if payload[0] != 1 || hs_len > MAX_HELLO {
                return not_tls;
            }
            if payload.len() >= 4 + hs_len {
                break;
            }
        }
    }
    match client_hello(&payload) {
        Some(h) => Parse::Done(h),
        None => not_tls,
    }
}

fn client_hello(payload: &[u8]) -> Option<Hello> {
    let mut r = Reader(payload);
    r.u8()?; // handshake type (1)
    let len = r.u24()?;
    let mut r = Reader(r.take(len)?);
    r.take(2 + 32)?; // version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut hello = Hello { tls: true, ..Hello::default() };
    let Some(exts) = r.vec16() else { return Some(hello) };
    let mut exts = Reader(exts);
    while let (Some(ty), Some(body)) = (exts.u16(), exts.vec16()) {
        let mut b = Reader(body);
        match ty {
            0 => {
                let mut list = Reader(b.vec16()?);
                while let (Some(kind), Some(name)) = (list.u8(), list.vec16()) {
                    if kind == 0 {
                        hello.sni = std::str::from_utf8(name).ok().map(|s| s.to_ascii_lowercase());
                        break;
                    }
                }
            }
            16 => {
                let mut list = Reader(b.vec16()?);
                while let Some(p) = list.vec8() {
                    hello.alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

/// Peeks until a ClientHello (or something else) is recognised, within
/// `timeout` (Envoy's `listener_filters_timeout`, 15 s by default; a
/// connection that times out is closed). `Ok(None)` means the peer closed or
/// timed out.
pub async fn inspect(stream: &tokio::net::TcpStream, timeout: Duration) -> std::io::Result<Option<Hello>> {
    let work = async {
        let mut buf = vec![0u8; 1024];
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            // Envoy closes a connection whose peer ends its side while the
            // listener filters still run.
            if stream.ready(tokio::io::Interest::READABLE).await?.is_read_closed() {
                return Ok(None);
            }
            match parse(&buf[..n]) {
                Parse::Done(h) => return Ok(Some(h)),
                // Larger than any ClientHello Envoy accepts: not one.
                Parse::NeedMore(want) if want > MAX_HELLO + 1024 => return Ok(Some(Hello::default())),
                Parse::NeedMore(want) if want > buf.len() => buf.resize(want, 0),
                // `peek` returns at once while data is pending; wait briefly
                // for more to arrive instead of spinning.
                Parse::NeedMore(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    };
    tokio::time::timeout(timeout, work).await.unwrap_or(Ok(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn hello_bytes(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut cfg = cfg;
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("conn");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("write");
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_client_hello() {
        let bytes = hello_bytes("Api.Example.com", &["h2", "http/1.1"]);
        assert_eq!(
            parse(&bytes),
            Parse::Done(Hello {
                tls: true,
                sni: Some("api.example.com".into()),
                alpn: vec!["h2".into(), "http/1.1".into()]
            })
        );
        assert!(matches!(parse(&bytes[..bytes.len() - 1]), Parse::NeedMore(n) if n == bytes.len()));
        assert!(matches!(parse(&bytes[..3]), Parse::NeedMore(5)));
    }

    #[test]
    fn plain_text_is_raw_buffer() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::Done(Hello::default()));
        assert_eq!(parse(b"\x16\x01garbage"), Parse::Done(Hello::default()));
        // Too short to tell: Envoy waits for a record header.
        assert_eq!(parse(b"ping"), Parse::NeedMore(5));
    }
}
