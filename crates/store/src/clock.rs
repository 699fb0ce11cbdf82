//! The clock a store decides by: the system's in a running node, a manual one in tests.
//!
//! The core never reads a clock (every operation takes `now`); the embedded store asks its
//! `Clock` once per change, so a test can make a hold expire or a first-version lease lapse
//! by moving a `ManualClock` forward instead of waiting for it. (The Redis store decides by
//! Redis's `TIME`, one clock for every node, and is not driven by this.)

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ticketrush_core::UnixMs;

/// Where a store reads the time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixMs;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMs {
        let d = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        UnixMs(d.as_millis() as i64)
    }
}

/// A clock that moves only when told to (tests). Clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `at`.
    pub fn at(at: UnixMs) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(at.0)))
    }

    /// A clock reading the system's time now, from then on moved by hand.
    pub fn starting_now() -> ManualClock {
        ManualClock::at(SystemClock.now())
    }

    /// Moves the clock forward by `by` (never back: deadlines only pass).
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMs {
        UnixMs(self.0.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let c = ManualClock::at(UnixMs(1_000));
        let shared = c.clone();
        assert_eq!(c.now(), UnixMs(1_000));
        shared.advance(Duration::from_millis(250));
        assert_eq!(c.now(), UnixMs(1_250));
    }
}
