//! API tokens and the roles they carry.
//!
//! A token is `lgt_<id>_<secret>`; the store keeps the id, a name, the role and
//! the SHA-256 of the secret, never the secret. Until the first token exists the
//! API is open (so a fresh control plane and the demo work with no setup);
//! creating the first token closes it: from then on every request needs one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Register, heartbeat and deregister instances of one service, and
    /// nothing else (a token for the instances themselves).
    Instance,
    /// Read everything.
    Viewer,
    /// Also apply, delete and roll back.
    Editor,
    /// Also tokens and the audit log.
    Admin,
}

impl Role {
    /// A stored role: `viewer`, `editor`, `admin`, or `instance:<service>`.
    pub fn parse(s: &str) -> Option<Self> {
        if s.strip_prefix("instance:").is_some_and(|svc| !svc.is_empty()) {
            return Some(Self::Instance);
        }
        match s {
            "viewer" => Some(Self::Viewer),
            "editor" => Some(Self::Editor),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Instance => "instance",
            Self::Viewer => "viewer",
            Self::Editor => "editor",
            Self::Admin => "admin",
        }
    }
}

/// The service an `instance:<service>` role is for.
pub fn scope(stored_role: &str) -> Option<&str> {
    stored_role.strip_prefix("instance:").filter(|svc| !svc.is_empty())
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub role: Role,
    /// The one service an instance token may register.
    pub service: Option<String>,
}

pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// A fresh token: (id, secret, the full token string).
pub fn new_token() -> (String, String, String) {
    let id = random_hex(4);
    let secret = random_hex(24);
    let token = format!("lgt_{id}_{secret}");
    (id, secret, token)
}

/// Splits `lgt_<id>_<secret>`.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("lgt_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// Compares two hex digests without stopping at the first difference.
pub fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
