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
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Sha256;
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
    /// HS256 only: the secret keyed into HMAC-SHA256 once, cloned per token (`verify_hs256`).
    hs256: Option<Hmac<Sha256>>,
    issuer: Option<String>,
    audience: Option<String>,
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
        let mut hs256 = None;
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
                hs256 =
                    Some(Hmac::<Sha256>::new_from_slice(s).map_err(|e| format!("HS256 key: {e}"))?);
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
            hs256,
            issuer: issuer.map(str::to_string),
            audience: audience.map(str::to_string),
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
        let sub = match &self.hs256 {
            Some(mac) => self.verify_hs256(mac, token, unix_now())?,
            None => self.verify_with_jsonwebtoken(token)?,
        };
        UserId::parse(&sub).map_err(|_| ApiError::token("the token's sub is not a valid user id"))
    }

    /// Any algorithm, through `jsonwebtoken`: the token's `sub`.
    fn verify_with_jsonwebtoken(&self, token: &str) -> Result<String, ApiError> {
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
        Ok(data.claims.sub)
    }

    /// HS256 without `jsonwebtoken`, which cost about 31,000 instructions a token (it parses
    /// the header twice, the claims twice and builds a verifier per token; BENCHMARKS.md,
    /// issue 17). The same checks in the same order, with the same answers (a unit test holds
    /// the two side by side):
    /// 1. the header's `alg` must be HS256;
    /// 2. the signature over `header.payload` is compared in constant time;
    /// 3. `exp` and `sub` are required, and `iss` and `aud` when configured;
    /// 4. `exp` and `nbf` are checked with `LEEWAY_SECONDS`;
    /// 5. `iss` and `aud` are checked when configured (an unconfigured `aud` is ignored, as
    ///    `jsonwebtoken` is set up here).
    ///
    /// Answers the token's `sub`.
    fn verify_hs256(&self, mac: &Hmac<Sha256>, token: &str, now: u64) -> Result<String, ApiError> {
        const B64: base64::engine::GeneralPurpose =
            base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let invalid = || ApiError::token("the token is not a valid JWT");
        let (signed, signature) = token.rsplit_once('.').ok_or_else(invalid)?;
        let (header, payload) = signed.split_once('.').ok_or_else(invalid)?;
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let header: Header = serde_json::from_slice(&B64.decode(header).map_err(|_| invalid())?)
            .map_err(|_| invalid())?;
        if header.alg != "HS256" {
            return Err(ApiError::token(
                "the token is not signed with the expected algorithm",
            ));
        }
        let signature = B64.decode(signature).map_err(|_| invalid())?;
        mac.clone()
            .chain_update(signed.as_bytes())
            .verify_slice(&signature)
            .map_err(|_| ApiError::token("the token's signature is not valid"))?;
        let payload = B64.decode(payload).map_err(|_| invalid())?;
        // As `jsonwebtoken` does: first the claim we use (a `sub` string, or the token is not
        // valid), then the ones it validates, read leniently (one of the wrong type counts as
        // missing).
        let claims: FastClaims = serde_json::from_slice(&payload).map_err(|_| invalid())?;
        let Lenient::Parsed(sub) = claims.sub else {
            return Err(invalid());
        };
        let missing = || ApiError::token("the token lacks a required claim (exp, sub)");
        if !claims.exp.parsed()
            || (self.issuer.is_some() && !claims.iss.parsed())
            || (self.audience.is_some() && !claims.aud.parsed())
        {
            return Err(missing());
        }
        if matches!(claims.nbf, Lenient::Failed) {
            return Err(invalid());
        }
        if let Lenient::Parsed(exp) = &claims.exp {
            if exp.0 < now.saturating_sub(LEEWAY_SECONDS) {
                return Err(ApiError::token("the token has expired"));
            }
        }
        if let Lenient::Parsed(nbf) = &claims.nbf {
            if nbf.0 > now + LEEWAY_SECONDS {
                return Err(ApiError::token("the token is not valid yet"));
            }
        }
        if let (Some(want), Lenient::Parsed(iss)) = (&self.issuer, &claims.iss) {
            if !iss.contains(want) {
                return Err(ApiError::token("the token's issuer is not accepted"));
            }
        }
        if let Some(want) = &self.audience {
            if !matches!(&claims.aud, Lenient::Parsed(aud) if aud.contains(want)) {
                return Err(ApiError::token("the token's audience is not accepted"));
            }
        }
        Ok(sub)
    }
}

/// The claims the HS256 path validates; any other claim is ignored, as `jsonwebtoken` does.
#[derive(Deserialize)]
struct FastClaims {
    #[serde(default)]
    sub: Lenient<String>,
    #[serde(default)]
    exp: Lenient<NumericDate>,
    #[serde(default)]
    nbf: Lenient<NumericDate>,
    #[serde(default)]
    iss: Lenient<OneOrMany>,
    #[serde(default)]
    aud: Lenient<OneOrMany>,
}

