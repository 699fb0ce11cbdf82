//! Prometheus metrics, kept in atomics and rendered on demand.
//!
//! A metrics library would cost a map lookup and a label allocation per request; here each sale
//! owns a fixed array of outcome counters (the number of sales is bounded by `SALES_MAX`, so
//! the series are too), and the latency histogram is a fixed array of buckets.
//!
//! Every counter is sharded by worker thread, each shard on its own cache lines: a counter all
//! cores add to on every request would bounce its cache line between them, which measured as a
//! real share of a sold-out answer's cost. Reading sums the shards.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Shards per counter; threads beyond it share shards (still correct, just contended).
const SHARDS: usize = 8;

/// This thread's shard, assigned round-robin on first use.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A value alone on its cache lines (128 bytes covers adjacent-line prefetching).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// One padded copy of `T` per shard.
#[derive(Debug)]
struct Sharded<T>([Padded<T>; SHARDS]);

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded(std::array::from_fn(|_| Padded::default()))
    }
}

impl<T> Sharded<T> {
    fn local(&self) -> &T {
        &self.0[shard()].0
    }

    fn sum(&self, f: impl Fn(&T) -> u64) -> u64 {
        self.0.iter().map(|p| f(&p.0)).sum()
    }
}

/// How a reservation attempt ended: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Reserved,
    Replayed,
    SoldOut,
    LimitReached,
    NotOpen,
    Overloaded,
    Unavailable,
    SaleNotFound,
    InvalidRequest,
    NotAdmitted,
}

impl Outcome {
    const ALL: [Outcome; 10] = [
        Outcome::Reserved,
        Outcome::Replayed,
        Outcome::SoldOut,
        Outcome::LimitReached,
        Outcome::NotOpen,
        Outcome::Overloaded,
        Outcome::Unavailable,
        Outcome::SaleNotFound,
        Outcome::InvalidRequest,
        Outcome::NotAdmitted,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Reserved => "reserved",
            Outcome::Replayed => "replayed",
            Outcome::SoldOut => "sold_out",
            Outcome::LimitReached => "limit_reached",
            Outcome::NotOpen => "not_open",
            Outcome::Overloaded => "overloaded",
            Outcome::Unavailable => "unavailable",
            Outcome::SaleNotFound => "sale_not_found",
            Outcome::InvalidRequest => "invalid_request",
            Outcome::NotAdmitted => "not_admitted",
        }
    }

    /// The outcome of an error answer, by its error code.
    pub fn of_error_code(code: &str) -> Outcome {
        match code {
            "sold_out" => Outcome::SoldOut,
            "limit_reached" => Outcome::LimitReached,
            "not_open" => Outcome::NotOpen,
            "overloaded" => Outcome::Overloaded,
            "sale_not_found" => Outcome::SaleNotFound,
            "invalid_request" | "payload_too_large" => Outcome::InvalidRequest,
            "not_admitted" => Outcome::NotAdmitted,
            _ => Outcome::Unavailable,
        }
    }
}

/// Reservation attempts of one sale, by outcome.
#[derive(Debug, Default)]
pub struct OutcomeCounters(Sharded<[AtomicU64; Outcome::ALL.len()]>);

impl OutcomeCounters {
    pub fn count(&self, o: Outcome) {
        self.0.local()[o as usize].fetch_add(1, Relaxed);
    }

    pub fn get(&self, o: Outcome) -> u64 {
        self.0.sum(|c| c[o as usize].load(Relaxed))
    }
}

/// Upper bounds of the latency buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

