//! Why a token was refused, with Envoy's wording, status, access-log
//! details and `www-authenticate` challenge.

use http::HeaderValue;

/// Why a token was refused, with Envoy's wording.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    Missing,
    BadFormat,
    HeaderParse,
    PayloadParse,
    BadAlg,
    UnknownIssuer,
    Expired,
    NotYetValid,
    AudienceNotAllowed,
    NoKey,
    VerificationFails,
    /// The remote JWKS could not be fetched (or was not a JWKS).
    JwksFetchFail,
}

impl Failure {
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "Jwt is missing",
            Self::BadFormat => "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            Self::HeaderParse => "Jwt header is an invalid JSON",
            Self::PayloadParse => "Jwt payload is an invalid JSON",
            Self::BadAlg => "Jwt header [alg] is not supported",
            Self::UnknownIssuer => "Jwt issuer is not configured",
            Self::Expired => "Jwt is expired",
            Self::NotYetValid => "Jwt not yet valid",
            Self::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Self::NoKey => "Jwks doesn't have key to match kid or alg from Jwt",
            Self::VerificationFails => "Jwt verification fails",
            Self::JwksFetchFail => "Jwks remote fetch is failed",
        }
    }

    pub fn status(self) -> u16 {
        if self == Self::AudienceNotAllowed {
            403
        } else {
            401
        }
    }

    /// The access log's response code details, Envoy's `jwt_authn_access_denied{...}`.
    pub fn details(self) -> &'static str {
        match self {
            Self::Missing => "jwt_authn_access_denied{Jwt_is_missing}",
            Self::Expired => "jwt_authn_access_denied{Jwt_is_expired}",
            Self::AudienceNotAllowed => "jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}",
            Self::UnknownIssuer => "jwt_authn_access_denied{Jwt_issuer_is_not_configured}",
            Self::JwksFetchFail => "jwt_authn_access_denied{Jwks_remote_fetch_is_failed}",
            _ => "jwt_authn_access_denied{Jwt_verification_fails}",
        }
    }
}

/// Envoy's `www-authenticate` for a refused request: the realm is the
/// request's URL, query included.
pub fn www_authenticate(f: Failure, authority: &str, path: &str) -> Option<HeaderValue> {
    let mut v = format!("Bearer realm=\"http://{authority}{path}\"");
    if f != Failure::Missing {
        v.push_str(", error=\"invalid_token\"");
    }
    HeaderValue::from_str(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realm_and_error() {
        let v = www_authenticate(Failure::Missing, "h", "/p?q=1").expect("value");
        assert_eq!(v, "Bearer realm=\"http://h/p?q=1\"");
        let v = www_authenticate(Failure::Expired, "h", "/p").expect("value");
        assert_eq!(v, "Bearer realm=\"http://h/p\", error=\"invalid_token\"");
        assert_eq!(Failure::AudienceNotAllowed.status(), 403);
    }
}
