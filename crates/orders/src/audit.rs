//! The audit of a sale (`ticketrush audit`, `demo`): the truth (the store's snapshot) against
//! the orders table in either home, through [`OrderRows`].

use std::time::{Duration, Instant};

use ticketrush_core::{audit_sale, AuditReport, SaleId};
use ticketrush_store::{BoxFuture, EmbeddedStore, RedisTls, Store};

use crate::{OrderRows, OrdersDb, OrdersError, OrdersResult, Rows};

/// Snapshots of a sale that moved while it was audited, before the audit says so.
const ATTEMPTS_MAX: u32 = 5;

/// Audits `sale`: its counts and reservations in `store` against the invariants, and (with a
/// `table`) against the orders table once it caught up, waiting at most `within` in all.
///
/// The snapshot is taken first, then the table is read once it holds everything up to it (and
/// so at least the snapshot's states). If the sale moved meanwhile (a reaper expiring a hold,
/// a payment), the rows may be ahead of the snapshot: it is taken again, a few times.
pub async fn audit(
    store: &dyn Store,
    table: Option<&dyn OrderRows>,
    sale: &SaleId,
    within: Duration,
) -> OrdersResult<AuditReport> {
    let deadline = Instant::now() + within;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let snap = store
            .snapshot(sale)
            .await
            .map_err(|e| OrdersError::Store(e.to_string()))?
            .ok_or_else(|| OrdersError::Bad(format!("no sale {sale}")))?;
        let Some(table) = table else {
            return Ok(audit_sale(&snap.view, &snap.reservations, None));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let Rows { rows, behind } = table.rows_caught_up(sale, left).await?;
        let now = store
            .sale(sale)
            .await
            .map_err(|e| OrdersError::Store(e.to_string()))?;
        let moved = now.as_ref() != Some(&snap.view);
        if moved && attempts < ATTEMPTS_MAX && Instant::now() < deadline {
            continue;
        }
        let mut report = audit_sale(&snap.view, &snap.reservations, rows.as_deref());
        if let Some(why) = behind {
            report.note_violation(format!("{why} ({} s)", within.as_secs()));
        }
        if moved {
            report.note_violation(
                "the sale kept changing while it was audited; audit it when no node is selling"
                    .into(),
            );
        }
        return Ok(report);
    }
}

/// An embedded store's own orders table (SQLite in the data dir).
pub struct EmbeddedRows<'s>(pub &'s EmbeddedStore);

impl OrderRows for EmbeddedRows<'_> {
    fn rows_caught_up<'a>(
        &'a self,
        sale: &'a SaleId,
        within: Duration,
    ) -> BoxFuture<'a, OrdersResult<Rows>> {
        Box::pin(async move {
            // The wait is a thread's (the follower publishes with atomics): off the runtime.
            let rows = tokio::task::block_in_place(|| self.0.order_rows(sale, within))
                .map_err(|e| OrdersError::Bad(format!("cannot read the orders table: {e}")))?;
            let behind = rows.is_none().then(|| {
                "the orders table did not catch up with the journal by the end of the wait".into()
            });
            Ok(Rows { rows, behind })
        })
    }
}

/// A cluster's orders table in PostgreSQL, written by the order writers from the sales' Redis
/// streams: caught up when the sale's stream has nothing pending.
pub struct PostgresRows {
    pub db: OrdersDb,
    /// The Redis (or a Redis Cluster seed) whose streams the writers read.
    pub redis: String,
    pub tls: RedisTls,
}

impl OrderRows for PostgresRows {
    fn rows_caught_up<'a>(
        &'a self,
        sale: &'a SaleId,
        within: Duration,
    ) -> BoxFuture<'a, OrdersResult<Rows>> {
        Box::pin(async move {
            let deadline = Instant::now() + within;
            let backlog = loop {
                let b = crate::writer::backlog(&self.redis, &self.tls, sale).await?;
                if b.is_none_or(|n| n == 0) || Instant::now() >= deadline {
                    break b;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let rows = self.db.rows_of(sale).await?;
            let behind = match backlog {
                Some(0) => None,
                Some(n) => Some(format!(
                    "the order writer is still {n} event(s) behind at the end of the wait"
                )),
                None => Some(
                    "no order writer has ever read this sale's events (is a node running with \
                     --postgres?)"
                        .into(),
                ),
            };
            Ok(Rows {
                rows: Some(rows),
                behind,
            })
        })
    }
}
