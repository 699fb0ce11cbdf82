//! Time as the stock model sees it: whole milliseconds since the Unix epoch, UTC.
//!
//! The core never reads a clock; callers pass `now` in. That keeps the model deterministic for
//! replay and for property tests, and leaves the choice of clock to the store (the embedded
//! store reads the system clock, Redis will use its own `TIME`).

use std::fmt;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct UnixMs(pub i64);

impl UnixMs {
    pub fn plus_ms(self, ms: i64) -> UnixMs {
        UnixMs(self.0.saturating_add(ms))
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2027-01-01T08:00:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        let t =
            OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
        format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }

    /// Parses RFC 3339 with any offset; sub-millisecond digits are dropped.
    pub fn parse_rfc3339(s: &str) -> Result<UnixMs, TimeError> {
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| TimeError::NotRfc3339)?;
        // Answers are written in UTC with four-digit years: a time outside them (year 0000 with a
        // positive offset, 9999 with a negative one) could not be written back as given.
        let utc = t
            .checked_to_offset(time::UtcOffset::UTC)
            .ok_or(TimeError::OutOfRange)?;
        if !(0..=9999).contains(&utc.year()) {
            return Err(TimeError::OutOfRange);
        }
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        i64::try_from(ms)
            .map(UnixMs)
            .map_err(|_| TimeError::NotRfc3339)
    }
}

impl fmt::Debug for UnixMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_rfc3339())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("not an RFC 3339 date-time (for example 2027-01-01T08:00:00Z)")]
    NotRfc3339,
    #[error("outside the years 0000 to 9999 in UTC")]
    OutOfRange,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_four_digit_utc_years_are_refused() {
        for bad in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:59:00-01:00"] {
            assert_eq!(
                UnixMs::parse_rfc3339(bad),
                Err(TimeError::OutOfRange),
                "{bad}"
            );
        }
        for (given, written) in [
            ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00.000Z"),
            ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
        ] {
            let t = UnixMs::parse_rfc3339(given).unwrap();
            assert_eq!(t.to_rfc3339(), written);
        }
    }

    #[test]
    fn round_trips_rfc3339_in_utc() {
        let t = UnixMs::parse_rfc3339("2027-01-01T08:00:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2027-01-01T08:00:00.000Z");
        let shifted = UnixMs::parse_rfc3339("2027-01-01T09:00:00.250+01:00").unwrap();
        assert_eq!(shifted, t.plus_ms(250));
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in ["", "tomorrow", "2027-01-01", "2027-13-01T00:00:00Z", "1e9"] {
            assert_eq!(
                UnixMs::parse_rfc3339(bad),
                Err(TimeError::NotRfc3339),
                "{bad}"
            );
        }
    }
}
