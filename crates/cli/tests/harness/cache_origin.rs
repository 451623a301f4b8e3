//! An origin for the cache tests, on a thread of the test: each path
//! answers with its own caching headers (below), its body counting the
//! requests that path received, and every request is recorded, so a test
//! sees how many reached the origin through a caching proxy.
//!
//! Paths (by prefix): `/fresh` `max-age=60` and an `etag`; `/age` the same
//! with `age: 10`; `/stale` `max-age=1` and an `etag`, answered 304 (with a
//! new `x-gen`) to a matching `if-none-match`; `/vary-ok` varies on
//! `accept-language`, `/vary` on `x-b`; `/nostore` `no-store`; `/private`
//! `private, max-age=60`; anything else no caching headers.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// The origin: its port and the `METHOD path` of each request it got.
pub struct CacheOrigin {
    pub port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl CacheOrigin {
    pub fn start() -> CacheOrigin {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let port = l.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(c, &s));
            }
        });
        CacheOrigin { port, seen }
    }

    /// The requests received so far, `METHOD path`, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// One request per connection, answered and closed.
fn serve(c: std::net::TcpStream, seen: &Mutex<Vec<String>>) {
    let Ok(mut w) = c.try_clone() else { return };
    let mut r = BufReader::new(c);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let n = {
        let mut s = seen.lock().expect("origin log");
        s.push(format!("{method} {path}"));
        s.iter().filter(|x| x.ends_with(&format!(" {path}"))).count()
    };
    let has = |k: &str, v: &str| headers.iter().any(|(hk, hv)| hk == k && hv == v);
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let (status, extra) = answer(&path, n, has("if-none-match", "\"s1\""));
    let body = if status == 304 { String::new() } else { format!("{path} answer {n}") };
    let mut out = format!("HTTP/1.1 {status} X\r\ndate: {date}\r\nconnection: close\r\n{extra}");
    if status != 304 {
        out.push_str(&format!("content-type: text/plain\r\ncontent-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    if method != "HEAD" {
        out.push_str(&body);
    }
    let _ = w.write_all(out.as_bytes());
}

/// Status and caching headers for the `n`th request to `path`.
fn answer(path: &str, n: usize, validates: bool) -> (u16, String) {
    let p = |prefix: &str| path.starts_with(prefix);
    if p("/stale") {
        let status = if validates { 304 } else { 200 };
        return (status, format!("cache-control: max-age=1\r\netag: \"s1\"\r\nx-gen: {n}\r\n"));
    }
    let h = if p("/fresh") {
        "cache-control: max-age=60\r\netag: \"v1\"\r\n"
    } else if p("/age") {
        "cache-control: max-age=60\r\nage: 10\r\n"
    } else if p("/vary-ok") {
        "cache-control: max-age=60\r\nvary: accept-language\r\n"
    } else if p("/vary") {
        "cache-control: max-age=60\r\nvary: x-b\r\n"
    } else if p("/nostore") {
        "cache-control: no-store\r\n"
    } else if p("/private") {
        "cache-control: private, max-age=60\r\n"
    } else {
        ""
    };
    (200, h.to_string())
}