#[derive(Debug, Default)]
struct HistogramShard {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Histogram(Sharded<HistogramShard>);

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let h = self.0.local();
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|b| us <= *b) {
            h.buckets[i].fetch_add(1, Relaxed);
        }
        h.count.fetch_add(1, Relaxed);
        h.sum_us.fetch_add(us, Relaxed);
    }

    /// Requests per bucket (not cumulative), the last entry those beyond every bound.
    pub fn buckets(&self) -> [u64; LATENCY_BUCKETS_US.len() + 1] {
        let mut b = [0; LATENCY_BUCKETS_US.len() + 1];
        for (i, slot) in b.iter_mut().enumerate().take(LATENCY_BUCKETS_US.len()) {
            *slot = self.0.sum(|h| h.buckets[i].load(Relaxed));
        }
        let count = self.0.sum(|h| h.count.load(Relaxed));
        let within: u64 = b.iter().sum();
        b[LATENCY_BUCKETS_US.len()] = count.saturating_sub(within);
        b
    }

    fn render(&self, name: &str, out: &mut String) {
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += self.0.sum(|h| h.buckets[i].load(Relaxed));
            let le = *b as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.0.sum(|h| h.count.load(Relaxed));
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.0.sum(|h| h.sum_us.load(Relaxed)) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Appends `ticketrush_build_info{version, node}` (always 1): which version runs where. Nodes
/// and order writers render it through this; the gateway, which does not link this crate,
/// writes the same line itself.
pub fn render_build_info(out: &mut String, node: &str) {
    let _ = writeln!(
        out,
        "# HELP ticketrush_build_info The running version (always 1).\n\
         # TYPE ticketrush_build_info gauge\n\
         ticketrush_build_info{{version=\"{}\",node=\"{node}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
}

/// Node-wide metrics; per-sale counters live with each sale's runtime.
#[derive(Debug, Default)]
pub struct Metrics {
    pub reserve_latency: Histogram,
    /// Attempts that named no known sale (or an invalid one).
    pub unrouted: OutcomeCounters,
    pub batches: AtomicU64,
    pub batch_items: AtomicU64,
    /// Reservations whose commit failed as unavailable but which the store had applied: found
    /// by the batcher's lookup and answered 201 instead of 503.
    pub resolved: AtomicU64,
    pub expired: AtomicU64,
    /// Figures of parts outside this crate (the order writer), appended to the rendering.
    pub extra: ExtraMetrics,
}

/// A renderer of more metrics, set once at start by whoever owns them.
#[derive(Default)]
pub struct ExtraMetrics(std::sync::OnceLock<Box<RenderFn>>);

type RenderFn = dyn Fn(&mut String) + Send + Sync;

impl ExtraMetrics {
    /// Sets the renderer; a second call is ignored.
    pub fn set(&self, render: impl Fn(&mut String) + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(render));
    }
}

impl std::fmt::Debug for ExtraMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "ExtraMetrics(set)"
        } else {
            "ExtraMetrics(none)"
        })
    }
}

impl Metrics {
    /// Renders everything in the Prometheus text format. `sales` yields each sale's id and
    /// counters, and its available/reserved/paid if known.
    pub fn render<'a>(
        &self,
        sales: impl Iterator<Item = (&'a str, &'a OutcomeCounters)>,
    ) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP ticketrush_reservation_attempts_total Reservation attempts by sale and outcome.\n");
        out.push_str("# TYPE ticketrush_reservation_attempts_total counter\n");
        let mut write_counters = |sale: &str, c: &OutcomeCounters| {
            for o in Outcome::ALL {
                let n = c.get(o);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "ticketrush_reservation_attempts_total{{sale=\"{sale}\",outcome=\"{}\"}} {n}",
                        o.label()
                    );
                }
            }
        };
        // Sale ids are restricted to `A-Za-z0-9._-:`, so they need no escaping in a label.
        for (sale, c) in sales {
            write_counters(sale, c);
        }
        write_counters("", &self.unrouted);
        out.push_str(
            "# HELP ticketrush_reservation_duration_seconds Latency of the reservation endpoint.\n",
        );
        out.push_str("# TYPE ticketrush_reservation_duration_seconds histogram\n");
        self.reserve_latency
            .render("ticketrush_reservation_duration_seconds", &mut out);
        let counters = [
            (
                "ticketrush_store_batches_total",
                "Reservation batches committed to the store.",
                &self.batches,
            ),
            (
                "ticketrush_store_batch_items_total",
                "Reservations in those batches.",
                &self.batch_items,
            ),
            (
                "ticketrush_store_commits_resolved_total",
                "Reservations whose commit timed out but were found applied, and answered 201.",
                &self.resolved,
            ),
            (
                "ticketrush_holds_expired_total",
                "Holds this node's reaper expired.",
                &self.expired,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        if let Some(render) = self.extra.0.get() {
            render(&mut out);
        }
        out
    }
}
