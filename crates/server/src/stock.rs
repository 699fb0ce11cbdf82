//! A sale's stock as one node sees it: the one owner of everything a node knows or does about
//! a sale's tickets.
//!
//! The node holds no tickets of its own (no allotment, no lease): every reservation is decided
//! by the store against the sale's one pool, in a batch with the other requests of the moment.
//! What the node keeps is the [`SoldOutGate`]: once a batch answer says the pool is empty, the
//! next requests are answered `sold_out` from memory (one atomic load, no store call) until a
//! recheck is due, when one request goes to the store as the probe. So `sold_out` means what it
//! says, for the whole sale, whichever node answers it; ARCHITECTURE.md has the measurements
//! that chose this over leased allotments.
//!
//! [`SaleStock::reserve`] is the whole flow for one request: the gate, the batcher, the answer,
//! and the resolution of an answer lost to a store timeout (see [`Batcher`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ticketrush_core::{
    Admit, IdempotencyKey, ReservationId, ReserveItem, ReserveOutcome, SaleId, SoldOutGate, UserId,
};
use ticketrush_store::{Store, StoreError};

use crate::batcher::{Batcher, BatcherConfig, Full};
use crate::metrics::Metrics;

/// What became of one request.
#[derive(Debug)]
pub enum Decision {
    /// The store decided it (a reservation, a replay, the limit, or an empty pool).
    Store(ReserveOutcome),
    /// The pool was found empty by an earlier batch and no recheck is due: `sold_out` without
    /// a store call.
    SoldOutFromMemory,
}

/// Why a request got no decision.
#[derive(Debug)]
pub enum Undecided {
    /// The sale's queue to the store is full: shed with 429.
    Shed,
    /// The store failed or timed out and the outcome could not be resolved: 503, naming the
    /// reservation id the request would have had so the client can look it up.
    Store(StoreError, ReservationId),
}

/// The gate and the node clock it reads, shared by the handlers and the batcher.
pub struct Gate {
    gate: SoldOutGate,
    started: Instant,
    recheck_ms: u64,
}

impl Gate {
    fn new(recheck: Duration) -> Gate {
        Gate {
            gate: SoldOutGate::default(),
            started: Instant::now(),
            recheck_ms: recheck.as_millis() as u64,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Where the gate stands as a batch goes to the store.
    pub fn epoch(&self) -> u64 {
        self.gate.epoch()
    }

    /// The store answered a batch sent at `epoch` with `available` tickets left after it.
    pub fn observe(&self, available: u64, epoch: u64) {
        self.gate
            .observe_since(available, epoch, self.now_ms(), self.recheck_ms);
    }
}

pub struct SaleStock {
    sale_id: SaleId,
    gate: Arc<Gate>,
    batcher: Batcher,
}

impl SaleStock {
    /// Starts the stock of one sale on this node (its batcher task included).
    pub fn start(
        store: Arc<dyn Store>,
        sale_id: SaleId,
        metrics: Arc<Metrics>,
        config: &BatcherConfig,
        recheck: Duration,
    ) -> SaleStock {
        let gate = Arc::new(Gate::new(recheck));
        let batcher = Batcher::start(store, sale_id.clone(), gate.clone(), metrics, config);
        SaleStock {
            sale_id,
            gate,
            batcher,
        }
    }

    /// Reserves one ticket for `user_id`: from memory when the sale is known sold out (no id
    /// made, no allocation), else in the next batch to the store under a new reservation id.
    pub async fn reserve(
        &self,
        user_id: &UserId,
        key: Option<&IdempotencyKey>,
    ) -> Result<Decision, Undecided> {
        let g = &self.gate;
        if g.gate.admit(g.now_ms(), g.recheck_ms) == Admit::SoldOut {
            return Ok(Decision::SoldOutFromMemory);
        }
        let id = crate::node::new_reservation_id_in(&self.sale_id);
        let item = ReserveItem {
            id: id.clone(),
            user_id: user_id.clone(),
            idempotency_key: key.cloned(),
        };
        let reply = self.batcher.submit(item).map_err(|Full| Undecided::Shed)?;
        match reply.await {
            Ok(Ok(outcome)) => Ok(Decision::Store(outcome)),
            Ok(Err(e)) => Err(Undecided::Store(e, id)),
            Err(_) => Err(Undecided::Store(
                StoreError::Unavailable("the batcher stopped".into()),
                id,
            )),
        }
    }

    /// Tickets came back to the pool (a cancellation or an expiry this node made): the next
    /// request asks the store instead of answering from memory.
    pub fn tickets_returned(&self) {
        self.gate.gate.reopen();
    }

    /// Whether this node currently answers `sold_out` from memory.
    pub fn known_sold_out(&self) -> bool {
        self.gate.gate.is_closed(self.gate.now_ms())
    }
}
