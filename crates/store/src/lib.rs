//! The store: where the global truth of every sale lives.
//!
//! [`Store`] is the one interface the server uses to change stock; nothing else may. It speaks
//! in batches (docs/DESIGN.md, "The stock model"), so a backend across a network
//! ([`redis_store::RedisStore`]) serves a batch of reservations in one round trip. [`embedded::EmbeddedStore`] keeps the
//! [`Ledger`](ticketrush_core::Ledger) in memory under one lock and makes every change durable
//! through an append-only journal with group commit.
//!
//! Methods return boxed futures so the server can hold an `Arc<dyn Store>` and pick the backend
//! at start; the box is one allocation per call, and calls are per batch, not per request, on
//! the hot path.

pub mod clock;
pub mod embedded;
pub mod event_json;
pub mod follower;
pub mod journal;
pub mod redis_cluster;
pub mod redis_store;

use std::future::Future;
use std::pin::Pin;

use ticketrush_core::{
    IdempotencyKey, LedgerError, QueueEntry, QueueId, Reservation, ReservationId, ReserveItem,
    ReserveOutcome, SaleId, SaleSpec, SaleView, UnixMs, UserId, WaitlistEntry, WaitlistId,
};

pub use clock::{Clock, ManualClock, SystemClock};
pub use embedded::EmbeddedStore;
pub use follower::{Follow, FollowError, Following, JournalFollower};
pub use redis_store::{RedisConfig, RedisStore, RedisTls};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The request was refused by the rules of the stock model.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The store cannot answer now (down, timed out); the caller may retry. Whether a change
    /// was applied is unknown.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the change and applied nothing (its backlog or its disk is full); the
    /// caller may retry later.
    #[error("store busy: {0}")]
    Refused(String),
    /// The change was applied on the Redis master but fewer replicas than required confirmed
    /// it (`--redis-wait-replicas`): a failover now could lose it, so it is not acknowledged.
    /// The caller answers 503 naming what was changed; looking it up on the master would
    /// wrongly confirm it.
    #[error("not replicated: {0}")]
    NotReplicated(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What one reaper pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub expired: usize,
    /// Leases left open by the first version (see `Ledger`), taken back into the pool.
    pub leases_reclaimed: usize,
}

/// The store's answer to a batch of reservations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// One answer per item, in order.
    pub outcomes: Vec<ReserveOutcome>,
    /// Unsold tickets of the sale right after the batch, in the same atomic step: 0 means
    /// sold out for every node at that moment, which lets a node answer the next requests from
    /// memory (see `ticketrush_core::SoldOutGate`).
    pub available: u64,
}

/// A sale's counts with every reservation of it (see [`Store::snapshot`]).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub view: SaleView,
    pub reservations: Vec<Reservation>,
}

/// A queue entry with the store's clock when it was read: admission is decided by that clock
/// (see `QueueSpec::admitted_through`), the same for every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueAnswer {
    pub entry: QueueEntry,
    /// A new entry (202), or the user's existing one (200).
    pub created: bool,
    pub now: UnixMs,
}

/// A waitlist entry as a join answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitlistAnswer {
    pub entry: WaitlistEntry,
    /// A new entry (201), or the user's entry still waiting (200).
    pub created: bool,
}

/// The global store. Every method is one atomic step in the store.
pub trait Store: Send + Sync + 'static {
    /// The store's notion of now: the clock every deadline is measured against.
    fn now(&self) -> UnixMs;

    fn create_sale(&self, spec: SaleSpec) -> BoxFuture<'_, StoreResult<SaleView>>;
    fn sale<'a>(&'a self, id: &'a SaleId) -> BoxFuture<'a, StoreResult<Option<SaleView>>>;
    fn sales(&self) -> BoxFuture<'_, StoreResult<Vec<SaleView>>>;

    /// Commits a batch of reservations against the sale's pool and answers each item, durably:
    /// when this returns, every `Reserved` outcome survives a crash. A `NoStock` item met an
    /// empty pool: sold out for the whole sale at that moment.
    fn reserve_batch<'a>(
        &'a self,
        sale_id: &'a SaleId,
        items: Vec<ReserveItem>,
    ) -> BoxFuture<'a, StoreResult<BatchOutcome>>;

    fn find_idempotent<'a>(
        &'a self,
        sale_id: &'a SaleId,
        user_id: &'a UserId,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, StoreResult<Option<Reservation>>>;
    fn reservation<'a>(
        &'a self,
        id: &'a ReservationId,
    ) -> BoxFuture<'a, StoreResult<Option<Reservation>>>;
    fn pay<'a>(
        &'a self,
        id: &'a ReservationId,
        user_id: &'a UserId,
    ) -> BoxFuture<'a, StoreResult<Reservation>>;
    fn cancel<'a>(
        &'a self,
        id: &'a ReservationId,
        user_id: &'a UserId,
    ) -> BoxFuture<'a, StoreResult<Reservation>>;

    /// Expires due holds (at most `max`) and takes back lapsed first-version leases. Safe on
    /// every node at once.
    fn reap(&self, max: usize) -> BoxFuture<'_, StoreResult<ReapReport>>;

    /// A sale's counts and all its reservations, read together: what the audit checks. Meant
    /// for a quiet sale (after it, or with no node selling); a store that cannot read both in
    /// one step retries until two reads of the counts agree, and answers `Unavailable` if the
    /// sale keeps changing.
    fn snapshot<'a>(&'a self, sale_id: &'a SaleId) -> BoxFuture<'a, StoreResult<Option<Snapshot>>>;

    /// Puts a user in a queued sale's waiting room (`queue_id` is the new entry's id, made by
    /// the node), or answers the user's entry while it still counts (not admitted yet, or
    /// admitted and within the admission window). Durable when it answers.
    fn queue_join<'a>(
        &'a self,
        sale_id: &'a SaleId,
        queue_id: QueueId,
        user_id: UserId,
    ) -> BoxFuture<'a, StoreResult<QueueAnswer>>;

    /// A queue entry and its place in line, read with the store's clock.
    fn queue_entry<'a>(
        &'a self,
        sale_id: &'a SaleId,
        queue_id: &'a QueueId,
    ) -> BoxFuture<'a, StoreResult<Option<QueueAnswer>>>;

    /// Puts a user on a sold-out sale's waitlist (`NotSoldOut` while the pool has tickets,
    /// `LimitReached` for a user at the limit), or answers the user's entry still waiting.
    fn waitlist_join<'a>(
        &'a self,
        sale_id: &'a SaleId,
        waitlist_id: WaitlistId,
        user_id: UserId,
    ) -> BoxFuture<'a, StoreResult<WaitlistAnswer>>;

    fn waitlist_entry<'a>(
        &'a self,
        sale_id: &'a SaleId,
        waitlist_id: &'a WaitlistId,
    ) -> BoxFuture<'a, StoreResult<Option<WaitlistEntry>>>;

    /// The user leaves the waitlist (an entry already offered keeps its reservation).
    fn waitlist_withdraw<'a>(
        &'a self,
        sale_id: &'a SaleId,
        waitlist_id: &'a WaitlistId,
        user_id: &'a UserId,
    ) -> BoxFuture<'a, StoreResult<WaitlistEntry>>;

    /// Round trips made to a store across a network so far (`None` for the embedded store):
    /// `/metrics` shows it, so calls per reservation can be measured.
    fn round_trips(&self) -> Option<u64> {
        None
    }

    /// Answers whether the store can serve: `/readyz`.
    fn ping(&self) -> BoxFuture<'_, StoreResult<()>>;
}
