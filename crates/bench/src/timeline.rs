//! Per-second figures for the chart: requests, wins, p99 latency and the sale's stock.
//!
//! Shaped so the hot path shares nothing: each connection task counts the current second in
//! its own `SecondCounts` (a coarse log histogram of 100 counters, about 19 % wide each, plenty
//! for a p99 line) and adds it into the shared `Timeline` only when the second changes, so the
//! shared atomics are touched once per connection per second, not once per request. The
//! timeline has one slot per second of `--max-seconds` (at most `RUN_SECONDS_MAX`), allocated
//! up front, so its size is bounded; a late figure beyond the last slot goes into the last.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Latency buckets: 8 exact ones below 8 µs, then 4 per power of two up to 2^26 µs (67 s).
pub const LATENCY_BUCKETS: usize = 100;
const LATENCY_US_CAP: u64 = (1 << 26) - 1;

/// The bucket of a latency in microseconds (values past the cap go to the last bucket).
pub fn bucket_of(us: u64) -> usize {
    let v = us.min(LATENCY_US_CAP);
    if v < 8 {
        return v as usize;
    }
    let octave = 63 - v.leading_zeros() as u64; // ≥ 3
    let sub = (v >> (octave - 2)) & 3;
    ((octave - 1) * 4 + sub) as usize
}

/// The largest latency (µs) that falls into bucket `i`.
pub fn bucket_top_us(i: usize) -> u64 {
    debug_assert!(i < LATENCY_BUCKETS);
    if i < 8 {
        return i as u64;
    }
    let octave = (i / 4 + 1) as u64;
    let sub = (i % 4) as u64;
    ((5 + sub) << (octave - 2)) - 1
}

/// One connection's counts for the second it is in. Owned by that task alone.
pub struct SecondCounts {
    pub second: u32,
    pub requests: u32,
    pub succeeded: u32,
    pub latency: [u32; LATENCY_BUCKETS],
}

impl Default for SecondCounts {
    fn default() -> Self {
        Self::new()
    }
}

impl SecondCounts {
    pub fn new() -> SecondCounts {
        SecondCounts {
            second: 0,
            requests: 0,
            succeeded: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }

    /// Counts one answer finished in `second`; flushes the previous second first.
    #[inline]
    pub fn record(&mut self, timeline: &Timeline, second: u32, latency_us: u64, won: bool) {
        if second != self.second {
            self.flush(timeline);
            self.second = second;
        }
        self.requests += 1;
        self.succeeded += u32::from(won);
        self.latency[bucket_of(latency_us)] += 1;
    }

    /// Counts one request that got no answer: in the rate, not in the latency.
    pub fn record_failed(&mut self, timeline: &Timeline, second: u32) {
        if second != self.second {
            self.flush(timeline);
            self.second = second;
        }
        self.requests += 1;
    }

    /// Adds these counts into the shared timeline and clears them.
    pub fn flush(&mut self, timeline: &Timeline) {
        if self.requests == 0 {
            return;
        }
        let slot = timeline.slot(self.second);
        slot.requests
            .fetch_add(u64::from(self.requests), Ordering::Relaxed);
        slot.succeeded
            .fetch_add(u64::from(self.succeeded), Ordering::Relaxed);
        for (shared, n) in slot.latency.iter().zip(self.latency.iter_mut()) {
            if *n != 0 {
                shared.fetch_add(*n, Ordering::Relaxed);
                *n = 0;
            }
        }
        self.requests = 0;
        self.succeeded = 0;
    }
}

struct Slot {
    requests: AtomicU64,
    succeeded: AtomicU64,
    latency: [AtomicU32; LATENCY_BUCKETS],
    /// The sale's `available` read in this second, or -1 when not read.
    available: AtomicI64,
}

/// Steps per second of the wins timeline (10 ms each): fine enough to draw a sell-out that
/// takes half a second.
pub const WIN_TICKS_PER_SECOND: u64 = 100;

/// The run's per-second figures, shared by every connection task (written once per second by
/// each) and the stock sampler; and the wins per 10 ms (one atomic add per win: wins are at
/// most the tickets, not the requests).
pub struct Timeline {
    slots: Box<[Slot]>,
    wins: Box<[AtomicU32]>,
}

/// One second of the run, as reported and charted.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SecondPoint {
    pub second: u32,
    pub requests: u64,
    pub succeeded: u64,
    /// The 99th percentile of the answers that finished in this second (bucket top, ≈19 %).
    pub p99_ms: f64,
    /// The sale's available tickets read in this second, if it was read.
    pub available: Option<u64>,
}

