//! Key-exchange groups: `tls_params.ecdh_curves` read as Envoy 1.40 reads
//! it. Envoy joins the list with `:` and hands it to BoringSSL
//! (`SSL_CTX_set1_curves_list`), so an entry may itself be a `:`-separated
//! list, names are BoringSSL's (with their OpenSSL aliases), and an unknown
//! or repeated name fails the whole context. Legate offers the groups in
//! the order given: X25519, P-256 and P-384 from rustls' provider, and P-521
//! from the RustCrypto `p521` crate (rustls' ring provider has none), as
//! BoringSSL in Envoy does. Groups BoringSSL knows that Legate cannot do are
//! refused by name. Unset, the provider's default list stays.

use super::certs::{err, TlsError};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::TlsParameters;
use p521::elliptic_curve::sec1::ToEncodedPoint;
use rustls::crypto::{ActiveKeyExchange, CryptoProvider, SharedSecret, SupportedKxGroup};
use rustls::{NamedGroup, PeerMisbehaved};
use std::sync::Arc;

/// The groups of a context, in preference order (`None`: unset, the default).
pub(super) type Groups = Option<Vec<&'static dyn SupportedKxGroup>>;

/// BoringSSL's group names (and aliases) that rustls cannot do here.
const UNSUPPORTED: &[&str] = &["P-224", "secp224r1", "X25519Kyber768Draft00", "X25519MLKEM768", "MLKEM1024"];

fn group(name: &str) -> Option<&'static dyn SupportedKxGroup> {
    use rustls::crypto::ring::kx_group;
    Some(match name {
        "X25519" | "x25519" => kx_group::X25519,
        "P-256" | "prime256v1" => kx_group::SECP256R1,
        "P-384" | "secp384r1" => kx_group::SECP384R1,
        "P-521" | "secp521r1" => &P521,
        _ => return None,
    })
}

/// `tls_params.ecdh_curves` of the context at `path`.
pub(super) fn groups(params: Option<&TlsParameters>, path: &str) -> Result<Groups, TlsError> {
    let Some(curves) = params.map(|p| &p.ecdh_curves).filter(|c| !c.is_empty()) else { return Ok(None) };
    let field = format!("{path}.tls_params.ecdh_curves");
    let list = curves.join(":");
    let mut out: Vec<&'static dyn SupportedKxGroup> = Vec::new();
    for name in list.split(':') {
        if UNSUPPORTED.contains(&name) {
            return Err(err(&field, format!("the curve {name} is not implemented by Legate")));
        }
        let Some(g) = group(name) else {
            return Err(err(&field, format!("Failed to initialize ECDH curves {list}")));
        };
        if out.iter().any(|o| o.name() == g.name()) {
            return Err(err(&field, format!("Failed to initialize ECDH curves {list}")));
        }
        out.push(g);
    }
    Ok(Some(out))
}

/// `provider` with `groups` in place of its default ones.
pub(super) fn with_groups(provider: Arc<CryptoProvider>, groups: &Groups) -> Arc<CryptoProvider> {
    match groups {
        None => provider,
        Some(g) => Arc::new(CryptoProvider { kx_groups: g.clone(), ..(*provider).clone() }),
    }
}

/// ECDHE over P-521 (secp521r1), uncompressed points as TLS sends them.
#[derive(Debug)]
struct P521Group;

static P521: P521Group = P521Group;

impl SupportedKxGroup for P521Group {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let random = rustls::crypto::ring::default_provider().secure_random;
        // A scalar below the group order: 521 random bits, drawn again in
        // the rare case they are not (or are zero).
        let secret = loop {
            let mut bytes = [0u8; 66];
            random.fill(&mut bytes).map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
            bytes[0] &= 0x01;
            if let Ok(k) = p521::SecretKey::from_slice(&bytes) {
                break k;
            }
        };
        let pub_key = secret.public_key().to_encoded_point(false).as_bytes().to_vec();
        Ok(Box::new(P521Exchange { secret, pub_key }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::secp521r1
    }
}

struct P521Exchange {
    secret: p521::SecretKey,
    pub_key: Vec<u8>,
}

impl ActiveKeyExchange for P521Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        // Only uncompressed points are valid key shares (RFC 8446 4.2.8.2).
        if peer.first() != Some(&0x04) {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let public = p521::PublicKey::from_sec1_bytes(peer).map_err(|_| PeerMisbehaved::InvalidKeyShare)?;
        let shared = p521::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), public.as_affine());
        Ok(SharedSecret::from(&shared.raw_secret_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.pub_key
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::secp521r1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(curves: &[&str]) -> TlsParameters {
        TlsParameters { ecdh_curves: curves.iter().map(|c| c.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn lists_read_as_boringssl_reads_them() {
        let g = groups(Some(&params(&["X25519:P-256:P-521:P-384"])), "p").unwrap().unwrap();
        let names: Vec<NamedGroup> = g.iter().map(|g| g.name()).collect();
        assert_eq!(names, [NamedGroup::X25519, NamedGroup::secp256r1, NamedGroup::secp521r1, NamedGroup::secp384r1]);
        assert_eq!(groups(Some(&params(&["secp384r1", "x25519"])), "p").unwrap().unwrap().len(), 2);
        assert!(groups(None, "p").unwrap().is_none());
        let bad = groups(Some(&params(&["X25519", "P-999"])), "p").unwrap_err().to_string();
        assert_eq!(bad, "p.tls_params.ecdh_curves: Failed to initialize ECDH curves X25519:P-999");
        assert!(groups(Some(&params(&["P-256:P-256"])), "p").is_err());
        let refused = groups(Some(&params(&["P-224"])), "p").unwrap_err().to_string();
        assert!(refused.contains("P-224 is not implemented by Legate"), "{refused}");
    }

    #[test]
    fn p521_agrees_with_itself() {
        let (a, b) = (P521.start().unwrap(), P521.start().unwrap());
        let (a_pub, b_pub) = (a.pub_key().to_vec(), b.pub_key().to_vec());
        assert_eq!((a_pub.len(), a_pub[0]), (133, 0x04));
        let (ab, ba) = (a.complete(&b_pub).unwrap(), b.complete(&a_pub).unwrap());
        assert_eq!(ab.secret_bytes(), ba.secret_bytes());
        assert_eq!(ab.secret_bytes().len(), 66);
        assert!(P521.start().unwrap().complete(&[0x04, 1, 2, 3]).is_err());
    }
}
