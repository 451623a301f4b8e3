//! Encryption at rest of secret material (`--secret-key-file`).
//!
//! Every inline value of a sensitive field — the fields the API redacts
//! (`resources::redact`): a `Secret`'s `tls_certificate.private_key`,
//! `password`, `pkcs12`, a `generic_secret.secret`, session ticket `keys`, and
//! the same fields inline in any other resource — is written to the store
//! (SQLite or etcd, current documents and revision history alike) as
//!
//! ```text
//! legate:enc:v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>
//! ```
//!
//! - `v1`: AES-256-GCM (ring), a fresh random 96-bit nonce per value;
//! - the plaintext is the value's JSON text, so a string, a list or an
//!   object comes back exactly as it was written;
//! - the associated data is `<kind>/<name>`, so a value copied into another
//!   resource does not open;
//! - `<key id>`: the first 4 bytes of SHA-256 of the key, in hex, so a wrong
//!   key is told apart from damaged data at start.
//!
//! Reading opens every such value, wherever it is; documents written before a
//! key was given are read as they are and sealed when next written. Without a
//! key, a store holding sealed values refuses to load.

use crate::resources::document::Document;
use crate::resources::kind::Kind;
use crate::store::records::{Change, StoreError};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::path::Path;

/// What a sealed value starts with (the format's version included).
pub const PREFIX: &str = "legate:enc:v1:";

/// The key given at start.
pub struct SecretKey {
    key: LessSafeKey,
    id: String,
    rng: SystemRandom,
}

fn err(reason: impl Into<String>) -> StoreError {
    StoreError::Secret(reason.into())
}

impl SecretKey {
    /// The key in `path`: 32 bytes, as they are or as 64 hex digits or
    /// base64 (a trailing newline allowed).
    pub fn from_file(path: &Path) -> Result<SecretKey, StoreError> {
        let raw = std::fs::read(path).map_err(|e| err(format!("--secret-key-file {}: {e}", path.display())))?;
        let bytes = decode_key(&raw).ok_or_else(|| {
            err(format!(
                "--secret-key-file {}: expected 32 bytes (raw, 64 hex digits or base64), found {} bytes",
                path.display(),
                raw.len()
            ))
        })?;
        SecretKey::new(&bytes)
    }

    pub fn new(bytes: &[u8]) -> Result<SecretKey, StoreError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| err("the key must be 32 bytes"))?;
        let digest = Sha256::digest(bytes);
        let id = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Ok(SecretKey { key: LessSafeKey::new(unbound), id, rng: SystemRandom::new() })
    }

    /// The key's id, as sealed values carry it.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn seal(&self, aad: &str, v: &Value) -> Result<String, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| err("no random nonce"))?;
        let mut buf = serde_json::to_vec(v).map_err(|e| err(e.to_string()))?;
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| err("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}:{}", self.id, base64::engine::general_purpose::STANDARD.encode(out)))
    }

    fn open(&self, aad: &str, sealed: &str) -> Result<Value, String> {
        let rest = sealed.strip_prefix(PREFIX).ok_or("not a sealed value")?;
        let (id, body) = rest.split_once(':').ok_or("no key id")?;
        if id != self.id {
            return Err(format!("sealed with key {id}, but --secret-key-file holds key {}", self.id));
        }
        let mut bytes = base64::engine::general_purpose::STANDARD.decode(body).map_err(|e| e.to_string())?;
        if bytes.len() < NONCE_LEN {
            return Err("too short".into());
        }
        let nonce = Nonce::try_assume_unique_for_key(&bytes[..NONCE_LEN]).map_err(|_| "bad nonce")?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut bytes[NONCE_LEN..])
            .map_err(|_| "does not open with this key (damaged, or moved from another resource)")?;
        serde_json::from_slice(plain).map_err(|e| e.to_string())
    }
}

fn decode_key(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() == 32 {
        return Some(raw.to_vec());
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect();
    }
    base64::engine::general_purpose::STANDARD.decode(text).ok().filter(|b| b.len() == 32)
}

/// `<kind>/<name>`, the kind as the store names it.
fn aad(doc: &Document) -> String {
    let kind = Kind::parse(&doc.kind).map_or(doc.kind.clone(), |k| k.name().to_string());
    format!("{kind}/{}", doc.metadata.name)
}

/// `changes` with every inline secret sealed (unchanged without a key).
pub fn seal_changes<'a>(key: Option<&SecretKey>, changes: &'a [Change]) -> Result<Cow<'a, [Change]>, StoreError> {
    let Some(key) = key else { return Ok(Cow::Borrowed(changes)) };
    let sealed: Result<Vec<Change>, StoreError> = changes
        .iter()
        .map(|c| match c {
            Change::Apply(doc) => {
                let mut doc = doc.clone();
                let aad = aad(&doc);
                seal_in(key, &aad, &mut doc.spec)?;
                Ok(Change::Apply(doc))
            }
            other => Ok(other.clone()),
        })
        .collect();
    Ok(Cow::Owned(sealed?))
}

