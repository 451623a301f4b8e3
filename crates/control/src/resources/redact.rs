//! What the API shows of secret material: never the material itself.
//!
//! Envoy marks these fields `(udpa.annotations.sensitive)` and its
//! `/config_dump` prints them as `[redacted]`. The control plane does the same
//! wherever it shows a resource (resource reads, what a node receives,
//! diffs), but keeps a short fingerprint of the value so that an operator can
//! still see that a key changed, and which resources share one. Proxies get
//! the real values over xDS; only the API's JSON is redacted.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Fields that hold secret material in Envoy's API (`TlsCertificate.
/// private_key`, `.password`, `.pkcs12`; `GenericSecret.secret`;
/// `TlsSessionTicketKeys.keys`).
const SENSITIVE: &[&str] = &["private_key", "password", "pkcs12", "secret", "keys"];

/// The places a `DataSource` holds its bytes in (`filename` and
/// `environment_variable` only name where they are, and are kept).
const INLINE: &[&str] = &["inline_string", "inline_bytes"];

/// Redacts every inline secret in `v`, in place.
pub fn redact(v: &mut Value) {
    let done: Result<(), std::convert::Infallible> = each_secret(v, &mut |inline| {
        *inline = Value::String(fingerprint(inline));
        Ok(())
    });
    let Ok(()) = done;
}

/// Calls `f` on every inline secret value in `v` (what the API redacts and
/// the store seals): under a sensitive field, a data source's inline value,
/// each of a list of data sources, or the value itself.
pub(crate) fn each_secret<E>(v: &mut Value, f: &mut impl FnMut(&mut Value) -> Result<(), E>) -> Result<(), E> {
    match v {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if SENSITIVE.contains(&key.as_str()) {
                    each_material(field, f)?;
                } else {
                    each_secret(field, f)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|i| each_secret(i, f)),
        _ => Ok(()),
    }
}

/// `v` is a sensitive field: a `DataSource`, a list of them, or (in a
/// document written by hand) the value itself.
fn each_material<E>(v: &mut Value, f: &mut impl FnMut(&mut Value) -> Result<(), E>) -> Result<(), E> {
    match v {
        Value::Object(map) => {
            let mut any_inline = false;
            for key in INLINE {
                if let Some(inline) = map.get_mut(*key) {
                    f(inline)?;
                    any_inline = true;
                }
            }
            // Not a data source (a message with its own fields): look inside.
            if !any_inline {
                for field in map.values_mut() {
                    each_secret(field, f)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|i| each_material(i, f)),
        Value::String(_) => f(v),
        _ => Ok(()),
    }
}

/// `[redacted sha256:<first 8 bytes>]` of the value as it was written.
fn fingerprint(v: &Value) -> String {
    let bytes = match v {
        Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    };
    let digest = Sha256::digest(&bytes);
    let short: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("[redacted sha256:{short}]")
}

/// A document read back from the API and applied again carries fingerprints
/// where the secrets were. Each one that is the fingerprint of what is stored
/// at the same place in `stored` (the resource as it is now) gets the stored
/// value back, so a read, edit and apply round trip keeps the key; any other
/// is an error naming the field.
pub fn restore(new: &mut Value, stored: Option<&Value>, path: &str) -> Result<(), String> {
    match new {
        Value::String(s) if is_fingerprint(s) => {
            let original = stored.filter(|old| !matches!(old, Value::String(o) if is_fingerprint(o)));
            match original {
                Some(old) if fingerprint(old) == *s => {
                    *new = old.clone();
                    Ok(())
                }
                _ => {
                    Err(format!("{path}: a redacted copy of a secret that is not stored here; give the secret itself"))
                }
            }
        }
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                let old = stored.and_then(|o| o.get(key));
                restore(field, old, &format!("{path}.{key}"))?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let old = stored.and_then(|o| o.get(i));
                restore(item, old, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn is_fingerprint(s: &str) -> bool {
    s.starts_with("[redacted sha256:") && s.ends_with(']')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inline_keys_passwords_and_ticket_keys_become_fingerprints() {
        let mut v = json!({
            "name": "server",
            "tls_certificate": {
                "certificate_chain": {"inline_string": "CERT"},
                "private_key": {"inline_string": "KEY"},
                "password": {"inline_bytes": "cGFzcw=="},
            },
            "session_ticket_keys": {"keys": [{"inline_bytes": "a2V5"}, {"filename": "/etc/keys/1"}]},
            "generic_secret": {"secret": {"inline_string": "hunter2"}},
        });
        redact(&mut v);
        let text = v.to_string();
        for secret in ["KEY", "cGFzcw==", "a2V5", "hunter2"] {
            assert!(!text.contains(&format!("\"{secret}\"")), "{secret} left in {text}");
        }
        assert_eq!(v["tls_certificate"]["certificate_chain"]["inline_string"], "CERT", "certificates are public");
        assert_eq!(v["session_ticket_keys"]["keys"][1]["filename"], "/etc/keys/1", "a file name is not the secret");
        let key = v["tls_certificate"]["private_key"]["inline_string"].as_str().unwrap_or_default();
        assert!(key.starts_with("[redacted sha256:") && key.len() == "[redacted sha256:]".len() + 16, "{key}");
    }

    #[test]
    fn a_changed_key_has_another_fingerprint_and_nested_contexts_are_found() {
        let listener = |key: &str| {
            json!({"filter_chains": [{"transport_socket": {"typed_config": {"common_tls_context": {
                "tls_certificates": [{"private_key": {"inline_string": key}}]}}}}]})
        };
        let (mut a, mut b) = (listener("old key"), listener("new key"));
        redact(&mut a);
        redact(&mut b);
        let at = |v: &Value| {
            v["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0]
                ["private_key"]["inline_string"]
                .clone()
        };
        assert_ne!(at(&a), at(&b));
        assert!(!a.to_string().contains("old key") && !b.to_string().contains("new key"));
    }

    #[test]
    fn a_redacted_copy_applied_again_gets_the_stored_secret_back() {
        let stored = json!({"tls_certificate": {"private_key": {"inline_string": "KEY"}, "certificate_chain": {"inline_string": "A"}}});
        let mut copy = stored.clone();
        redact(&mut copy);
        copy["tls_certificate"]["certificate_chain"]["inline_string"] = json!("B");
        assert_eq!(restore(&mut copy, Some(&stored), "spec"), Ok(()));
        assert_eq!(copy["tls_certificate"]["private_key"]["inline_string"], "KEY");
        assert_eq!(copy["tls_certificate"]["certificate_chain"]["inline_string"], "B");
        // Another resource's fingerprint, or none stored: refused with the field.
        let mut other = json!({"tls_certificate": {"private_key": {"inline_string": "OTHER"}}});
        redact(&mut other);
        let err = restore(&mut other, Some(&stored), "spec").expect_err("a foreign fingerprint");
        assert!(err.starts_with("spec.tls_certificate.private_key.inline_string:"), "{err}");
        assert!(restore(&mut copy.clone(), None, "spec").is_ok(), "nothing redacted left after restoring");
    }
}
