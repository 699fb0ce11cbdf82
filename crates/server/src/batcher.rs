//! The request batcher: one store commit for many concurrent reservations of a sale.
//!
//! Handlers hand their item to the sale's batcher through a bounded queue; a full queue is the
//! node's signal to shed (429). The batcher takes what is queued (up to `batch_size_max`,
//! waiting at most `batch_wait` for more), and commits it in one store call while the next
//! batch gathers; up to `BATCHES_IN_FLIGHT_MAX` commits overlap. Each answer tells the sale's
//! gate how many tickets are left, whether or not the client is still there.
//!
//! A commit that fails as `Unavailable` may still have been applied (a Redis call that timed
//! out is still queued on its connection and runs later). Before answering 503, the batcher
//! looks each item's reservation id up in the store, on the same connection and so after the
//! commit: a reservation that exists is answered 201 after all; one that cannot be resolved
//! is answered 503 naming its id, which the client can look up (`GET /api/v1/reservations/ID`).

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use ticketrush_core::{ReserveItem, ReserveOutcome, SaleId};
use ticketrush_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::limits::{BATCHES_IN_FLIGHT_MAX, RESOLVE_WAIT_MAX};
use crate::metrics::Metrics;
use crate::stock::Gate;

pub type Reply = Result<ReserveOutcome, StoreError>;

struct Pending {
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
        gate: Arc<Gate>,
        metrics: Arc<Metrics>,
        config: &BatcherConfig,
    ) -> Batcher {
        assert!(config.batch_size_max >= 1 && config.pending_max >= 1);
        let (tx, rx) = mpsc::channel(config.pending_max);
        let task = BatchLoop {
            store,
            sale_id,
            gate,
            metrics,
            batch_size_max: config.batch_size_max,
            batch_wait: config.batch_wait,
        };
        tokio::spawn(task.run(rx));
        Batcher { tx }
    }

    /// Queues one item. Never waits.
    pub fn submit(&self, item: ReserveItem) -> Result<oneshot::Receiver<Reply>, Full> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Pending { item, reply })
            .map_err(|_| Full)?;
        Ok(rx)
    }
}

struct BatchLoop {
    store: Arc<dyn Store>,
    sale_id: SaleId,
    gate: Arc<Gate>,
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
            gather(&mut rx, &mut batch, this.batch_size_max, this.batch_wait).await;
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

    /// Commits a batch in one store call and answers each item.
    async fn commit(&self, batch: Vec<Pending>) {
        let items: Vec<ReserveItem> = batch.iter().map(|p| p.item.clone()).collect();
        self.metrics.batches.fetch_add(1, Relaxed);
        self.metrics
            .batch_items
            .fetch_add(items.len() as u64, Relaxed);
        let epoch = self.gate.epoch();
        match self.store.reserve_batch(&self.sale_id, items).await {
            Ok(answer) => {
                debug_assert_eq!(answer.outcomes.len(), batch.len());
                self.gate.observe(answer.available, epoch);
                for (p, outcome) in batch.into_iter().zip(answer.outcomes) {
                    let _ = p.reply.send(Ok(outcome));
                }
            }
            // Refusals applied nothing: there is nothing to look up.
            // Applied but not replicated: answered unavailable with the ids, not looked up
            // (the master has them, but they are not acknowledged).
            Err(
                e @ (StoreError::Ledger(_) | StoreError::Refused(_) | StoreError::NotReplicated(_)),
            ) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
            Err(e) => self.resolve(batch, e).await,
        }
    }

    /// The commit failed as unavailable, which does not say whether the store applied it:
    /// look each reservation up (bounded by `RESOLVE_WAIT_MAX` in all) and answer what the
    /// store holds; what stays unknown is answered with the error.
    async fn resolve(&self, batch: Vec<Pending>, e: StoreError) {
        let deadline = tokio::time::Instant::now() + RESOLVE_WAIT_MAX;
        let mut reachable = true;
        for p in batch {
            let found = if reachable {
                match tokio::time::timeout_at(deadline, self.store.reservation(&p.item.id)).await {
                    Ok(Ok(found)) => found,
                    _ => {
                        reachable = false;
                        None
                    }
                }
            } else {
                None
            };
            match found {
                Some(r) if r.user_id == p.item.user_id => {
                    self.metrics.resolved.fetch_add(1, Relaxed);
                    let _ = p.reply.send(Ok(ReserveOutcome::Reserved(r)));
                }
                _ => {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Fills `batch` (up to `max` items) with what is queued, then waits at most `wait` for more.
/// Returns early when the queue closes (the node is shutting down).
async fn gather<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize, wait: Duration) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
    if batch.len() >= max || wait.is_zero() {
        return;
    }
    // One timer for the whole wait. A `timeout_at` per item received registered a timer for
    // each, and a registration earlier than the runtime's next wake-up unparks its driver: an
    // eventfd write, about one syscall for every two requests over Redis (BENCHMARKS.md,
    // issue 17).
    let mut timer = std::pin::pin!(tokio::time::sleep(wait));
    while batch.len() < max {
        let next = std::future::poll_fn(|cx| match rx.poll_recv(cx) {
            Poll::Ready(p) => Poll::Ready(p),
            Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
        })
        .await;
        match next {
            Some(p) => batch.push(p),
            // The wait is over, or the queue closed.
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Whole milliseconds: tokio's timers tick in milliseconds.
    const WAIT: Duration = Duration::from_millis(10);

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_what_is_queued_and_what_arrives_within_the_wait() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(WAIT / 2).await;
            late.send(3).await.unwrap();
            tokio::time::sleep(WAIT).await;
            late.send(4).await.unwrap();
        });
        let started = tokio::time::Instant::now();
        let mut batch = vec![0];
        gather(&mut rx, &mut batch, 8, WAIT).await;
        assert_eq!(batch, [0, 1, 2, 3], "4 came after the wait");
        assert_eq!(
            started.elapsed(),
            WAIT,
            "one wait from the start, not one per item"
        );
        let mut next = Vec::new();
        gather(&mut rx, &mut next, 8, WAIT).await;
        assert_eq!(next, [4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_or_a_closed_queue_ends_the_wait_at_once() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        let started = tokio::time::Instant::now();
        let mut batch = Vec::new();
        gather(&mut rx, &mut batch, 3, WAIT).await;
        assert_eq!(
            (batch.as_slice(), started.elapsed()),
            (&[0, 1, 2][..], Duration::ZERO)
        );
        drop(tx);
        let mut rest = Vec::new();
        gather(&mut rx, &mut rest, 8, WAIT).await;
        assert_eq!(
            (rest.as_slice(), started.elapsed()),
            (&[3, 4][..], Duration::ZERO)
        );
        let mut none = Vec::new();
        gather(&mut rx, &mut none, 8, Duration::ZERO).await;
        assert!(none.is_empty());
    }
}