fn seal_in(key: &SecretKey, aad: &str, v: &mut Value) -> Result<(), StoreError> {
    crate::resources::redact::each_secret(v, &mut |inline| {
        *inline = Value::String(key.seal(aad, inline)?);
        Ok(())
    })
}

/// Opens every sealed value in `docs`, in place; an error names the
/// resource and the field.
pub fn open_docs(key: Option<&SecretKey>, docs: &mut [Document]) -> Result<(), StoreError> {
    for doc in docs {
        let aad = aad(doc);
        open_in(key, &aad, &mut doc.spec, &format!("{aad}: spec"))?;
    }
    Ok(())
}

fn open_in(key: Option<&SecretKey>, aad: &str, v: &mut Value, path: &str) -> Result<(), StoreError> {
    match v {
        Value::String(s) if s.starts_with(PREFIX) => {
            let Some(key) = key else {
                return Err(err(format!(
                    "{path} is encrypted at rest; start the control plane with --secret-key-file and its key"
                )));
            };
            *v = key.open(aad, s).map_err(|e| err(format!("{path}: {e}")))?;
            Ok(())
        }
        Value::Object(map) => {
            map.iter_mut().try_for_each(|(k, field)| open_in(key, aad, field, &format!("{path}.{k}")))
        }
        Value::Array(items) => {
            items.iter_mut().enumerate().try_for_each(|(i, item)| open_in(key, aad, item, &format!("{path}[{i}]")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(spec: Value) -> Document {
        serde_json::from_value(json!({"kind": "Secret", "metadata": {"name": "web"}, "spec": spec})).expect("doc")
    }

    #[test]
    fn seals_inline_secrets_and_opens_them_back() {
        let key = SecretKey::new(&[7u8; 32]).expect("key");
        let spec = json!({"tls_certificate": {
            "certificate_chain": {"inline_string": "CERT"},
            "private_key": {"inline_string": "-----BEGIN PRIVATE KEY-----\nKEY"},
            "password": {"inline_bytes": "cGFzcw=="}}});
        let changes = [Change::Apply(secret(spec.clone()))];
        let sealed = seal_changes(Some(&key), &changes).expect("seal");
        let Change::Apply(doc) = &sealed[0] else { panic!("apply") };
        let text = serde_json::to_string(doc).expect("json");
        assert!(!text.contains("PRIVATE KEY") && !text.contains("cGFzcw=="), "{text}");
        assert!(text.contains("CERT"), "the certificate is public and stays readable: {text}");
        assert!(text.contains(&format!("{PREFIX}{}:", key.id())), "{text}");
        let mut docs = vec![doc.clone()];
        open_docs(Some(&key), &mut docs).expect("open");
        assert_eq!(docs[0].spec, spec);
    }

    #[test]
    fn a_wrong_key_or_no_key_or_another_resource_is_refused() {
        let key = SecretKey::new(&[7u8; 32]).expect("key");
        let spec = json!({"generic_secret": {"secret": {"inline_string": "s3cret"}}});
        let changes = [Change::Apply(secret(spec))];
        let sealed = seal_changes(Some(&key), &changes).expect("seal");
        let Change::Apply(doc) = &sealed[0] else { panic!("apply") };
        let wrong = SecretKey::new(&[8u8; 32]).expect("key");
        let e = open_docs(Some(&wrong), &mut [doc.clone()]).expect_err("wrong key").to_string();
        assert!(e.contains("Secret/web: spec.generic_secret.secret.inline_string") && e.contains(key.id()), "{e}");
        let e = open_docs(None, &mut [doc.clone()]).expect_err("no key").to_string();
        assert!(e.contains("--secret-key-file"), "{e}");
        let mut moved = doc.clone();
        moved.metadata.name = "other".into();
        let e = open_docs(Some(&key), &mut [moved]).expect_err("moved").to_string();
        assert!(e.contains("does not open"), "{e}");
    }

    #[test]
    fn key_files_hold_32_bytes_raw_hex_or_base64() {
        assert_eq!(decode_key(&[1u8; 32]), Some(vec![1u8; 32]));
        assert_eq!(decode_key(format!("{}\n", "ab".repeat(32)).as_bytes()), Some(vec![0xab; 32]));
        let b64 = base64::engine::general_purpose::STANDARD.encode([2u8; 32]);
        assert_eq!(decode_key(b64.as_bytes()), Some(vec![2u8; 32]));
        assert_eq!(decode_key(b"short"), None);
    }
}
