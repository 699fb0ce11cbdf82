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
    // A store that keeps failing (down, or a full disk) is logged every 10 s, not every pass.
    let mut last_warn: Option<std::time::Instant> = None;
    let mut suppressed = 0u64;
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
                if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, suppressed, "reaper pass failed");
                    last_warn = Some(std::time::Instant::now());
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                period = REAP_INTERVAL;
            }
        }
    }
}
