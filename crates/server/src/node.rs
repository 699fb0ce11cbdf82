//! The selling node: its sales' runtimes and the reservation flow.
//!
//! A reservation goes: sale runtime (cached spec) → `not_open` check → the sale's
//! [`SaleStock`] (answered `sold_out` from memory once a batch found the pool empty, else queued
//! for the next batch: one store commit per batch) → answer. The node routes; the stock owns
//! what the node knows of the sale's tickets; the batcher batches; the reaper ticks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use rand::Rng;
use ticketrush_core::{
    IdempotencyKey, NodeId, Reservation, ReservationId, ReserveOutcome, SaleId, SaleSpec, UserId,
};
use ticketrush_store::{Store, StoreError};

use crate::batcher::BatcherConfig;
use crate::error::ApiError;
use crate::limits::SOLD_OUT_RECHECK;
use crate::metrics::{Metrics, Outcome, OutcomeCounters};
use crate::stock::{Decision, SaleStock, Undecided};

/// How a node is set up; built by the binary from its flags.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub admin_token: String,
    pub batch_size_max: usize,
    pub batch_wait: Duration,
    /// Reservations waiting for a store commit, per sale, before the node sheds with 429.
    pub pending_max: usize,
    /// The sale `/buy/ticket` uses when the request names none.
    pub default_sale: Option<SaleId>,
    /// Proven users (`--user-auth jwt`): reservations, payments and cancellations act for the
    /// bearer token's `sub`. None: the body's `user_id` is trusted.
    pub user_auth: Option<Arc<crate::auth::UserAuth>>,
}

/// A successful reservation answer.
#[derive(Debug)]
pub enum Reserved {
    /// A new hold: 201.
    Created(Reservation),
    /// The idempotency key was seen before: 200 with the earlier reservation.
    Replayed(Reservation),
}

/// One sale as this node serves it.
pub struct SaleRuntime {
    pub spec: SaleSpec,
    pub stock: SaleStock,
    pub counters: OutcomeCounters,
    /// Set once the sale is seen open, so the hot path stops reading the clock for it.
    open: AtomicBool,
}

pub struct Node {
    pub config: NodeConfig,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// The live view's figures (`/api/v1/stats`, `/dashboard`, the stock gauges of `/metrics`).
    pub stats: crate::dashboard::StatsCache,
    /// Sales this node has served, by id. Read on every request, written once per sale, so it
    /// is copy-on-write behind an `ArcSwap`: a read touches no cache line another core writes
    /// (a `RwLock` read would, twice). Writers serialise on `sales_write`. Bounded by the
    /// store's `SALES_MAX`.
    sales: ArcSwap<HashMap<SaleId, Arc<SaleRuntime>>>,
    sales_write: Mutex<()>,
    /// Set once the node is stopping: `/readyz` answers 503 while requests are still served.
    draining: AtomicBool,
}

impl Node {
    pub fn new(config: NodeConfig, store: Arc<dyn Store>) -> Arc<Node> {
        Arc::new(Node {
            config,
            store,
            metrics: Arc::new(Metrics::default()),
            stats: crate::dashboard::StatsCache::default(),
            sales: ArcSwap::from_pointee(HashMap::new()),
            sales_write: Mutex::new(()),
            draining: AtomicBool::new(false),
        })
    }

