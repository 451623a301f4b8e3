//! Keys and tokens for the jwt_authn scenarios: signing keys (rcgen's P-256,
//! or RSA and EC keys made by openssl), their public halves as JWKs, and
//! signed tokens.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK of a P-256 public key from its uncompressed point (x || y).
fn p256_jwk(kid: &str, point: &[u8]) -> Value {
    serde_json::json!({ "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": b64url(&point[..32]), "y": b64url(&point[32..]) })
}

/// A fresh P-256 key as a JWK (its public point) and as the signer of tokens.
pub fn ec_key(kid: &str) -> (Value, EncodingKey) {
    let key = rcgen::KeyPair::generate().expect("key");
    let point = key.public_key_raw();
    assert_eq!(point.len(), 65, "an uncompressed P-256 point");
    let jwk = p256_jwk(kid, &point[1..]);
    let enc = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("EC key");
    (jwk, enc)
}

/// A private key made by openssl (PKCS#8 PEM) in `dir`.
pub fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let ok = Command::new("openssl")
        .args(["genpkey", "-quiet", "-out"])
        .arg(&path)
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl genpkey {args:?} failed (openssl is needed for the JWT scenario)");
    path
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect()
}

/// The public half of an RSA key file as a JWK.
pub fn rsa_jwk(key: &Path, kid: &str) -> Value {
    let out = Command::new("openssl").args(["rsa", "-noout", "-modulus", "-in"]).arg(key).output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let modulus = text.trim().strip_prefix("Modulus=").expect("openssl prints the modulus");
    serde_json::json!({ "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64url(&hex_bytes(modulus)), "e": "AQAB" })
}

/// The public half of a P-256 key file as a JWK: the DER public key ends
/// with the uncompressed point 04 || x || y.
pub fn ec_jwk(key: &Path, kid: &str) -> Value {
    let out =
        Command::new("openssl").args(["pkey", "-pubout", "-outform", "DER", "-in"]).arg(key).output().expect("openssl");
    let der = out.stdout;
    assert!(der.len() > 65, "unexpected EC public key");
    p256_jwk(kid, &der[der.len() - 64..])
}

/// The signer for a PEM key file (EC for ES256, RSA otherwise).
pub fn key_file(key: &Path, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(key).expect("key");
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("a PEM key")
}

/// A token with `claims`, signed by `key` with `alg`, naming `kid`.
pub fn sign(key: &EncodingKey, alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// An ES256 token from `iss` for `someone`, valid until 2096.
pub fn token(key: &EncodingKey, kid: &str, iss: &str) -> String {
    let claims = serde_json::json!({ "iss": iss, "sub": "someone", "exp": 4_000_000_000u64 });
    sign(key, Algorithm::ES256, kid, &claims)
}
