//! The other control-plane replicas on the same store, as they announce
//! themselves (each under a leased key, `sync::peers`): a query of the
//! fleet's figures asks each of them for its part. A leaf: what announces
//! and what asks both read and write it here.

use serde::{Deserialize, Serialize};
use std::sync::{Mutex, OnceLock};

/// One replica as it announces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// Its replica id (the one `/v1/replica` shows).
    pub id: String,
    /// `HOST:PORT` where its REST API answers (plain HTTP).
    pub api: String,
}

#[derive(Debug, Default)]
pub struct Replicas {
    me: OnceLock<Replica>,
    /// Every replica whose key is live, this one included.
    live: Mutex<Vec<Replica>>,
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

    /// The live replicas other than this one.
    pub fn peers(&self) -> Vec<Replica> {
        let me = self.me().map(|m| m.id.as_str());
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter().filter(|r| Some(r.id.as_str()) != me).cloned().collect()
    }
}
