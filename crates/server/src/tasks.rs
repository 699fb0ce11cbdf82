//! The node's background task: the reaper.
//!
//! It is owned by [`Background`]: it stops when its shutdown sender is dropped or fires,
//! and `shutdown` waits for it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

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
        let tasks = vec![tokio::spawn(reaper(node, rx))];
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

/// Expires due holds (and takes back lapsed first-version leases), then tells the sales that
/// tickets may be back so they ask the store again at once instead of answering from memory.
async fn reaper(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut period = REAP_INTERVAL;
    while tick(&mut stop, period).await {
        match node.store.reap(REAP_BATCH_MAX).await {
            Ok(r) => {
                if r.expired > 0 || r.leases_reclaimed > 0 {
                    node.metrics.expired.fetch_add(r.expired as u64, Relaxed);
                    node.tickets_returned(None);
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
