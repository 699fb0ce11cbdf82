//! The report of a run: one serde type for the JSON file, printed as text by `Display`.
//!
//! The JSON keys are the contract of docs/API.md (`requests`, `succeeded`, `sold_out`, `errors`,
//! `duration_s`, `rps`, `latency_ms` with `p50`, `p90`, `p99`, `p999`, `max`) plus what the
//! later `demo` and the chart need; `requests` is by construction the sum of the four outcome
//! counts, and `rps` is `requests / duration_s` computed from the very fields in the report.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::check::Check;
use crate::timeline::SecondPoint;

/// Latency percentiles of every answered request, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    /// How many answers the percentiles are over (every answered request, 5xx included; not
    /// the requests that got no answer).
    pub samples: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
            samples: h.len(),
        }
    }
}

/// Why the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// Every user was tried (and retried as allowed).
    Completed,
    /// The targets did not answer for `--give-up-seconds`; some users were never tried.
    TargetsUnreachable,
    /// `--max-seconds` passed first.
    MaxSeconds,
}

/// Payments made with `--pay-ratio` (not counted in `requests` or the latency).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Payments {
    pub attempted: u64,
    pub paid: u64,
    /// Answered, but not 200 (e.g. the hold had expired).
    pub refused: u64,
    /// No answer: they may or may not have happened.
    pub unknown: u64,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub targets: Vec<String>,
    /// The (first) sale.
    pub sale: String,
    /// How many sales the users spread over (`--sale A,B,…`).
    pub sales: usize,
    pub endpoint: crate::args::Endpoint,
    pub users: u64,
    pub connections: u64,
    /// Every reservation attempt, retries included: `succeeded + sold_out + other + errors`.
    pub requests: u64,
    /// 201/200 (`/buy/ticket`: `code` 1): a ticket reserved.
    pub succeeded: u64,
    /// Told the sale is sold out.
    pub sold_out: u64,
    /// Any other 4xx (limit reached, 429 overloaded, …).
    pub other: u64,
    /// Transport failures, timeouts and 5xx.
    pub errors: u64,
    /// 429 answers (included in `other`).
    pub overloaded: u64,
    pub users_tried: u64,
    /// Users still answered 429 after `--retries` retries.
    pub users_gave_up: u64,
    /// Users never tried (the run stopped first) or left waiting for a retry.
    pub users_not_done: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub latency_ms: Latency,
    /// The wins' latency alone: how long a winner waited for the hold. Exact unless a
    /// connection had more wins than its share of `ANSWER_TIMES_MAX`; then an even sample of
    /// that connection's wins, each standing for as many (`conn::WinSample`).
    pub win_latency_ms: Latency,
    /// Seconds from the start to the last success (for a sale: when the last ticket went).
    pub last_success_s: Option<f64>,
    /// `sold_out` answers that arrived before a request that went on to win was sent: users
    /// told "sold out" while a ticket was still to be had (certain phantoms when nothing was
    /// paid, cancelled or expired during the run).
    pub early_sold_out: u64,
    /// Milliseconds from the first to the last win of the final 1 % of wins: the sale's tail.
    pub tail_ms: Option<f64>,
    /// Which node (`X-Node-Id`) answered each success.
    pub by_node: BTreeMap<String, u64>,
    pub payments: Payments,
    pub stopped: Stopped,
    pub check: Check,
    /// Per second: requests, wins, p99 and the sale's available stock (the chart's data).
    pub timeline: Vec<SecondPoint>,
    /// Wins per 10 ms from the start, up to the last win (the chart's sell-out; not in the
    /// JSON report).
    #[serde(skip)]
    pub wins_per_tick: Vec<u32>,
    /// The sales' available tickets read before the run, if read.
    #[serde(skip)]
    pub available_at_start: Option<u64>,
}

impl Report {
    /// 0 when the run completed and the check passed or was skipped; 1 otherwise.
    pub fn passed(&self) -> bool {
        self.check.passed
    }
}

/// `1234567` as `1,234,567`, for reports people read.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = thousands;
        writeln!(
            f,
            "bench: sale {} via {} on {} ({} users, {} connections)",
            if self.sales > 1 {
                format!("{} and {} more (by popularity)", self.sale, self.sales - 1)
            } else {
                self.sale.clone()
            },
            match self.endpoint {
                crate::args::Endpoint::Reservations => "reservations",
                crate::args::Endpoint::BuyTicket => "/buy/ticket",
            },
            self.targets.join(", "),
            n(self.users),
            self.connections
        )?;
        writeln!(
            f,
            "  requests   {} in {:.2} s = {} req/s ({:?})",
            n(self.requests),
            self.duration_s,
            n(self.rps.round() as u64),
            self.stopped
        )?;
        writeln!(
            f,
            "  outcomes   succeeded {}  sold_out {}  other {} (429: {})  errors {}",
            n(self.succeeded),
            n(self.sold_out),
            n(self.other),
            n(self.overloaded),
            n(self.errors)
        )?;
        let tail = self
            .tail_ms
            .map_or("n/a".to_string(), |t| format!("{t:.1} ms"));
        writeln!(
            f,
            "  sold_out   {} before a later winner was sent (phantoms)  tail of the last 1 % of wins {tail}",
            n(self.early_sold_out),
        )?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "  latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        if self.succeeded > 0 {
            let w = &self.win_latency_ms;
            writeln!(
                f,
                "  wins' ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                w.p50, w.p90, w.p99, w.p999, w.max
            )?;
        }
        let nodes: Vec<String> = self
            .by_node
            .iter()
            .map(|(k, v)| format!("{k} {}", n(*v)))
            .collect();
        writeln!(f, "  by node    {}", nodes.join("  "))?;
        if self.payments.attempted > 0 {
            let p = &self.payments;
            writeln!(
                f,
                "  payments   paid {} of {} (refused {}, unanswered {})",
                n(p.paid),
                n(p.attempted),
                n(p.refused),
                n(p.unknown)
            )?;
        }
        if self.users_gave_up + self.users_not_done > 0 {
            writeln!(
                f,
                "  users      {} gave up after retries, {} not done",
                n(self.users_gave_up),
                n(self.users_not_done)
            )?;
        }
        if let Some(a) = &self.check.after {
            writeln!(
                f,
                "  sale after available {}  reserved {}  paid {}  total {}",
                n(a.available),
                n(a.reserved),
                n(a.paid),
                n(a.total)
            )?;
        }
        write!(f, "  check      {}", self.check.verdict)?;
        for note in &self.check.notes {
            write!(f, "\n             {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_grouped() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1_000), "1,000");
        assert_eq!(super::thousands(1_234_567), "1,234,567");
    }
}
