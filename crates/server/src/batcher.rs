//! The request batcher: one store commit for many concurrent reservations of a sale.
//!
//! Handlers hand their item (with the lease its ticket came from) to the sale's batcher through
//! a bounded queue; a full queue is the node's signal to shed (429). The batcher takes what is
//! queued (up to `batch_size_max`, waiting at most `batch_wait` for more), and commits it in one
//! store call while the next batch gathers; up to `BATCHES_IN_FLIGHT_MAX` commits overlap.
//!
//! The batcher, not the handler, settles each ticket: an item the store refused without
//! deducting (limit, replay, store down) goes back to the allotment here, and every item is settled in `LocalStock`, so a client that hangs
//! up mid-request never strands a ticket.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ticketrush_core::{LeaseId, LedgerError, ReserveItem, ReserveOutcome, SaleId};
use ticketrush_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::limits::BATCHES_IN_FLIGHT_MAX;
use crate::metrics::Metrics;
use crate::stock::LocalStock;

pub type Reply = Result<ReserveOutcome, StoreError>;

struct Pending {
    lease: LeaseId,
    item: ReserveItem,
    reply: oneshot::Sender<Reply>,
}

/// The submitting side; cheap to share. Dropping the last one stops the batcher task.
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

/// The queue is full: the caller must shed the request.
#[derive(Debug)]
pub struct Full;

pub struct BatcherConfig {
    pub batch_size_max: usize,
    pub batch_wait: Duration,
    pub pending_max: usize,
}

impl Batcher {
    /// Starts the batcher task of one sale.
    pub fn start(
        store: Arc<dyn Store>,
        sale_id: SaleId,
        stock: Arc<LocalStock>,
        metrics: Arc<Metrics>,
        config: &BatcherConfig,
    ) -> Batcher {
        assert!(config.batch_size_max >= 1 && config.pending_max >= 1);
        let (tx, rx) = mpsc::channel(config.pending_max);
        let task = BatchLoop {
            store,
            sale_id,
            stock,
            metrics,
            batch_size_max: config.batch_size_max,
            batch_wait: config.batch_wait,
        };
        tokio::spawn(task.run(rx));
        Batcher { tx }
    }

    /// Queues one item whose ticket was taken from `lease`. Never waits.
    pub fn submit(
        &self,
        lease: LeaseId,
        item: ReserveItem,
    ) -> Result<oneshot::Receiver<Reply>, Full> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Pending { lease, item, reply })
            .map_err(|_| Full)?;
        Ok(rx)
    }
}

struct BatchLoop {
    store: Arc<dyn Store>,
    sale_id: SaleId,
    stock: Arc<LocalStock>,
    metrics: Arc<Metrics>,
    batch_size_max: usize,
    batch_wait: Duration,
}

impl BatchLoop {
    async fn run(self, mut rx: mpsc::Receiver<Pending>) {
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
        let this = Arc::new(self);
        while let Some(first) = rx.recv().await {
            let mut batch = Vec::with_capacity(this.batch_size_max);
            batch.push(first);
            this.gather(&mut rx, &mut batch).await;
            debug_assert!(batch.len() <= this.batch_size_max);
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let this = this.clone();
            tokio::spawn(async move {
                this.commit(batch).await;
                drop(permit);
            });
        }
    }

    /// Fills the batch with what is queued, waiting at most `batch_wait` for more.
    async fn gather(&self, rx: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
        while batch.len() < self.batch_size_max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if batch.len() >= self.batch_size_max || self.batch_wait.is_zero() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.batch_wait;
        while batch.len() < self.batch_size_max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                _ => return,
            }
        }
    }

    /// Commits a batch, one store call per lease it names (normally one), and answers each item.
    async fn commit(&self, mut batch: Vec<Pending>) {
        batch.sort_by_key(|p| p.lease);
        while !batch.is_empty() {
            let lease = batch[0].lease;
            let split = batch
                .iter()
                .position(|p| p.lease != lease)
                .unwrap_or(batch.len());
            let rest = batch.split_off(split);
            self.commit_lease(lease, batch).await;
            batch = rest;
        }
    }

    async fn commit_lease(&self, lease: LeaseId, group: Vec<Pending>) {
        let items: Vec<ReserveItem> = group.iter().map(|p| p.item.clone()).collect();
        self.metrics.batches.fetch_add(1, Relaxed);
        self.metrics
            .batch_items
            .fetch_add(items.len() as u64, Relaxed);
        match self.store.reserve_batch(&self.sale_id, lease, items).await {
            Ok(outcomes) => {
                debug_assert_eq!(outcomes.len(), group.len());
                let n = group.len() as u64;
                for (p, outcome) in group.into_iter().zip(outcomes) {
                    self.settle(lease, &outcome);
                    let _ = p.reply.send(Ok(outcome));
                }
                self.stock.settle(n);
            }
            Err(e) => {
                if matches!(e, StoreError::Ledger(LedgerError::LeaseLost)) {
                    self.metrics.leases_lost.fetch_add(1, Relaxed);
                    self.stock.allotment.forget(lease);
                } else {
                    for _ in &group {
                        self.stock.allotment.put_back(lease);
                    }
                }
                let n = group.len() as u64;
                for p in group {
                    let _ = p.reply.send(Err(e.clone()));
                }
                self.stock.settle(n);
            }
        }
    }

    /// Puts the ticket of an item the store did not deduct back into the allotment.
    fn settle(&self, lease: LeaseId, outcome: &ReserveOutcome) {
        match outcome {
            ReserveOutcome::Reserved(_) => {}
            ReserveOutcome::Replayed(_) | ReserveOutcome::LimitReached => {
                self.stock.allotment.put_back(lease);
            }
            // The store's count for this lease is below ours: ours is wrong, drop it and lease
            // again rather than keep offering tickets the store will refuse.
            ReserveOutcome::NoStock => self.stock.allotment.forget(lease),
        }
    }
}
