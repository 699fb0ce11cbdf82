//! The live view of a node: `GET /api/v1/stats` (JSON) and `GET /dashboard` (a page that polls
//! it every second and draws the last minutes; `assets/dashboard.html`, embedded).
//!
//! The figures are the store's truth for stock (every sale in the store, so in cluster mode the
//! whole sale, not this node's share), this node's counters for outcomes, and a latency window
//! of the last seconds. One computation serves every viewer and every Prometheus scrape for
//! `STATS_MAX_AGE`, so a room full of open dashboards costs the store at most two listings of
//! its sales a second (on Redis: the set of ids and one read per sale), not that per viewer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::{Histogram, Outcome, OutcomeCounters, LATENCY_BUCKETS_US};
use crate::node::Node;

/// How long one computation of the stats is reused.
pub const STATS_MAX_AGE: Duration = Duration::from_millis(500);
/// The latency percentiles cover at least this much of the recent past (when the node has run
/// that long and the stats were read since).
pub const LATENCY_WINDOW: Duration = Duration::from_secs(5);
/// Latency snapshots kept (one a second at most).
const LATENCY_SNAPSHOTS_MAX: usize = 32;

/// The page, with `__KIND__` to be replaced by `node` or `gateway` (which JSON it polls).
pub const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

/// Reservation attempts by outcome (cumulative since the node started).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Attempts {
    pub reserved: u64,
    pub replayed: u64,
    pub sold_out: u64,
    pub limit_reached: u64,
    pub not_open: u64,
    /// Answered 429.
    pub overloaded: u64,
    /// Answered 503.
    pub unavailable: u64,
    pub other: u64,
}

impl Attempts {
    fn of(c: &OutcomeCounters) -> Attempts {
        Attempts {
            reserved: c.get(Outcome::Reserved),
            replayed: c.get(Outcome::Replayed),
            sold_out: c.get(Outcome::SoldOut),
            limit_reached: c.get(Outcome::LimitReached),
            not_open: c.get(Outcome::NotOpen),
            overloaded: c.get(Outcome::Overloaded),
            unavailable: c.get(Outcome::Unavailable),
            other: c.get(Outcome::SaleNotFound) + c.get(Outcome::InvalidRequest),
        }
    }

    fn add(&mut self, o: &Attempts) {
        self.reserved += o.reserved;
        self.replayed += o.replayed;
        self.sold_out += o.sold_out;
        self.limit_reached += o.limit_reached;
        self.not_open += o.not_open;
        self.overloaded += o.overloaded;
        self.unavailable += o.unavailable;
        self.other += o.other;
    }
}

/// One sale: the store's counts and this node's attempts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SaleStats {
    pub id: String,
    pub total: u64,
    pub available: u64,
    pub reserved: u64,
    pub paid: u64,
    /// Attempts this node answered for the sale.
    pub attempts: Attempts,
}

/// Reservation latency over the last `window_seconds` (bucket upper bounds, so p50 0.25 means
/// "at most 250 µs"); null with no request in the window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LatencyStats {
    pub window_seconds: u64,
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// How far this node's order writer is behind the sales' event streams.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct OrdersLag {
    /// Events not yet written as rows.
    pub lag_entries: u64,
    /// Age of the oldest of them, in milliseconds.
    pub lag_ms: u64,
}

/// What `GET /api/v1/stats` answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeStats {
    pub node_id: String,
    pub version: String,
    /// `embedded` or `redis`.
    pub store: String,
    /// Milliseconds since the node started: the clock the page measures rates by.
    pub uptime_ms: u64,
    /// Every sale of the store, by id (at most 1,024).
    pub sales: Vec<SaleStats>,
    /// Attempts this node answered, over every sale (and requests naming no known sale).
    pub attempts: Attempts,
    pub latency: LatencyStats,
    /// Null when this node runs no order writer.
    pub orders: Option<OrdersLag>,
    /// Why the store's counts are missing or stale, when the store did not answer.
    pub store_error: Option<String>,
}

type Buckets = [u64; LATENCY_BUCKETS_US.len() + 1];

/// The node's stats cache and latency history.
pub struct StatsCache {
    started: Instant,
    last: tokio::sync::Mutex<Option<(Instant, Arc<NodeStats>)>>,
    latency: Mutex<VecDeque<(Instant, Buckets)>>,
    /// Who reports the order writer's lag (set once by whoever starts a writer).
    orders: std::sync::OnceLock<Box<dyn Fn() -> OrdersLag + Send + Sync>>,
}

impl Default for StatsCache {
    fn default() -> Self {
        StatsCache {
            started: Instant::now(),
            last: tokio::sync::Mutex::new(None),
            latency: Mutex::new(VecDeque::new()),
            orders: std::sync::OnceLock::new(),
        }
    }
}

