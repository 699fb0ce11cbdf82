//! The oversell/few-sell check: what the generator was told against what the store holds.
//!
//! The sale is read before the run and after it (`GET /api/v1/sales/{id}`), and the change in
//! `reserved + paid` is compared with the users told they won. It is an equality only when
//! nothing else can have moved the counts: an unpaid hold that expired during the run puts its
//! ticket back (so the store may hold fewer than we won), and a request whose answer we never
//! got (a transport error, a timeout, a 5xx) may still have reserved (so it may hold more).
//! We do not guess; we widen the bounds by exactly those two amounts and say so:
//!
//! - `held_delta ≤ winners + unknown`, where `unknown` is the requests with no answer;
//! - `held_delta ≥ winners` when no hold can have expired (the run, from the first read to
//!   the last, was shorter than the sale's `hold_seconds`, and no hold predates the run);
//!   otherwise `held_delta ≥ paid by us` (payments are final and never expire);
//! - `paid_delta` lies between the payments we were told succeeded and those plus the
//!   payments with no answer;
//! - and always `available + reserved + paid == total` and `reserved + paid ≤ total`;
//! - `sold_out` is the truth: when no hold can have come back during the run, no `sold_out`
//!   answer arrived before a request that went on to win was sent (`early_sold_out == 0`),
//!   and no user was told `sold_out` while the sale ended with tickets available.
//!
//! This assumes the generator is the only client of the sale during the run (others would
//! move the counts too); the report says what it compared so a reader can judge.

use serde::{Deserialize, Serialize};

use crate::args::Target;

/// The counts of a sale, as `GET /api/v1/sales/{id}` answers them.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct SaleCounts {
    pub total: u64,
    pub available: u64,
    pub reserved: u64,
    pub paid: u64,
    pub hold_seconds: u64,
}