    /// Marks the node as stopping (see `draining`).
    pub fn begin_drain(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// The runtimes of the sales this node has served so far.
    pub fn runtimes(&self) -> Vec<Arc<SaleRuntime>> {
        self.sales.load().values().cloned().collect()
    }

    /// The runtime of a sale, made on first use from the store's definition.
    pub async fn runtime(&self, sale_id: &SaleId) -> Result<Arc<SaleRuntime>, ApiError> {
        if let Some(rt) = self.sales.load().get(sale_id) {
            return Ok(rt.clone());
        }
        let view = self
            .store
            .sale(sale_id)
            .await?
            .ok_or_else(ApiError::sale_not_found)?;
        let _writer = self.sales_write.lock().expect("sales write lock");
        if let Some(rt) = self.sales.load().get(sale_id) {
            return Ok(rt.clone());
        }
        let stock = SaleStock::start(
            self.store.clone(),
            sale_id.clone(),
            self.metrics.clone(),
            &BatcherConfig {
                batch_size_max: self.config.batch_size_max,
                batch_wait: self.config.batch_wait,
                pending_max: self.config.pending_max,
            },
            SOLD_OUT_RECHECK,
        );
        let rt = Arc::new(SaleRuntime {
            spec: view.spec,
            stock,
            counters: OutcomeCounters::default(),
            open: AtomicBool::new(false),
        });
        let mut sales = HashMap::clone(&self.sales.load());
        sales.insert(sale_id.clone(), rt.clone());
        self.sales.store(Arc::new(sales));
        Ok(rt)
    }

    /// Reserves one ticket of `sale_id` for `user_id`, counting the outcome in the metrics.
    /// A sale with a waiting room needs `admission`, the buyer's admission token.
    pub async fn reserve(
        self: &Arc<Self>,
        sale_id: &SaleId,
        user_id: UserId,
        key: Option<IdempotencyKey>,
        admission: Option<&[u8]>,
    ) -> Result<Reserved, ApiError> {
        let rt = match self.runtime(sale_id).await {
            Ok(rt) => rt,
            Err(e) => {
                self.metrics.unrouted.count(Outcome::of_error_code(e.code));
                return Err(e);
            }
        };
        let result = match &rt.spec.queue {
            Some(q) => crate::admission::verify(q, sale_id, &user_id, admission, self.store.now())
                .map_err(|r| ApiError::not_admitted(r.message())),
            None => Ok(()),
        };
        let result = match result {
            Ok(()) => self.reserve_in(&rt, user_id, key).await,
            Err(e) => Err(e),
        };
        rt.counters.count(match &result {
            Ok(Reserved::Created(_)) => Outcome::Reserved,
            Ok(Reserved::Replayed(_)) => Outcome::Replayed,
            Err(e) => Outcome::of_error_code(e.code),
        });
        result
    }

    async fn reserve_in(
        self: &Arc<Self>,
        rt: &Arc<SaleRuntime>,
        user_id: UserId,
        key: Option<IdempotencyKey>,
    ) -> Result<Reserved, ApiError> {
        if !rt.open.load(Relaxed) {
            if self.store.now() < rt.spec.opens_at {
                return Err(ApiError::not_open());
            }
            rt.open.store(true, Relaxed);
        }
        match rt.stock.reserve(&user_id, key.as_ref()).await {
            Ok(Decision::Store(ReserveOutcome::Reserved(r))) => Ok(Reserved::Created(r)),
            Ok(Decision::Store(ReserveOutcome::Replayed(r))) => Ok(Reserved::Replayed(r)),
            Ok(Decision::Store(ReserveOutcome::LimitReached)) => Err(ApiError::limit_reached()),
            // The store found the pool empty while deciding this very request.
            Ok(Decision::Store(ReserveOutcome::NoStock)) => Err(ApiError::sold_out()),
            Ok(Decision::SoldOutFromMemory) => self.sold_out(rt, &user_id, key.as_ref()).await,
            Err(Undecided::Shed) => Err(ApiError::overloaded()),
            Err(Undecided::Store(e @ (StoreError::Ledger(_) | StoreError::Refused(_)), _)) => {
                Err(e.into())
            }
            Err(Undecided::Store(e, id)) => Err(ApiError::from(e).with_reservation_id(id)),
        }
    }

    /// The sale is known sold out. An idempotent retry of a reservation that won before the
    /// sale sold out still gets its reservation.
    async fn sold_out(
        &self,
        rt: &SaleRuntime,
        user_id: &UserId,
        key: Option<&IdempotencyKey>,
    ) -> Result<Reserved, ApiError> {
        if let Some(key) = key {
            if let Some(r) = self
                .store
                .find_idempotent(&rt.spec.id, user_id, key)
                .await?
            {
                return Ok(Reserved::Replayed(r));
            }
        }
        Err(ApiError::sold_out())
    }

    /// Tickets came back to the pool through this node (expiry, cancellation): its sales ask
    /// the store again from the next request on.
    pub fn tickets_returned(&self, sale_id: Option<&SaleId>) {
        for rt in self.sales.load().values() {
            if sale_id.is_none_or(|s| s == &rt.spec.id) {
                rt.stock.tickets_returned();
            }
        }
    }
}

/// The id of a new reservation of `sale`: 26 base32 characters (the time in milliseconds, then
/// 80 random bits), a `.` and the sale id. The suffix lets a store find the reservation from
/// its id alone without an index outside the sale (the Redis store keeps each sale in one
/// cluster slot); the random part makes it unguessable; the time first makes ids made later
/// sort later, so the orders table's key index grows at its end instead of at random pages
/// (in SQLite and PostgreSQL alike; issue 17).
pub fn new_reservation_id_in(sale: &SaleId) -> ReservationId {
    let mut id = String::with_capacity(27 + sale.as_str().len());
    push_base32_26(time_ordered_bits(), &mut id);
    id.push('.');
    id.push_str(sale.as_str());
    ReservationId::parse(&id).expect("26 base32 characters, a dot and a sale id fit the bound")
}

/// 48 bits of Unix milliseconds, then 80 bits from the thread's CSPRNG.
fn time_ordered_bits() -> u128 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut random = [0u8; 16];
    rand::rng().fill_bytes(&mut random[..10]);
    ((ms & ((1 << 48) - 1)) << 80) | u128::from_le_bytes(random)
}