impl StatsCache {
    /// Sets where the order writer's lag comes from; a second call is ignored.
    pub fn set_orders_lag(&self, f: impl Fn() -> OrdersLag + Send + Sync + 'static) {
        let _ = self.orders.set(Box::new(f));
    }

    /// The node's stats, computed at most once per `STATS_MAX_AGE`.
    pub async fn get(&self, node: &Node) -> Arc<NodeStats> {
        let mut last = self.last.lock().await;
        if let Some((at, stats)) = last.as_ref() {
            if at.elapsed() < STATS_MAX_AGE {
                return stats.clone();
            }
        }
        let previous = last.as_ref().map(|(_, s)| s.clone());
        let stats = Arc::new(self.compute(node, previous.as_deref()).await);
        *last = Some((Instant::now(), stats.clone()));
        stats
    }

    async fn compute(&self, node: &Node, previous: Option<&NodeStats>) -> NodeStats {
        let runtimes = node.runtimes();
        let mut attempts = Attempts::of(&node.metrics.unrouted);
        let mut here = std::collections::HashMap::new();
        for rt in &runtimes {
            let a = Attempts::of(&rt.counters);
            attempts.add(&a);
            here.insert(rt.spec.id.as_str().to_string(), a);
        }
        let (sales, store_error) = match node.store.sales().await {
            Ok(views) => (
                views
                    .iter()
                    .map(|v| SaleStats {
                        id: v.spec.id.as_str().to_string(),
                        total: v.spec.total,
                        available: v.available,
                        reserved: v.reserved,
                        paid: v.paid,
                        attempts: here.remove(v.spec.id.as_str()).unwrap_or_default(),
                    })
                    .collect(),
                None,
            ),
            // Keep showing the last counts known, and say why they are not fresh.
            Err(e) => (
                previous.map(|p| p.sales.clone()).unwrap_or_default(),
                Some(e.to_string()),
            ),
        };
        NodeStats {
            node_id: node.config.node_id.as_str().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            store: if node.store.round_trips().is_some() {
                "redis"
            } else {
                "embedded"
            }
            .to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            sales,
            attempts,
            latency: self.latency(&node.metrics.reserve_latency),
            orders: self.orders.get().map(|f| f()),
            store_error,
        }
    }

    /// Percentiles over the newest snapshot at least `LATENCY_WINDOW` old (or the oldest kept).
    fn latency(&self, histogram: &Histogram) -> LatencyStats {
        let now = Instant::now();
        let current = histogram.buckets();
        let mut history = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let base = history
            .iter()
            .rev()
            .find(|(at, _)| now.duration_since(*at) >= LATENCY_WINDOW)
            .or(history.front())
            .copied();
        if history
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1))
        {
            history.push_back((now, current));
            while history.len() > LATENCY_SNAPSHOTS_MAX {
                history.pop_front();
            }
        }
        drop(history);
        let (since, base) = base.unwrap_or((self.started, [0; LATENCY_BUCKETS_US.len() + 1]));
        let window: Vec<u64> = current
            .iter()
            .zip(base.iter())
            .map(|(c, b)| c.saturating_sub(*b))
            .collect();
        let count: u64 = window.iter().sum();
        LatencyStats {
            window_seconds: now.duration_since(since).as_secs().max(1),
            count,
            p50_ms: percentile(&window, count, 0.50),
            p99_ms: percentile(&window, count, 0.99),
        }
    }
}

/// The upper bound (ms) of the bucket holding quantile `q`; the last bucket (beyond every
/// bound) answers the largest bound.
fn percentile(buckets: &[u64], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = ((count as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let bound = LATENCY_BUCKETS_US
                .get(i)
                .or(LATENCY_BUCKETS_US.last())
                .copied()
                .unwrap_or(0);
            return Some(bound as f64 / 1000.0);
        }
    }
    None
}

/// The page for a node (`kind` `node`) or a gateway (`gateway`).
pub fn page(kind: &str) -> String {
    DASHBOARD_HTML.replace("__KIND__", kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_name_the_bucket_bound() {
        let mut b = [0u64; LATENCY_BUCKETS_US.len() + 1];
        b[0] = 60; // ≤ 100 µs
        b[3] = 39; // ≤ 1 ms
        b[LATENCY_BUCKETS_US.len()] = 1; // beyond 5 s
        assert_eq!(percentile(&b, 100, 0.5), Some(0.1));
        assert_eq!(percentile(&b, 100, 0.99), Some(1.0));
        assert_eq!(percentile(&b, 100, 1.0), Some(5000.0));
        assert_eq!(percentile(&b, 0, 0.5), None);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let html = page("node");
        assert!(html.contains("data-kind=\"node\""));
        for attr in ["src=", "href=", "@import", "url("] {
            assert!(!html.contains(attr), "the page uses {attr}");
        }
    }
}
