//! The node's background tasks: the reaper and the lease keeper.
//!
//! Both are owned by [`Background`]: they stop when its shutdown sender is dropped or fires,
//! and `shutdown` waits for them.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ticketrush_core::LedgerError;
use ticketrush_store::StoreError;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::limits::{REAP_BATCH_MAX, REAP_INTERVAL};
use crate::node::Node;

pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    pub fn start(node: Arc<Node>) -> Background {
        let (stop, rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(reaper(node.clone(), rx.clone())),
            tokio::spawn(lease_keeper(node, rx)),
        ];
        Background { stop, tasks }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Waits for `period` or for the stop signal; answers whether to go on.
async fn tick(stop: &mut watch::Receiver<bool>, period: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(period) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// Expires due holds and reclaims lapsed leases, then tells the sales that tickets may be back
/// so their sold-out fast path asks the store again at once.
async fn reaper(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut period = REAP_INTERVAL;
    while tick(&mut stop, period).await {
        match node.store.reap(REAP_BATCH_MAX).await {
            Ok(r) => {
                if r.expired > 0 || r.leases_reclaimed > 0 {
                    node.metrics.expired.fetch_add(r.expired as u64, Relaxed);
                    for rt in node.runtimes() {
                        rt.pool_may_have_stock();
                    }
                }
                // A full pass means more are due: go again without waiting.
                period = if r.expired >= REAP_BATCH_MAX {
                    Duration::ZERO
                } else {
                    REAP_INTERVAL
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "reaper pass failed");
                period = REAP_INTERVAL;
            }
        }
    }
}

/// Renews each sale's lease at a third of its duration. A lease the store took back is
/// forgotten (the next reservation leases anew). A lease whose allotment sold nothing for a
/// whole period is given back, so an idle node does not sit on tickets others could sell.
async fn lease_keeper(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let lease_ms = node.config.lease.as_millis() as i64;
    let period = node.config.lease / 3;
    while tick(&mut stop, period).await {
        for rt in node.runtimes() {
            let lease = rt.stock.allotment.lease();
            if lease == 0 {
                continue;
            }
            // A sale that sold nothing for a whole period gives its lease up entirely: the
            // unsold tickets go back to the pool for other nodes, and a sold-out or forgotten
            // sale stops costing a renewal (and a journal event) every period.
            if rt.taken_since_tick.swap(0, Relaxed) == 0 {
                let (lease, tickets) = rt.stock.allotment.drain();
                match node.store.release(&rt.spec.id, lease, tickets, true).await {
                    Ok(_) | Err(StoreError::Ledger(LedgerError::LeaseLost)) => {
                        rt.stock.allotment.forget(lease);
                    }
                    Err(e) => {
                        // Not returned: keep selling them rather than strand them.
                        rt.stock.allotment.install(lease, tickets);
                        tracing::warn!(error = %e, sale = %rt.spec.id, "returning an idle allotment failed");
                    }
                }
                continue;
            }
            match node.store.renew(&rt.spec.id, lease, lease_ms).await {
                Ok(_) => {}
                Err(StoreError::Ledger(LedgerError::LeaseLost)) => {
                    node.metrics.leases_lost.fetch_add(1, Relaxed);
                    rt.stock.allotment.forget(lease);
                }
                Err(e) => tracing::warn!(error = %e, sale = %rt.spec.id, "lease renewal failed"),
            }
        }
    }
}
