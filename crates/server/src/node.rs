//! The selling node: its sales' runtimes and the reservation flow.
//!
//! A reservation goes: sale runtime (cached spec) → `not_open` check → take a ticket from the
//! node's allotment (one CAS, no lock) → hand it to the sale's batcher → one store commit per
//! batch → answer. When the allotment is empty the node leases more (one refill at a time per
//! sale); when the pool is empty too it answers `sold_out` from memory until a recheck is due.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use rand::RngCore;
use ticketrush_core::{
    IdempotencyKey, NodeId, Reservation, ReservationId, ReserveItem, ReserveOutcome, SaleId,
    SaleSpec, UserId,
};
use ticketrush_store::{Store, StoreError};

use crate::batcher::{Batcher, BatcherConfig};
use crate::error::ApiError;
use crate::limits::{
    LEASE_CHUNK_FAST, LEASE_CHUNK_MAX, LEASE_CHUNK_MIN, LEASE_CHUNK_SLOW, RESERVE_ATTEMPTS_MAX,
    RESERVE_WAIT_MAX, SOLD_OUT_RECHECK,
};
use crate::metrics::{Metrics, Outcome, OutcomeCounters};
use crate::stock::LocalStock;

/// How a node is set up; built by the binary from its flags.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub admin_token: String,
    pub batch_size_max: usize,
    pub batch_wait: Duration,
    /// Reservations waiting for a store commit, per sale, before the node sheds with 429.
    pub pending_max: usize,
    pub lease: Duration,
    /// The sale `/buy/ticket` uses when the request names none.
    pub default_sale: Option<SaleId>,
}

/// A successful reservation answer.
#[derive(Debug)]
pub enum Reserved {
    /// A new hold: 201.
    Created(Reservation),
    /// The idempotency key was seen before: 200 with the earlier reservation.
    Replayed(Reservation),
}

/// Refill bookkeeping, under the refill lock.
struct RefillState {
    chunk: u64,
    last_lease_at: Option<Instant>,
}

/// One sale as this node serves it.
pub struct SaleRuntime {
    pub spec: SaleSpec,
    pub stock: Arc<LocalStock>,
    batcher: Batcher,
    pub counters: OutcomeCounters,
    /// One refill at a time per sale; an async mutex because the holder awaits the store.
    refill: tokio::sync::Mutex<RefillState>,
    /// Node-clock millisecond until which the pool counts as empty (0: unknown).
    pool_empty_until_ms: AtomicU64,
    /// A background refill is on its way; stops prefetches from piling up.
    prefetching: AtomicBool,
    /// The last chunk asked for, for the prefetch watermark (a quarter of it).
    chunk_hint: AtomicU64,
    /// Set once the sale is seen open, so the hot path stops reading the clock for it.
    open: AtomicBool,
    /// Tickets taken since the lease keeper last looked; 0 means idle.
    pub taken_since_tick: AtomicU64,
}

impl SaleRuntime {
    fn pool_known_empty(&self, now_ms: u64) -> bool {
        now_ms < self.pool_empty_until_ms.load(Relaxed)
    }

    /// Forget that the pool was empty: tickets came back (an expiry, a cancellation).
    pub fn pool_may_have_stock(&self) {
        self.pool_empty_until_ms.store(0, Relaxed);
    }
}

pub struct Node {
    pub config: NodeConfig,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// Sales this node has served, by id. Read on every request, written once per sale, so it
    /// is copy-on-write behind an `ArcSwap`: a read touches no cache line another core writes
    /// (a `RwLock` read would, twice). Writers serialise on `sales_write`. Bounded by the
    /// store's `SALES_MAX`.
    sales: ArcSwap<HashMap<SaleId, Arc<SaleRuntime>>>,
    sales_write: Mutex<()>,
    /// The node clock's origin, for cheap monotonic milliseconds.
    started: Instant,
}

impl Node {
    pub fn new(config: NodeConfig, store: Arc<dyn Store>) -> Arc<Node> {
        Arc::new(Node {
            config,
            store,
            metrics: Arc::new(Metrics::default()),
            sales: ArcSwap::from_pointee(HashMap::new()),
            sales_write: Mutex::new(()),
            started: Instant::now(),
        })
    }

    fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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
        let rt = {
            let stock = Arc::new(LocalStock::default());
            let batcher = Batcher::start(
                self.store.clone(),
                sale_id.clone(),
                stock.clone(),
                self.metrics.clone(),
                &BatcherConfig {
                    batch_size_max: self.config.batch_size_max,
                    batch_wait: self.config.batch_wait,
                    pending_max: self.config.pending_max,
                },
            );
            Arc::new(SaleRuntime {
                spec: view.spec,
                stock,
                batcher,
                counters: OutcomeCounters::default(),
                refill: tokio::sync::Mutex::new(RefillState {
                    chunk: LEASE_CHUNK_MIN,
                    last_lease_at: None,
                }),
                pool_empty_until_ms: AtomicU64::new(0),
                prefetching: AtomicBool::new(false),
                open: AtomicBool::new(false),
                chunk_hint: AtomicU64::new(LEASE_CHUNK_MIN),
                taken_since_tick: AtomicU64::new(0),
            })
        };
        let mut sales = HashMap::clone(&self.sales.load());
        sales.insert(sale_id.clone(), rt.clone());
        self.sales.store(Arc::new(sales));
        Ok(rt)
    }

    /// Reserves one ticket of `sale_id` for `user_id`, counting the outcome in the metrics.
    pub async fn reserve(
        self: &Arc<Self>,
        sale_id: &SaleId,
        user_id: UserId,
        key: Option<IdempotencyKey>,
    ) -> Result<Reserved, ApiError> {
        let rt = match self.runtime(sale_id).await {
            Ok(rt) => rt,
            Err(e) => {
                self.metrics.unrouted.count(Outcome::of_error_code(e.code));
                return Err(e);
            }
        };
        let result = self.reserve_in(&rt, user_id, key).await;
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
        let mut attempts = 0;
        let mut give_up_at: Option<tokio::time::Instant> = None;
        while attempts < RESERVE_ATTEMPTS_MAX {
            let Some(lease) = rt.stock.take() else {
                // Others may drain each fresh chunk, or hold the last tickets in flight, before
                // this request gets one; it keeps trying for a bounded time, then the honest
                // answer is "busy, retry".
                let deadline = *give_up_at
                    .get_or_insert_with(|| tokio::time::Instant::now() + RESERVE_WAIT_MAX);
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::overloaded());
                }
                if self.refill(rt).await? {
                    continue;
                }
                match tokio::time::timeout_at(deadline, rt.stock.wait_for_settlement()).await {
                    Ok(true) => continue,
                    Ok(false) => return self.sold_out(rt, &user_id, key.as_ref()).await,
                    Err(_) => return Err(ApiError::overloaded()),
                }
            };
            rt.taken_since_tick.fetch_add(1, Relaxed);
            self.maybe_prefetch(rt);
            let item = ReserveItem {
                id: new_reservation_id_in(&rt.spec.id),
                user_id: user_id.clone(),
                idempotency_key: key.clone(),
            };
            let Ok(reply) = rt.batcher.submit(lease, item) else {
                rt.stock.untake(lease);
                return Err(ApiError::overloaded());
            };
            let outcome = reply
                .await
                .map_err(|_| ApiError::unavailable("the batcher stopped"))?;
            match outcome {
                Ok(ReserveOutcome::Reserved(r)) => return Ok(Reserved::Created(r)),
                Ok(ReserveOutcome::Replayed(r)) => return Ok(Reserved::Replayed(r)),
                Ok(ReserveOutcome::LimitReached) => return Err(ApiError::limit_reached()),
                // The batcher dropped the stale lease; the next attempt leases again.
                Ok(ReserveOutcome::NoStock)
                | Err(StoreError::Ledger(ticketrush_core::LedgerError::LeaseLost)) => {
                    attempts += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The store kept taking the lease back (a churning cluster): busy, retry.
        Err(ApiError::overloaded())
    }

    /// The allotment and the pool are empty. An idempotent retry of a reservation that won
    /// before the sale sold out still gets its reservation.
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

    /// Leases more tickets; answers whether the allotment now has some. Runs in its own task
    /// so a client hanging up cannot drop a grant on the floor between store and allotment.
    async fn refill(self: &Arc<Self>, rt: &Arc<SaleRuntime>) -> Result<bool, ApiError> {
        if rt.stock.allotment.remaining() > 0 {
            return Ok(true);
        }
        if rt.pool_known_empty(self.clock_ms()) {
            return Ok(false);
        }
        let (node, rt2) = (self.clone(), rt.clone());
        tokio::spawn(async move { node.refill_locked(&rt2, false).await })
            .await
            .map_err(|_| ApiError::unavailable("the refill task failed"))?
            .map_err(ApiError::from)
    }

    /// Leases the next chunk, one refill at a time per sale. Unless `ahead` (a prefetch), a
    /// refill that finds tickets already back in the allotment does nothing.
    async fn refill_locked(&self, rt: &SaleRuntime, ahead: bool) -> Result<bool, StoreError> {
        let mut st = rt.refill.lock().await;
        if !ahead && rt.stock.allotment.remaining() > 0 {
            return Ok(true);
        }
        if rt.pool_known_empty(self.clock_ms()) {
            return Ok(false);
        }
        let now = Instant::now();
        st.chunk = match st.last_lease_at.map(|t| now - t) {
            Some(d) if d < LEASE_CHUNK_FAST => (st.chunk * 2).min(LEASE_CHUNK_MAX),
            Some(d) if d > LEASE_CHUNK_SLOW => (st.chunk / 2).max(LEASE_CHUNK_MIN),
            _ => st.chunk,
        };
        st.last_lease_at = Some(now);
        rt.chunk_hint.store(st.chunk, Relaxed);
        let lease_ms = self.config.lease.as_millis() as i64;
        let grant = self
            .store
            .lease(
                &rt.spec.id,
                &self.config.node_id,
                rt.stock.allotment.lease(),
                st.chunk,
                lease_ms,
            )
            .await?;
        self.metrics.leases.fetch_add(1, Relaxed);
        rt.stock.allotment.install(grant.lease, grant.granted);
        if grant.granted == 0 {
            let until = self.clock_ms() + SOLD_OUT_RECHECK.as_millis() as u64;
            rt.pool_empty_until_ms.store(until, Relaxed);
        }
        Ok(rt.stock.allotment.remaining() > 0)
    }

    /// When the allotment runs low, lease the next chunk in the background so requests rarely
    /// wait for a refill.
    fn maybe_prefetch(self: &Arc<Self>, rt: &Arc<SaleRuntime>) {
        let low = rt.stock.allotment.remaining() < rt.chunk_hint.load(Relaxed) / 4;
        if !low || rt.pool_known_empty(self.clock_ms()) || rt.prefetching.swap(true, Relaxed) {
            return;
        }
        let (node, rt) = (self.clone(), rt.clone());
        tokio::spawn(async move {
            if let Err(e) = node.refill_locked(&rt, true).await {
                tracing::debug!(error = %e, sale = %rt.spec.id, "prefetch lease failed");
            }
            rt.prefetching.store(false, Relaxed);
        });
    }

    /// Gives every sale's unsold allotment back to the store (on shutdown).
    pub async fn release_all(&self) {
        for rt in self.runtimes() {
            let (lease, tickets) = rt.stock.allotment.drain();
            if lease != 0 {
                if let Err(e) = self.store.release(&rt.spec.id, lease, tickets, true).await {
                    tracing::warn!(error = %e, sale = %rt.spec.id, "could not return the allotment");
                }
            }
        }
    }
}

/// The id of a new reservation of `sale`: 128 random bits, a `.` and the sale id. The suffix
/// lets a store find the reservation from its id alone without an index outside the sale
/// (the Redis store keeps each sale in one cluster slot); the random part makes it unguessable.
pub fn new_reservation_id_in(sale: &SaleId) -> ReservationId {
    let id = format!("{}.{sale}", new_reservation_id());
    ReservationId::parse(&id).expect("26 base32 characters, a dot and a sale id fit the bound")
}

/// A new random id: 128 bits from the thread's CSPRNG, as 26 lowercase base32 characters.
pub fn new_reservation_id() -> ReservationId {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let mut n = u128::from_le_bytes(bytes);
    let mut s = String::with_capacity(26);
    for _ in 0..26 {
        s.push(ALPHABET[(n & 31) as usize] as char);
        n >>= 5;
    }
    ReservationId::parse(&s).expect("base32 is within the id alphabet")
}

/// An id for an anonymous `/buy/ticket` buyer: a new user per request, as in the original.
pub fn new_anonymous_user() -> UserId {
    let id = new_reservation_id();
    UserId::parse(&format!("anon-{id}")).expect("anon- plus base32 is a valid user id")
}
