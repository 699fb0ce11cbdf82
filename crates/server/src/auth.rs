//! Proven users (`serve --user-auth jwt`): every reservation, payment and cancellation carries
//! `Authorization: Bearer <JWT>`, and the user it acts as is the token's `sub`.
//!
//! Tokens are verified with one key given at start: an HS256 secret, or a public key (PEM)
//! whose type picks the algorithm (Ed25519 → EdDSA, P-256 → ES256, RSA → RS256). `exp` is
//! required and checked (with `LEEWAY_SECONDS` for clock skew), `iss` and `aud` when
//! configured. A `user_id` in the body may be omitted; when present it must be the token's
//! `sub` (403 otherwise). Without this (`--user-auth none`, the default) the body's `user_id`
//! is trusted as it is: fine for benchmarks and demos, not for a public sale.
//!
//! The admin token (creating sales) is a separate, static secret.

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use ticketrush_core::UserId;

use crate::error::ApiError;

/// Clock skew tolerated on `exp` (and `nbf`), in seconds.
pub const LEEWAY_SECONDS: u64 = 30;
/// Longest `Authorization` header value read (a token is a few hundred bytes; RS256 ones about
/// 1 KiB); anything longer is refused before decoding.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;

/// How a node proves who a request acts for.
pub struct UserAuth {
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
}

impl std::fmt::Debug for UserAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserAuth({:?})", self.algorithm)
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// What the key material is.
pub enum KeySource<'a> {
    /// An HS256 shared secret (the file's bytes, trailing newline removed by the caller).
    Secret(&'a [u8]),
    /// A PEM public key (Ed25519, P-256 or RSA).
    PublicKeyPem(&'a [u8]),
}

impl UserAuth {
    pub fn new(
        source: KeySource<'_>,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<UserAuth, String> {
        let (key, algorithm) = match source {
            KeySource::Secret(s) => {
                if s.starts_with(b"-----BEGIN") {
                    return Err(
                        "the JWT secret file holds a PEM key; give a public key with \
                                --jwt-public-key-file (a public key used as an HS256 secret \
                                lets anyone who has it forge tokens)"
                            .into(),
                    );
                }
                if s.len() < 32 {
                    return Err(format!(
                        "the JWT secret is {} bytes; HS256 needs at least 32",
                        s.len()
                    ));
                }
                (DecodingKey::from_secret(s), Algorithm::HS256)
            }
            KeySource::PublicKeyPem(pem) => {
                if let Ok(k) = DecodingKey::from_ed_pem(pem) {
                    (k, Algorithm::EdDSA)
                } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                    (k, Algorithm::ES256)
                } else if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                    (k, Algorithm::RS256)
                } else {
                    return Err(
                        "the JWT public key is not an Ed25519, P-256 or RSA public key in PEM"
                            .into(),
                    );
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        Ok(UserAuth {
            key,
            validation,
            algorithm,
        })
    }

    /// The algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The user the request's bearer token proves: 401 without a valid one.
    pub fn user_of(&self, headers: &HeaderMap) -> Result<UserId, ApiError> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::token("this needs Authorization: Bearer <JWT>"))?;
        if value.len() > TOKEN_BYTES_MAX {
            return Err(ApiError::token("the token is too long"));
        }
        // The scheme is case-insensitive (RFC 7235).
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| ApiError::token("this needs Authorization: Bearer <JWT>"))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                ApiError::token(match e.kind() {
                    K::ExpiredSignature => "the token has expired",
                    K::InvalidSignature => "the token's signature is not valid",
                    K::InvalidAlgorithm => "the token is not signed with the expected algorithm",
                    K::InvalidIssuer => "the token's issuer is not accepted",
                    K::InvalidAudience => "the token's audience is not accepted",
                    K::MissingRequiredClaim(_) => "the token lacks a required claim (exp, sub)",
                    K::ImmatureSignature => "the token is not valid yet",
                    _ => "the token is not a valid JWT",
                })
            })?;
        UserId::parse(&data.claims.sub)
            .map_err(|_| ApiError::token("the token's sub is not a valid user id"))
    }
}

/// The user a reservation, payment or cancellation acts for: with proven users the token's
/// `sub` (the body's `user_id`, if given, must be it); otherwise the body's `user_id`, which
/// must then be there.
pub fn acting_user(
    auth: Option<&UserAuth>,
    headers: &HeaderMap,
    given: Option<UserId>,
) -> Result<UserId, ApiError> {
    match auth {
        None => given.ok_or_else(|| ApiError::invalid("user_id is required")),
        Some(auth) => {
            let proven = auth.user_of(headers)?;
            match given {
                Some(u) if u != proven => Err(ApiError::forbidden(
                    "user_id is not the user the token was issued to",
                )),
                _ => Ok(proven),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_is_not_taken_as_a_secret_and_short_secrets_are_refused() {
        let pem = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA...\n-----END PUBLIC KEY-----\n";
        let e = UserAuth::new(KeySource::Secret(pem), None, None).unwrap_err();
        assert!(e.contains("--jwt-public-key-file"), "{e}");
        assert!(UserAuth::new(KeySource::Secret(b"short"), None, None).is_err());
        assert!(UserAuth::new(KeySource::PublicKeyPem(b"not a key"), None, None).is_err());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_required() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let auth = UserAuth::new(KeySource::Secret(secret), None, None).unwrap();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "ann", "exp": jsonwebtoken::get_current_timestamp() + 60}),
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap();
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::header::AUTHORIZATION,
                format!("{scheme} {token}").parse().unwrap(),
            );
            assert_eq!(auth.user_of(&h).unwrap().as_str(), "ann", "{scheme}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Basic {token}").parse().unwrap(),
        );
        assert_eq!(auth.user_of(&h).unwrap_err().status, 401);
    }
}
