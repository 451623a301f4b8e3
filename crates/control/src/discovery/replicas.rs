//! The other control-plane replicas on the same store, as they announce
//! themselves (each under a leased key, `sync::peers`): a query of the
//! fleet's figures asks each of them for its part. A leaf: what announces
//! and what asks both read and write it here.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, OnceLock};

/// The header a replica's own calls to another carry: the store's shared
/// peer secret, which stands for the viewer role on internal reads.
pub const PEER_SECRET_HEADER: &str = "x-legate-peer-secret";

/// One replica as it announces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// Its replica id (the one `/v1/replica` shows).
    pub id: String,
    /// `HOST:PORT` where its REST API answers...
    pub api: String,
    /// ...over TLS (its certificate names the host).
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, Default)]
pub struct Replicas {
    me: OnceLock<Replica>,
    /// Every replica whose key is live, this one included.
    live: Mutex<Vec<Replica>>,
    /// The secret every replica reads from the store, and its hash.
    secret: OnceLock<(String, [u8; 32])>,
    /// How this replica reaches the others' TLS APIs.
    client_tls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl Replicas {
    /// Sets what this replica announces (once, at start).
    pub fn set_me(&self, me: Replica) {
        let _ = self.me.set(me);
    }

    pub fn me(&self) -> Option<&Replica> {
        self.me.get()
    }

    /// The replicas whose keys were live at the last read.
    pub fn set_live(&self, mut all: Vec<Replica>) {
        all.sort_by(|a, b| a.id.cmp(&b.id));
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = all;
    }

    /// Sets the peer secret read from the store (once).
    pub fn set_secret(&self, secret: String) {
        let hash = Sha256::digest(secret.as_bytes()).into();
        let _ = self.secret.set((secret, hash));
    }

    pub fn secret(&self) -> Option<&str> {
        self.secret.get().map(|(s, _)| s.as_str())
    }

    /// Whether `presented` is the peer secret (compared by hash, so the
    /// time taken says nothing about how much of it matched).
    pub fn admits(&self, presented: &str) -> bool {
        let Some((_, want)) = self.secret.get() else { return false };
        let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        got == *want
    }

    /// Sets the TLS client (roots and client certificate) for peers' APIs.
    pub fn set_client_tls(&self, config: Arc<rustls::ClientConfig>) {
        let _ = self.client_tls.set(config);
    }

    pub fn client_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.client_tls.get().cloned()
    }

    /// The live replicas other than this one.
    pub fn peers(&self) -> Vec<Replica> {
        let me = self.me().map(|m| m.id.as_str());
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter().filter(|r| Some(r.id.as_str()) != me).cloned().collect()
    }
}
