//! Delivering notifications without holding anything up: one task and one
//! bounded queue per destination URL (order kept per destination, a dead
//! receiver delays only its own queue). Evaluation only enqueues; a full
//! queue drops the notification and counts it. A failed post (no
//! connection, a timeout, 5xx or 429) is retried with doubling backoff.

use hyper::body::Bytes;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Notifications waiting per destination.
pub const QUEUE: usize = 256;
/// Attempts per notification, and the backoff before the second one (doubled each time, at most [`MAX_BACKOFF`]).
pub const ATTEMPTS: u32 = 6;
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// One attempt, connection to answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Counts of what happened to notifications.
#[derive(Debug, Default)]
pub struct Counts {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Default)]
pub struct Notifier {
    queues: Mutex<HashMap<String, mpsc::Sender<Vec<u8>>>>,
    pub counts: Arc<Counts>,
}

impl Notifier {
    /// Queues `body` for `url`; never waits. Must run inside the Tokio runtime.
    pub fn send(&self, url: &str, body: &Value) {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let tx = queues.entry(url.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(worker(url.to_string(), rx, self.counts.clone()));
            tx
        });
        if tx.try_send(bytes).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(url, "alert notification dropped: the queue for this destination is full");
        }
    }
}

async fn worker(url: String, mut rx: mpsc::Receiver<Vec<u8>>, counts: Arc<Counts>) {
    while let Some(body) = rx.recv().await {
        if deliver(&url, body).await {
            counts.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Posts with retries; whether it was delivered.
async fn deliver(url: &str, body: Vec<u8>) -> bool {
    let body = Bytes::from(body);
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(TIMEOUT, crate::remote::webhook::post(url, body.clone(), "legate-alerts")).await {
            Ok(Ok(status)) if (200..300).contains(&status) => return true,
            Ok(Ok(status)) if status != 429 && status < 500 => {
                tracing::warn!(url, status, "alert notification refused; not retried");
                return false;
            }
            Ok(Ok(status)) => tracing::debug!(url, status, attempt, "alert notification failed"),
            Ok(Err(e)) => tracing::debug!(url, attempt, "alert notification failed: {e}"),
            Err(_) => tracing::debug!(url, attempt, "alert notification timed out"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    tracing::warn!(url, "alert notification undelivered after {ATTEMPTS} attempts");
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A receiver that fails `fail` times with 503, then answers 200; what it got.
    async fn receiver(fail: usize) -> (String, tokio::sync::mpsc::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for i in 0..20 {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let mut buf = vec![0u8; 65536];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if i < fail { "503 Service Unavailable" } else { "200 OK" };
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                    )
                    .await;
                if i >= fail {
                    let _ = tx.send(text).await;
                }
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn retries_until_delivered_and_keeps_order() {
        let (url, mut got) = receiver(2).await;
        let n = Notifier::default();
        n.send(&url, &serde_json::json!({"n": 1}));
        n.send(&url, &serde_json::json!({"n": 2}));
        let first = tokio::time::timeout(Duration::from_secs(10), got.recv()).await.expect("in time").expect("one");
        assert!(first.starts_with("POST /hook HTTP/1.1") && first.ends_with("{\"n\":1}"), "{first}");
        let second = tokio::time::timeout(Duration::from_secs(10), got.recv()).await.expect("in time").expect("two");
        assert!(second.ends_with("{\"n\":2}"), "{second}");
        for _ in 0..100 {
            if n.counts.sent.load(Ordering::Relaxed) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(n.counts.sent.load(Ordering::Relaxed), 2);
        assert_eq!(n.counts.failed.load(Ordering::Relaxed), 0);
    }
}