/// A new random id: 128 bits from the thread's CSPRNG, as 26 lowercase base32 characters. For
/// tokens, prefixes and names that must not be guessed or collide.
pub fn new_random_id() -> ReservationId {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    ReservationId::parse(&base32_26(u128::from_le_bytes(bytes)))
        .expect("base32 is within the id alphabet")
}

/// `n` as 26 base32 characters, most significant first (so ids sort as their numbers do).
fn base32_26(n: u128) -> String {
    let mut s = String::with_capacity(26);
    push_base32_26(n, &mut s);
    s
}

/// Appends `base32_26(n)` to `out`.
fn push_base32_26(n: u128, out: &mut String) {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut digits = [0u8; 26];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = ALPHABET[((n >> (5 * (25 - i))) & 31) as usize];
    }
    out.push_str(std::str::from_utf8(&digits).expect("the alphabet is ASCII"));
}

/// An id for an anonymous `/buy/ticket` buyer: a new user per request, as in the original.
pub fn new_anonymous_user() -> UserId {
    let id = new_random_id();
    UserId::parse(&format!("anon-{id}")).expect("anon- plus base32 is a valid user id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_ids_made_later_sort_later_and_stay_unguessable() {
        let sale = SaleId::parse("s").unwrap();
        let a = new_reservation_id_in(&sale);
        // Until the clock's millisecond has moved on (bounded: a millisecond is short).
        let start = std::time::Instant::now();
        let mut b = new_reservation_id_in(&sale);
        while b.as_str()[..10] == a.as_str()[..10] {
            assert!(start.elapsed() < std::time::Duration::from_secs(1));
            b = new_reservation_id_in(&sale);
        }
        assert!(a.as_str() < b.as_str(), "{a} then {b}");
        assert_eq!(a.as_str().len(), 26 + 2);
        // Within one millisecond the random tails differ.
        let same_ms: std::collections::HashSet<String> = (0..1_000)
            .map(|_| new_reservation_id_in(&sale).as_str().to_string())
            .collect();
        assert_eq!(same_ms.len(), 1_000);
        let r = new_random_id();
        assert_eq!(r.as_str().len(), 26);
        assert_ne!(r, new_random_id());
    }
}
