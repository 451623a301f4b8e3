//! Verification keys: a JWKS document's keys, and the key family an
//! algorithm needs.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Verification keys: key id, key, key family.
pub type Keys = Vec<(Option<String>, DecodingKey, &'static str)>;

/// The key family an algorithm needs.
pub fn family(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => "RSA",
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        Algorithm::EdDSA => "OKP",
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "oct",
    }
}

/// The keys of a JWKS document.
pub fn parse_jwks(body: &[u8]) -> Result<Keys, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for (i, k) in set.keys.iter().enumerate() {
        let fam = match &k.algorithm {
            AlgorithmParameters::RSA(_) => "RSA",
            AlgorithmParameters::EllipticCurve(_) => "EC",
            AlgorithmParameters::OctetKeyPair(_) => "OKP",
            AlgorithmParameters::OctetKey(_) => "oct",
        };
        let key = DecodingKey::from_jwk(k).map_err(|e| format!("keys[{i}]: {e}"))?;
        keys.push((k.common.key_id.clone(), key, fam));
    }
    if keys.is_empty() {
        return Err("no keys".into());
    }
    Ok(keys)
}
