//! A sale's definition and its public counts.

use serde::{Deserialize, Serialize};

use crate::clock::UnixMs;
use crate::ids::SaleId;

/// Largest `total` a sale may have (docs/API.md).
pub const SALE_TOTAL_MAX: u64 = 1_000_000_000;
/// Longest sale `hold_seconds` (docs/API.md: 1–86400).
pub const HOLD_SECONDS_MAX: u32 = 86_400;
/// Default hold while the buyer pays (docs/API.md).
pub const HOLD_SECONDS_DEFAULT: u32 = 900;
/// Largest `per_user_limit`. The contract sets none; a train ticket limit in the thousands is a
/// mistake, and the bound keeps a user's active count small.
pub const PER_USER_LIMIT_MAX: u32 = 1_000;
/// Longest sale `name`, in characters.
pub const SALE_NAME_LEN_MAX: usize = 256;

/// A validated sale definition. Immutable once created, which is what lets nodes cache it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleSpec {
    pub id: SaleId,
    pub name: String,
    pub total: u64,
    pub per_user_limit: u32,
    pub hold_seconds: u32,
    pub opens_at: UnixMs,
}

/// Why a sale definition was refused; shown to the admin as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaleSpecError {
    #[error("total must be between 1 and {SALE_TOTAL_MAX}")]
    Total,
    #[error("per_user_limit must be between 1 and {PER_USER_LIMIT_MAX}")]
    PerUserLimit,
    #[error("hold_seconds must be between 1 and {HOLD_SECONDS_MAX}")]
    HoldSeconds,
    #[error("name must be at most {SALE_NAME_LEN_MAX} characters without control characters")]
    Name,
}

impl SaleSpec {
    /// Builds a spec, applying the contract's defaults and refusing values out of range.
    pub fn new(
        id: SaleId,
        name: Option<String>,
        total: u64,
        per_user_limit: Option<u32>,
        hold_seconds: Option<u32>,
        opens_at: UnixMs,
    ) -> Result<SaleSpec, SaleSpecError> {
        if !(1..=SALE_TOTAL_MAX).contains(&total) {
            return Err(SaleSpecError::Total);
        }
        let per_user_limit = per_user_limit.unwrap_or(1);
        if !(1..=PER_USER_LIMIT_MAX).contains(&per_user_limit) {
            return Err(SaleSpecError::PerUserLimit);
        }
        let hold_seconds = hold_seconds.unwrap_or(HOLD_SECONDS_DEFAULT);
        if !(1..=HOLD_SECONDS_MAX).contains(&hold_seconds) {
            return Err(SaleSpecError::HoldSeconds);
        }
        let name = name.unwrap_or_else(|| id.to_string());
        if name.chars().count() > SALE_NAME_LEN_MAX || name.chars().any(char::is_control) {
            return Err(SaleSpecError::Name);
        }
        Ok(SaleSpec {
            id,
            name,
            total,
            per_user_limit,
            hold_seconds,
            opens_at,
        })
    }

    pub fn hold_ms(&self) -> i64 {
        i64::from(self.hold_seconds) * 1000
    }
}

/// A sale with its counts as the API shows it. `available` counts the pool and every live
/// node allotment; `available + reserved + paid == total` always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleView {
    pub spec: SaleSpec,
    pub available: u64,
    pub reserved: u64,
    pub paid: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SaleId {
        SaleId::parse("s1").unwrap()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = SaleSpec::new(id(), None, 10, None, None, UnixMs(0)).unwrap();
        assert_eq!(s.per_user_limit, 1);
        assert_eq!(s.hold_seconds, 900);
        assert_eq!(s.name, "s1");
    }

    #[test]
    fn ranges_are_enforced() {
        let new = |total, limit, hold| SaleSpec::new(id(), None, total, limit, hold, UnixMs(0));
        assert_eq!(new(0, None, None), Err(SaleSpecError::Total));
        assert_eq!(
            new(SALE_TOTAL_MAX + 1, None, None),
            Err(SaleSpecError::Total)
        );
        assert!(new(SALE_TOTAL_MAX, None, None).is_ok());
        assert_eq!(new(1, Some(0), None), Err(SaleSpecError::PerUserLimit));
        assert_eq!(new(1, None, Some(0)), Err(SaleSpecError::HoldSeconds));
        assert_eq!(new(1, None, Some(86_401)), Err(SaleSpecError::HoldSeconds));
        let bad_name = SaleSpec::new(id(), Some("a\nb".into()), 1, None, None, UnixMs(0));
        assert_eq!(bad_name, Err(SaleSpecError::Name));
    }
}
