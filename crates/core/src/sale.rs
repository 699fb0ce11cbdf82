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
/// Most buyers a waiting room admits per second (docs/API.md: 1–100,000).
pub const ADMIT_PER_SECOND_MAX: u32 = 100_000;
/// How long an admission lasts: a buyer admitted at time t may reserve until t + this. After
/// it, joining again puts the buyer at the back of the line (docs/API.md).
pub const ADMISSION_WINDOW_MS: i64 = 10 * 60 * 1000;

/// A sale's waiting room: buyers join a queue, are put in line (the pre-queue shuffled at the
/// opening) and admitted at `admit_per_second`, in line order. `secret` signs the admission
/// tokens, so every node verifies one without asking a store; it is made when the sale is
/// created, kept with the spec, and never shown by the API.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSpec {
    pub admit_per_second: u32,
    pub secret: String,
}

impl std::fmt::Debug for QueueSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSpec")
            .field("admit_per_second", &self.admit_per_second)
            .finish_non_exhaustive()
    }
}

impl QueueSpec {
    /// How many places of the line are admitted at `now`: none before the opening, the first
    /// at the opening instant, then one more every `1000 / admit_per_second` ms.
    pub fn admitted_through(&self, opens_at: UnixMs, now: UnixMs) -> u64 {
        if now < opens_at {
            return 0;
        }
        let elapsed = (now.0 - opens_at.0) as u128;
        (elapsed * u128::from(self.admit_per_second) / 1000 + 1).min(u128::from(u64::MAX)) as u64
    }

    /// When place `rank` (from 1) is admitted: the first instant `admitted_through` reaches it.
    pub fn admitted_at(&self, opens_at: UnixMs, rank: u64) -> UnixMs {
        let before = u128::from(rank.saturating_sub(1)) * 1000;
        let rate = u128::from(self.admit_per_second);
        let ms = before.div_ceil(rate).min(i64::MAX as u128 / 2) as i64;
        opens_at.plus_ms(ms)
    }

    /// Whether an admission of place `rank` has lapsed at `now` (its window is over).
    pub fn lapsed(&self, opens_at: UnixMs, rank: u64, now: UnixMs) -> bool {
        self.admitted_at(opens_at, rank)
            .plus_ms(ADMISSION_WINDOW_MS)
            <= now
    }
}

/// A validated sale definition. Immutable once created, which is what lets nodes cache it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleSpec {
    pub id: SaleId,
    pub name: String,
    pub total: u64,
    pub per_user_limit: u32,
    pub hold_seconds: u32,
    pub opens_at: UnixMs,
    /// The sale's waiting room, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,
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
    #[error("queue.admit_per_second must be between 1 and {ADMIT_PER_SECOND_MAX}")]
    AdmitPerSecond,
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
            queue: None,
        })
    }

    /// The same sale with a waiting room admitting `admit_per_second` buyers a second, its
    /// tokens signed with `secret` (made by the caller: core reads no random source).
    pub fn with_queue(
        mut self,
        admit_per_second: u32,
        secret: String,
    ) -> Result<SaleSpec, SaleSpecError> {
        if !(1..=ADMIT_PER_SECOND_MAX).contains(&admit_per_second) {
            return Err(SaleSpecError::AdmitPerSecond);
        }
        self.queue = Some(QueueSpec {
            admit_per_second,
            secret,
        });
        Ok(self)
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
        let s = new(1, None, None).unwrap();
        assert_eq!(
            s.clone().with_queue(0, "k".into()),
            Err(SaleSpecError::AdmitPerSecond)
        );
        assert_eq!(
            s.clone().with_queue(ADMIT_PER_SECOND_MAX + 1, "k".into()),
            Err(SaleSpecError::AdmitPerSecond)
        );
        assert!(s.with_queue(ADMIT_PER_SECOND_MAX, "k".into()).is_ok());
    }

    /// Place r is admitted exactly when `admitted_through` first reaches r, at every rate.
    #[test]
    fn admission_times_agree_with_the_admitted_count() {
        let opens = UnixMs(1_000_000);
        for rate in [1, 2, 3, 7, 1000, 100_000] {
            let q = QueueSpec {
                admit_per_second: rate,
                secret: String::new(),
            };
            assert_eq!(q.admitted_through(opens, UnixMs(opens.0 - 1)), 0);
            assert_eq!(q.admitted_through(opens, opens), 1);
            for rank in [1u64, 2, 3, 10, 999, 12_345] {
                let at = q.admitted_at(opens, rank);
                assert!(
                    q.admitted_through(opens, at) >= rank,
                    "rate {rate} rank {rank}"
                );
                assert!(
                    q.admitted_through(opens, UnixMs(at.0 - 1)) < rank,
                    "rate {rate} rank {rank}"
                );
            }
            // Over ten seconds, the rate is held.
            let n = q.admitted_through(opens, opens.plus_ms(10_000));
            assert_eq!(n, u64::from(rate) * 10 + 1);
        }
    }
}