impl Timeline {
    pub fn new(seconds: u64) -> Timeline {
        let n = seconds.clamp(1, crate::args::RUN_SECONDS_MAX + 1) as usize;
        let slots = (0..n)
            .map(|_| Slot {
                requests: AtomicU64::new(0),
                succeeded: AtomicU64::new(0),
                latency: std::array::from_fn(|_| AtomicU32::new(0)),
                available: AtomicI64::new(-1),
            })
            .collect();
        let wins = (0..n as u64 * WIN_TICKS_PER_SECOND)
            .map(|_| AtomicU32::new(0))
            .collect();
        Timeline { slots, wins }
    }

    /// Counts a win answered `elapsed` after the start (beyond the last tick: in the last).
    pub fn record_win(&self, elapsed: std::time::Duration) {
        let tick = (elapsed.as_millis() as u64 * WIN_TICKS_PER_SECOND / 1000) as usize;
        let i = tick.min(self.wins.len() - 1);
        self.wins[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Wins per 10 ms tick, up to the last tick with a win.
    pub fn wins_per_tick(&self) -> Vec<u32> {
        let mut w: Vec<u32> = self
            .wins
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let last = w.iter().rposition(|&n| n > 0).map_or(0, |i| i + 1);
        w.truncate(last);
        w
    }

    fn slot(&self, second: u32) -> &Slot {
        let i = (second as usize).min(self.slots.len() - 1);
        &self.slots[i]
    }

    pub fn set_available(&self, second: u32, available: u64) {
        let v = i64::try_from(available).unwrap_or(i64::MAX);
        self.slot(second).available.store(v, Ordering::Relaxed);
    }

    /// The first `seconds` seconds (all connections flushed: read after the run).
    pub fn points(&self, seconds: u32) -> Vec<SecondPoint> {
        let n = (seconds as usize).clamp(1, self.slots.len());
        self.slots[..n]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let counts: Vec<u32> = s
                    .latency
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .collect();
                let available = s.available.load(Ordering::Relaxed);
                SecondPoint {
                    second: i as u32,
                    requests: s.requests.load(Ordering::Relaxed),
                    succeeded: s.succeeded.load(Ordering::Relaxed),
                    p99_ms: percentile_us(&counts, 0.99) as f64 / 1000.0,
                    available: u64::try_from(available).ok(),
                }
            })
            .collect()
    }
}

/// The top of the bucket holding quantile `q` of `counts` (0 when empty).
fn percentile_us(counts: &[u32], q: f64) -> u64 {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += u64::from(c);
        if seen >= rank {
            return bucket_top_us(i);
        }
    }
    bucket_top_us(counts.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_hold_their_values() {
        let mut prev_top = None;
        for i in 0..LATENCY_BUCKETS {
            let top = bucket_top_us(i);
            if let Some(p) = prev_top {
                assert_eq!(bucket_of(p + 1), i, "first value of bucket {i}");
            }
            assert_eq!(bucket_of(top), i, "top of bucket {i}");
            prev_top = Some(top);
        }
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(bucket_top_us(LATENCY_BUCKETS - 1), LATENCY_US_CAP);
    }

    #[test]
    fn seconds_are_flushed_into_the_timeline() {
        let t = Timeline::new(10);
        let mut c = SecondCounts::new();
        for _ in 0..99 {
            c.record(&t, 0, 100, false);
        }
        c.record(&t, 0, 10_000, true);
        c.record(&t, 2, 50, true);
        c.flush(&t);
        let p = t.points(3);
        assert_eq!((p[0].requests, p[0].succeeded), (100, 1));
        assert!(p[0].p99_ms >= 0.1 && p[0].p99_ms < 0.125, "{}", p[0].p99_ms);
        assert_eq!((p[1].requests, p[2].requests), (0, 1));
    }
}