/// Reads the sale from the first target that answers it.
pub async fn read_sale(targets: &[Target], sale: &str) -> anyhow::Result<SaleCounts> {
    let path = format!("/api/v1/sales/{sale}");
    let mut last = None;
    for t in targets {
        match crate::http::get(t, &path).await {
            Ok((200, body)) => {
                return serde_json::from_slice(&body)
                    .map_err(|e| anyhow::anyhow!("{t}{path} is not a sale object: {e}"));
            }
            Ok((status, body)) => {
                last = Some(anyhow::anyhow!(
                    "{t}{path} answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ))
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no target")))
}

/// The sales of a run, each and summed (`hold_seconds`: the shortest, as any of them may
/// expire holds). One sale is read alone; several through the list of every sale.
pub async fn read_sales(
    targets: &[Target],
    sales: &[ticketrush_core::SaleId],
) -> anyhow::Result<(SaleCounts, Vec<SaleCounts>)> {
    let each = if sales.len() == 1 {
        vec![read_sale(targets, sales[0].as_str()).await?]
    } else {
        #[derive(Deserialize)]
        struct Listed {
            id: String,
            #[serde(flatten)]
            counts: SaleCounts,
        }
        #[derive(Deserialize)]
        struct List {
            sales: Vec<Listed>,
        }
        let (status, body) = crate::http::get(&targets[0], "/api/v1/sales").await?;
        anyhow::ensure!(
            status == 200,
            "{}/api/v1/sales answered {status}",
            targets[0]
        );
        let list: List = serde_json::from_slice(&body)?;
        let by_id: std::collections::HashMap<String, SaleCounts> =
            list.sales.into_iter().map(|l| (l.id, l.counts)).collect();
        sales
            .iter()
            .map(|s| {
                by_id
                    .get(s.as_str())
                    .copied()
                    .ok_or_else(|| anyhow::anyhow!("no sale {s}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let mut sum = SaleCounts {
        total: 0,
        available: 0,
        reserved: 0,
        paid: 0,
        hold_seconds: u64::MAX,
    };
    for c in &each {
        sum.total += c.total;
        sum.available += c.available;
        sum.reserved += c.reserved;
        sum.paid += c.paid;
        sum.hold_seconds = sum.hold_seconds.min(c.hold_seconds);
    }
    Ok((sum, each))
}

/// What the run was told, for the check.
#[derive(Clone, Copy, Debug, Default)]
pub struct Told {
    pub winners: u64,
    /// Requests with no answer: they may or may not have reserved.
    pub unknown: u64,
    pub paid: u64,
    pub pay_unknown: u64,
    /// Users told `sold_out`.
    pub sold_out: u64,
    /// Of them, those of sales that ended with tickets available.
    pub sold_out_left: u64,
    /// `sold_out` answers that arrived before a request that went on to win was sent.
    pub early_sold_out: u64,
}

/// The verdict, with what it compared.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// `passed`, `failed` or `skipped` (`--no-check`).
    pub verdict: &'static str,
    pub passed: bool,
    /// One sentence per finding, the reason first when it failed.
    pub notes: Vec<String>,
    pub before: Option<SaleCounts>,
    pub after: Option<SaleCounts>,
    /// Whether a hold could have expired during the run (so the lower bound is relaxed).
    pub expiry_possible: bool,
    /// `reserved + paid` after minus before.
    pub held_delta: Option<i64>,
}

impl Check {
    pub fn skipped() -> Check {
        Check {
            verdict: "skipped",
            passed: true,
            notes: vec!["--no-check: the sale was not read".into()],
            before: None,
            after: None,
            expiry_possible: false,
            held_delta: None,
        }
    }

    pub fn unreadable(before: Option<SaleCounts>, why: String) -> Check {
        Check {
            verdict: "failed",
            passed: false,
            notes: vec![format!("could not read the sale back: {why}")],
            before,
            after: None,
            expiry_possible: false,
            held_delta: None,
        }
    }
}

/// Compares `told` with the sale read `before` and `after` a run that lasted `run_seconds`
/// from the first read to the last.
pub fn compare(before: SaleCounts, after: SaleCounts, told: Told, run_seconds: f64) -> Check {
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let held = |s: &SaleCounts| (s.reserved + s.paid) as i64;
    let held_delta = held(&after) - held(&before);
    let paid_delta = after.paid as i64 - before.paid as i64;
    let expiry_possible = (before.reserved > 0 || told.winners > told.paid)
        && run_seconds >= after.hold_seconds as f64;
    if after.available + after.reserved + after.paid != after.total {
        failures.push(format!(
            "available + reserved + paid = {} but total = {}",
            after.available + after.reserved + after.paid,
            after.total
        ));
    }
    if after.reserved + after.paid > after.total {
        failures.push(format!(
            "oversold: {} held of {}",
            held(&after),
            after.total
        ));
    }
    let upper = (told.winners + told.unknown) as i64;
    if held_delta > upper {
        failures.push(format!(
            "oversell: the store holds {held_delta} more, we were told of {} winners \
             (+{} unanswered)",
            told.winners, told.unknown
        ));
    }
    let lower = if expiry_possible {
        told.paid as i64
    } else {
        told.winners as i64
    };
    if held_delta < lower {
        failures.push(format!(
            "few-sell/lost: the store holds {held_delta} more, at least {lower} expected \
             ({} winners, {} paid)",
            told.winners, told.paid
        ));
    }
    // Payments never return a ticket; only an expiry (or another client's cancel) could
    // make a true sold_out be followed by a win.
    if !expiry_possible && told.early_sold_out > 0 {
        failures.push(format!(
            "phantom sold-out: {} sold_out answers arrived before a request that went on to \
             win was sent",
            told.early_sold_out
        ));
    }
    if !expiry_possible && told.sold_out_left > 0 {
        failures.push(format!(
            "phantom sold-out: {} users were told sold_out, yet their sale ended with \
             tickets available ({} in all)",
            told.sold_out_left, after.available
        ));
    }
    let (pay_lo, pay_hi) = (told.paid as i64, (told.paid + told.pay_unknown) as i64);
    if paid_delta < pay_lo || paid_delta > pay_hi {
        failures.push(format!(
            "payments: the store has {paid_delta} more paid, we were told {pay_lo} \
             (+{} unanswered)",
            told.pay_unknown
        ));
    }
    if expiry_possible {
        notes.push(format!(
            "holds may have expired (run {run_seconds:.1} s ≥ hold {} s): checked {lower} ≤ \
             held {held_delta} ≤ {upper}",
            after.hold_seconds
        ));
    } else if told.unknown > 0 {
        notes.push(format!(
            "{} requests got no answer: checked {lower} ≤ held {held_delta} ≤ {upper}",
            told.unknown
        ));
    } else {
        notes.push(format!(
            "winners {} == reserved + paid gained {held_delta}",
            told.winners
        ));
    }
    let passed = failures.is_empty();
    failures.extend(notes);
    Check {
        verdict: if passed { "passed" } else { "failed" },
        passed,
        notes: failures,
        before: Some(before),
        after: Some(after),
        expiry_possible,
        held_delta: Some(held_delta),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(available: u64, reserved: u64, paid: u64) -> SaleCounts {
        SaleCounts {
            total: available + reserved + paid,
            available,
            reserved,
            paid,
            hold_seconds: 900,
        }
    }

    fn told(winners: u64, paid: u64) -> Told {
        Told {
            winners,
            paid,
            ..Told::default()
        }
    }

    #[test]
    fn exact_when_nothing_can_expire() {
        let c = compare(sale(10, 0, 0), sale(0, 8, 2), told(10, 2), 5.0);
        assert!(c.passed, "{c:?}");
        let c = compare(sale(10, 0, 0), sale(1, 7, 2), told(10, 2), 5.0);
        assert!(!c.passed, "one win missing from the store");
        let c = compare(sale(10, 0, 0), sale(0, 8, 2), told(9, 2), 5.0);
        assert!(!c.passed, "one more held than won");
    }

    #[test]
    fn unanswered_requests_widen_the_upper_bound_only() {
        let t = Told {
            winners: 9,
            unknown: 1,
            ..Told::default()
        };
        assert!(compare(sale(10, 0, 0), sale(0, 10, 0), t, 5.0).passed);
        assert!(compare(sale(10, 0, 0), sale(1, 9, 0), t, 5.0).passed);
        assert!(!compare(sale(10, 0, 0), sale(2, 8, 0), t, 5.0).passed);
    }

    #[test]
    fn sold_out_must_be_true() {
        let t = Told {
            early_sold_out: 3,
            sold_out: 3,
            ..told(10, 0)
        };
        let c = compare(sale(10, 0, 0), sale(0, 10, 0), t, 5.0);
        assert!(!c.passed && c.notes[0].contains("phantom"), "{c:?}");
        // Told sold out, but tickets were left at the end.
        let t = Told {
            sold_out: 2,
            sold_out_left: 2,
            ..told(8, 0)
        };
        let c = compare(sale(10, 0, 0), sale(2, 8, 0), t, 5.0);
        assert!(
            !c.passed && c.notes[0].contains("2 users were told sold_out"),
            "{c:?}"
        );
        // Sold out after the last ticket went: true.
        let t = Told {
            sold_out: 5,
            ..told(10, 0)
        };
        assert!(compare(sale(10, 0, 0), sale(0, 10, 0), t, 5.0).passed);
        // With expiries possible, a ticket may come back after a true sold_out.
        let mut after = sale(1, 9, 0);
        after.hold_seconds = 1;
        let t = Told {
            sold_out: 5,
            early_sold_out: 1,
            ..told(10, 0)
        };
        assert!(compare(sale(10, 0, 0), after, t, 3.0).passed);
    }

    #[test]
    fn expired_holds_relax_the_lower_bound_to_the_payments() {
        let mut after = sale(6, 2, 2);
        after.hold_seconds = 1;
        let c = compare(sale(10, 0, 0), after, told(10, 2), 3.0);
        assert!(c.passed && c.expiry_possible, "{c:?}");
        let mut after = sale(9, 0, 1);
        after.hold_seconds = 1;
        assert!(!compare(sale(10, 0, 0), after, told(10, 2), 3.0).passed);
    }
}
