//! Identifiers that can only be built valid ("parse, don't validate").
//!
//! Every id that crosses the HTTP boundary is parsed here once; nothing downstream checks again.
//! The limits are part of the public contract (docs/API.md): ids are 1–64 characters of
//! `A-Z a-z 0-9 . _ - :`, idempotency keys 1–128 printable ASCII characters.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest `sale_id` / `user_id` / node id we accept, in bytes (docs/API.md).
pub const ID_LEN_MAX: usize = 64;
/// Longest `Idempotency-Key` header we accept, in bytes (docs/API.md).
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 128;
/// Longest reservation id we look up. Ours are 26 random characters, a `.` and the sale id
/// (at most 64): 91; anything longer cannot exist, so it is refused before it reaches a store.
pub const RESERVATION_ID_LEN_MAX: usize = 26 + 1 + ID_LEN_MAX;

/// Why an identifier was refused; the message is shown to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} characters")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} may only contain A-Z a-z 0-9 . _ - :")]
    BadCharacter { what: &'static str },
    #[error("{what} may only contain printable ASCII characters")]
    NotPrintable { what: &'static str },
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')
}

fn parse_id(what: &'static str, s: &str) -> Result<Arc<str>, IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > ID_LEN_MAX {
        return Err(IdError::TooLong {
            what,
            max: ID_LEN_MAX,
        });
    }
    if !s.bytes().all(is_id_byte) {
        return Err(IdError::BadCharacter { what });
    }
    Ok(Arc::from(s))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        /// Cheap to clone (a shared string), ordered and hashable.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Parses `s`, refusing anything outside the contract's id alphabet and length.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                parse_id($what, s).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A sale (one train, one date, one class): the unit of stock.
    SaleId,
    "sale_id"
);
id_type!(
    /// A buyer. The per-user limit counts per (sale, user).
    UserId,
    "user_id"
);
id_type!(
    /// A selling node; it owns leases.
    NodeId,
    "node id"
);
id_type!(
    /// A place in a sale's waiting-room queue. Made by the node from 128 random bits: it is
    /// what a buyer polls with, so it cannot be guessed, and the pre-queue's order at the
    /// opening is the order of these ids (they are random, so the order is a fair shuffle).
    QueueId,
    "queue_id"
);
id_type!(
    /// A place on a sale's waitlist. Made by the node from 128 random bits; the reservation a
    /// freed ticket becomes for it is `WAITLIST_ID.SALE_ID` (one offer per place).
    WaitlistId,
    "waitlist_id"
);

/// An opaque reservation id. Made by the node from at least 96 random bits (ours: 128), so it
/// cannot be guessed; parsing only bounds its length and alphabet, since the store is the judge
/// of whether it exists.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(Arc<str>);

impl ReservationId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "reservation_id";
        if s.is_empty() {
            return Err(IdError::Empty { what: WHAT });
        }
        if s.len() > RESERVATION_ID_LEN_MAX {
            return Err(IdError::TooLong {
                what: WHAT,
                max: RESERVATION_ID_LEN_MAX,
            });
        }
        if !s.bytes().all(is_id_byte) {
            return Err(IdError::BadCharacter { what: WHAT });
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReservationId({:?})", &*self.0)
    }
}

/// The client's `Idempotency-Key`: 1–128 printable ASCII characters (space through `~`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "Idempotency-Key";
        if s.is_empty() {
            return Err(IdError::Empty { what: WHAT });
        }
        if s.len() > IDEMPOTENCY_KEY_LEN_MAX {
            return Err(IdError::TooLong {
                what: WHAT,
                max: IDEMPOTENCY_KEY_LEN_MAX,
            });
        }
        if !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(IdError::NotPrintable { what: WHAT });
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_alphabet() {
        assert!(SaleId::parse("G1234-20270128-2nd").is_ok());
        assert!(UserId::parse("u:42.a_b-C").is_ok());
        assert!(UserId::parse(&"x".repeat(ID_LEN_MAX)).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        assert_eq!(UserId::parse(""), Err(IdError::Empty { what: "user_id" }));
        assert!(matches!(
            UserId::parse(&"x".repeat(ID_LEN_MAX + 1)),
            Err(IdError::TooLong { .. })
        ));
        for bad in ["a b", "a/b", "ü", "a\u{0}", "a\nb", "a%20", "a?b", "a#b"] {
            assert!(
                matches!(UserId::parse(bad), Err(IdError::BadCharacter { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn idempotency_keys_are_printable_ascii() {
        assert!(IdempotencyKey::parse("order 42 / retry #1").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(IDEMPOTENCY_KEY_LEN_MAX)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(IDEMPOTENCY_KEY_LEN_MAX + 1)).is_err());
        assert!(IdempotencyKey::parse("tab\there").is_err());
        assert!(IdempotencyKey::parse("é").is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }
}
