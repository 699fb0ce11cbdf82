//! Admission tokens of a sale's waiting room: what lets a queued buyer reserve.
//!
//! A token is `EXPIRY_MS.MAC`: the Unix millisecond it stops working, then HMAC-SHA256 (in
//! unpadded base64url) of the sale, the user and that expiry under the sale's queue secret.
//! The secret lives in the sale's spec, which every node caches, so any node verifies a token
//! without asking a store; it binds one sale and one user and expires (docs/API.md).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use ticketrush_core::{QueueSpec, SaleId, UnixMs, UserId};

/// Longest token accepted: an i64 in decimal, a dot and 43 base64url characters.
pub const TOKEN_LEN_MAX: usize = 20 + 1 + 43;

/// Why a token was refused; the message is shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    /// Not signed for this sale and user (another user's, another sale's, or forged).
    NotIssued,
    Expired,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => {
                "this sale has a waiting room: join its queue and send the admission token \
                 (header Admission-Token) once admitted"
            }
            Refusal::Malformed => "the Admission-Token is malformed",
            Refusal::NotIssued => "the Admission-Token was not issued to this user for this sale",
            Refusal::Expired => {
                "the Admission-Token has expired; join the queue again for a new place"
            }
        }
    }
}

fn mac(q: &QueueSpec, sale: &SaleId, user: &UserId, expires: UnixMs) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(q.secret.as_bytes())
        .expect("HMAC takes a key of any length");
    m.update(b"ticketrush admission\n");
    m.update(sale.as_str().as_bytes());
    m.update(b"\n");
    m.update(user.as_str().as_bytes());
    m.update(b"\n");
    m.update(expires.0.to_string().as_bytes());
    m
}

/// A token for `user` on `sale`, good until `expires`.
pub fn issue(q: &QueueSpec, sale: &SaleId, user: &UserId, expires: UnixMs) -> String {
    let tag = mac(q, sale, user, expires).finalize().into_bytes();
    format!("{}.{}", expires.0, URL_SAFE_NO_PAD.encode(tag))
}

/// Checks a token for `user` on `sale` at `now` (the signature compared in constant time).
pub fn verify(
    q: &QueueSpec,
    sale: &SaleId,
    user: &UserId,
    token: Option<&[u8]>,
    now: UnixMs,
) -> Result<(), Refusal> {
    let token = token.ok_or(Refusal::Missing)?;
    if token.len() > TOKEN_LEN_MAX {
        return Err(Refusal::Malformed);
    }
    let token = std::str::from_utf8(token).map_err(|_| Refusal::Malformed)?;
    let (expires, tag) = token.split_once('.').ok_or(Refusal::Malformed)?;
    let expires: i64 = expires.parse().map_err(|_| Refusal::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| Refusal::Malformed)?;
    mac(q, sale, user, UnixMs(expires))
        .verify_slice(&tag)
        .map_err(|_| Refusal::NotIssued)?;
    if UnixMs(expires) <= now {
        return Err(Refusal::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(secret: &str) -> QueueSpec {
        QueueSpec {
            admit_per_second: 10,
            secret: secret.into(),
        }
    }

    #[test]
    fn a_token_works_only_for_its_sale_user_and_time() {
        let (s1, s2) = (SaleId::parse("s1").unwrap(), SaleId::parse("s2").unwrap());
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        let key = q("0123456789abcdef");
        let t = issue(&key, &s1, &a, UnixMs(5_000));
        let check = |k: &QueueSpec, s: &SaleId, u: &UserId, tok: &str, now: i64| {
            verify(k, s, u, Some(tok.as_bytes()), UnixMs(now))
        };
        assert_eq!(check(&key, &s1, &a, &t, 4_999), Ok(()));
        assert_eq!(check(&key, &s1, &a, &t, 5_000), Err(Refusal::Expired));
        assert_eq!(check(&key, &s1, &b, &t, 1), Err(Refusal::NotIssued));
        assert_eq!(check(&key, &s2, &a, &t, 1), Err(Refusal::NotIssued));
        assert_eq!(
            check(&q("another"), &s1, &a, &t, 1),
            Err(Refusal::NotIssued)
        );
        // A later expiry under the same signature is a forgery.
        let (_, tag) = t.split_once('.').unwrap();
        assert_eq!(
            check(&key, &s1, &a, &format!("9999999.{tag}"), 1),
            Err(Refusal::NotIssued)
        );
        for bad in ["", "x", "5000", "5000.", "abc.def", "5000.!!!"] {
            assert!(
                matches!(
                    check(&key, &s1, &a, bad, 1),
                    Err(Refusal::Malformed | Refusal::NotIssued)
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            verify(&key, &s1, &a, None, UnixMs(1)),
            Err(Refusal::Missing)
        );
        assert_eq!(
            check(&key, &s1, &a, &"9".repeat(TOKEN_LEN_MAX + 1), 1),
            Err(Refusal::Malformed)
        );
        assert!(t.len() <= TOKEN_LEN_MAX);
    }
}