/// A claim as `jsonwebtoken` validates it: there and well-typed, there and not, or absent.
#[derive(Default)]
enum Lenient<T> {
    Parsed(T),
    Failed,
    #[default]
    Absent,
}

impl<T> Lenient<T> {
    fn parsed(&self) -> bool {
        matches!(self, Lenient::Parsed(_))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lenient<T>, D::Error> {
        Ok(match Option::<T>::deserialize(d) {
            Ok(Some(v)) => Lenient::Parsed(v),
            Ok(None) => Lenient::Absent,
            Err(_) => Lenient::Failed,
        })
    }
}

/// Seconds since the epoch as RFC 7519 writes them: an integer or a number with a fraction
/// (whose fraction is dropped), never negative.
struct NumericDate(u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NumericDate, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        // As `jsonwebtoken` reads it: a fraction is rounded.
        n.as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                    .map(|f| f.round() as u64)
            })
            .map(NumericDate)
            .ok_or_else(|| serde::de::Error::custom("not a NumericDate"))
    }
}

/// `iss` or `aud`: one string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn contains(&self, want: &str) -> bool {
        match self {
            OneOrMany::One(s) => s == want,
            OneOrMany::Many(v) => v.iter().any(|s| s == want),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

    /// The HS256 path answers every token as `jsonwebtoken` does: the same user, or the same
    /// refusal (status, and message where `jsonwebtoken` names the fault).
    #[test]
    fn the_hs256_path_agrees_with_jsonwebtoken() {
        use serde_json::json;
        let secret = b"0123456789abcdef0123456789abcdef";
        let now = jsonwebtoken::get_current_timestamp();
        let sign = |alg: Algorithm, claims: &serde_json::Value, key: &[u8]| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(alg),
                claims,
                &jsonwebtoken::EncodingKey::from_secret(key),
            )
            .unwrap()
        };
        let good = |c: serde_json::Value| sign(Algorithm::HS256, &c, secret);
        let valid = sign(
            Algorithm::HS256,
            &json!({"sub": "ann", "exp": now + 60}),
            secret,
        );
        let (body, _) = valid.rsplit_once('.').unwrap();
        let mut tokens = vec![
            valid.clone(),
            good(json!({"sub": "ann", "exp": now + 60, "extra": [1, 2]})),
            good(json!({"sub": "ann", "exp": (now + 60) as f64 + 0.6})),
            good(json!({"sub": "ann", "exp": now - 10})),
            good(json!({"sub": "ann", "exp": now - 100})),
            good(json!({"sub": "ann", "exp": "soon"})),
            good(json!({"sub": "ann", "exp": -5})),
            good(json!({"sub": "ann"})),
            good(json!({"exp": now + 60})),
            good(json!({"sub": "ann", "exp": now + 60, "nbf": now + 10})),
            good(json!({"sub": "ann", "exp": now + 60, "nbf": now + 100})),
            good(json!({"sub": "ann", "exp": now + 60, "iss": "them"})),
            good(json!({"sub": "ann", "exp": now + 60, "iss": "us", "aud": "app"})),
            good(json!({"sub": "ann", "exp": now + 60, "iss": "us", "aud": ["x", "app"]})),
            good(json!({"sub": "ann", "exp": now + 60, "iss": "us", "aud": ["x"]})),
            good(json!({"sub": "not a user id!", "exp": now + 60})),
            sign(
                Algorithm::HS384,
                &json!({"sub": "ann", "exp": now + 60}),
                secret,
            ),
            sign(
                Algorithm::HS256,
                &json!({"sub": "ann", "exp": now + 60}),
                b"another secret of thirty-two bytes!",
            ),
            format!("{body}.{}", "A".repeat(43)),
            format!("{body}."),
            body.to_string(),
            "a.b.c.d".into(),
            "not a token".into(),
            String::new(),
        ];
        // A header that says `none`, with the valid token's claims and no signature.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = body.split_once('.').unwrap().1;
        tokens.push(format!("{}.{payload}.", b64.encode(br#"{"alg":"none"}"#)));
        for (iss, aud) in [(None, None), (Some("us"), Some("app"))] {
            let auth = UserAuth::new(KeySource::Secret(secret), iss, aud).unwrap();
            for t in &tokens {
                let fast = auth.verify_hs256(auth.hs256.as_ref().unwrap(), t, now);
                let slow = auth.verify_with_jsonwebtoken(t);
                match (&fast, &slow) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{t}"),
                    (Err(a), Err(b)) => {
                        assert_eq!(a.status, b.status, "{t}");
                        if b.message != "the token is not a valid JWT" {
                            assert_eq!(a.message, b.message, "{t} (iss {iss:?})");
                        }
                    }
                    _ => panic!("{t} (iss {iss:?}): fast {fast:?}, jsonwebtoken {slow:?}"),
                }
            }
        }
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
