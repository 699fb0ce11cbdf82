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
    ///
    /// Every reservation answer and order row writes three of these, so the years 0000 to
    /// 9999 (all `parse_rfc3339` accepts) are formatted by hand into a 24-byte buffer: a few
    /// hundred instructions against about 5,000 through `time` and `format!`. Other times
    /// (out of any real use) go the long way.
    pub fn to_rfc3339(self) -> String {
        const MS_PER_DAY: i64 = 86_400_000;
        let days = self.0.div_euclid(MS_PER_DAY);
        let ms_of_day = self.0.rem_euclid(MS_PER_DAY);
        let (y, mo, d) = civil_from_days(days);
        if !(0..=9999).contains(&y) {
            return self.to_rfc3339_slow();
        }
        let (h, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
        let (mi, rest) = (rest / 60_000, rest % 60_000);
        let (sec, milli) = (rest / 1_000, rest % 1_000);
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, mo);
        put(8, 2, d);
        put(11, 2, h);
        put(14, 2, mi);
        put(17, 2, sec);
        put(20, 3, milli);
        // Only ASCII digits and separators were written.
        String::from_utf8(b.to_vec()).unwrap_or_default()
    }

    /// `to_rfc3339` through `time`, for years outside 0000 to 9999.
    fn to_rfc3339_slow(self) -> String {
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

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`: eras of 400 years, March-based years so that the leap day comes last).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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

    /// The hand-written formatter agrees with `time` across the years 0000 to 9999, leap days
    /// and the epoch's edges included.
    #[test]
    fn the_fast_formatter_agrees_with_time() {
        let edges = [
            0,
            -1,
            1,
            951_782_400_000 - 1, // 2000-02-28T23:59:59.999Z
            951_868_800_000,     // 2000-03-01
            -62_167_219_200_000, // 0000-01-01
            253_402_300_799_999, // 9999-12-31T23:59:59.999Z
            4_107_542_400_000,   // 2100-03-01 (2100 is not a leap year)
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let span = 253_402_300_799_999_i64 + 62_167_219_200_000;
        let random = (0..20_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % span as u64) as i64 - 62_167_219_200_000
        });
        for ms in edges.into_iter().chain(random) {
            let t = UnixMs(ms);
            assert_eq!(t.to_rfc3339(), t.to_rfc3339_slow(), "{ms}");
            assert_eq!(UnixMs::parse_rfc3339(&t.to_rfc3339()), Ok(t), "{ms}");
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
