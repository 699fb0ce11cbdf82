//! The ledger: the global truth of every sale, as a deterministic state machine.
//!
//! Per sale it holds the pool, the node leases, every reservation with its state and deadline,
//! each user's active count and the idempotency keys. Every operation takes `now`, decides,
//! records its decision as [`Event`]s in `out` and applies them through [`Ledger::apply`] — the
//! one function that changes state, which replay calls too. The embedded store runs it under one
//! lock; the Redis store's Lua scripts implement the same rules.
//!
//! Accounting, per sale: `pool + leased + reserved + paid == total`, where `leased` is the sum of
//! the live leases' unsold tickets. The API's `available` is `pool + leased`.

use std::collections::{BTreeSet, HashMap};

use crate::clock::UnixMs;
use crate::event::{Event, LeaseId};
use crate::ids::{IdempotencyKey, NodeId, ReservationId, SaleId, UserId};
use crate::reservation::{Reservation, ReservationState};
use crate::sale::{SaleSpec, SaleView};

/// Most sales one store holds. Each sale costs a node a batcher task and metrics series, so the
/// bound keeps both finite; raise it with care.
pub const SALES_MAX: usize = 1_024;

/// The domain's refusals. Each maps to one status and error code of API.md in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("no such sale")]
    SaleNotFound,
    #[error("a sale with this id already exists")]
    SaleExists,
    #[error("this store already holds {SALES_MAX} sales")]
    TooManySales,
    #[error("the lease was taken back; the node must lease again")]
    LeaseLost,
    #[error("no such reservation")]
    ReservationNotFound,
    #[error("the reservation belongs to another user")]
    Forbidden,
    #[error("the reservation has expired")]
    Expired,
    #[error("the reservation was cancelled")]
    Cancelled,
    #[error("the reservation is already paid")]
    AlreadyPaid,
}

/// What a lease request got. `granted` may be 0 (the pool is empty); `lease` is 0 then unless
/// the node already held a live lease, and `deadline` means nothing (the held lease keeps its
/// own, which only `renew` moves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    pub lease: LeaseId,
    pub granted: u64,
    pub deadline: UnixMs,
}

/// One reservation request inside a batch. The node makes the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveItem {
    pub id: ReservationId,
    pub user_id: UserId,
    pub idempotency_key: Option<IdempotencyKey>,
}

/// The answer to one item of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// A ticket of the lease became this reservation.
    Reserved(Reservation),
    /// The idempotency key was seen before: the earlier reservation, no ticket taken.
    Replayed(Reservation),
    /// The user already holds `per_user_limit` tickets; no ticket taken.
    LimitReached,
    /// The lease has no ticket left for this item (the node's count was ahead of the store's).
    NoStock,
}

#[derive(Debug, Clone)]
struct Lease {
    node: NodeId,
    remaining: u64,
    deadline: UnixMs,
}

#[derive(Debug, Clone)]
struct Book {
    spec: SaleSpec,
    pool: u64,
    leased: u64,
    reserved: u64,
    paid: u64,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
    /// Tickets each user holds (reserved or paid); users at zero are removed.
    active: HashMap<UserId, u32>,
    idempotency: HashMap<(UserId, IdempotencyKey), ReservationId>,
    /// Deadlines of `reserved` reservations, earliest first: the reaper's index.
    due: BTreeSet<(UnixMs, ReservationId)>,
}

impl Book {
    fn view(&self) -> SaleView {
        SaleView {
            spec: self.spec.clone(),
            available: self.pool + self.leased,
            reserved: self.reserved,
            paid: self.paid,
        }
    }
}

/// Replay found an event that does not fit the state: the journal is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event does not apply: {0}")]
pub struct ApplyError(pub String);

#[derive(Debug, Clone, Default)]
pub struct Ledger {
    books: HashMap<SaleId, Book>,
    reservations: HashMap<ReservationId, Reservation>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    // ----- queries -----

    pub fn sale(&self, id: &SaleId) -> Option<SaleView> {
        self.books.get(id).map(Book::view)
    }

    /// All sales, ordered by id so listings are stable.
    pub fn sales(&self) -> Vec<SaleView> {
        let mut v: Vec<SaleView> = self.books.values().map(Book::view).collect();
        v.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        v
    }

    pub fn reservation(&self, id: &ReservationId) -> Option<&Reservation> {
        self.reservations.get(id)
    }

    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    pub fn find_idempotent(
        &self,
        sale_id: &SaleId,
        user_id: &UserId,
        key: &IdempotencyKey,
    ) -> Option<&Reservation> {
        let book = self.books.get(sale_id)?;
        let id = book.idempotency.get(&(user_id.clone(), key.clone()))?;
        self.reservations.get(id)
    }

    /// Tickets a user holds in a sale (reserved or paid).
    pub fn active_of(&self, sale_id: &SaleId, user_id: &UserId) -> u32 {
        self.books
            .get(sale_id)
            .and_then(|b| b.active.get(user_id).copied())
            .unwrap_or(0)
    }

    /// The earliest deadline of a `reserved` reservation, for the reaper's pacing.
    pub fn next_due(&self) -> Option<UnixMs> {
        self.books
            .values()
            .filter_map(|b| b.due.first().map(|(t, _)| *t))
            .min()
    }

    // ----- operations: decide, then record and apply events -----

    pub fn create_sale(
        &mut self,
        spec: SaleSpec,
        now: UnixMs,
        out: &mut Vec<Event>,
    ) -> Result<SaleView, LedgerError> {
        if self.books.contains_key(&spec.id) {
            return Err(LedgerError::SaleExists);
        }
        if self.books.len() >= SALES_MAX {
            return Err(LedgerError::TooManySales);
        }
        let id = spec.id.clone();
        self.record(Event::SaleCreated { spec, at: now }, out);
        Ok(self.books[&id].view())
    }

    /// Leases up to `want` tickets to `node` until `now + lease_ms`. `held` is the lease the
    /// node believes it holds (0: none). If that lease is live and the node's, it is extended
    /// (same id); otherwise a new lease id is issued. Any other lease recorded for this node id
    /// belongs to an earlier process of the same name (restarted, or paused and replaced): it is
    /// closed into the pool first, since no live process counts on its tickets. Nothing is
    /// recorded when there is nothing to grant, so a sold-out sale's re-checks cost no event.
    #[allow(clippy::too_many_arguments)]
    pub fn lease(
        &mut self,
        sale_id: &SaleId,
        node: &NodeId,
        held: LeaseId,
        want: u64,
        lease_ms: i64,
        now: UnixMs,
        out: &mut Vec<Event>,
    ) -> Result<LeaseGrant, LedgerError> {
        let book = self.books.get(sale_id).ok_or(LedgerError::SaleNotFound)?;
        let held_live = held != 0
            && book
                .leases
                .get(&held)
                .is_some_and(|l| &l.node == node && l.deadline > now);
        let held = if held_live { held } else { 0 };
        let mut orphans: Vec<(LeaseId, u64)> = book
            .leases
            .iter()
            .filter(|(id, l)| &l.node == node && **id != held)
            .map(|(id, l)| (*id, l.remaining))
            .collect();
        orphans.sort_unstable();
        for (lease, tickets) in orphans {
            let ev = Event::LeaseReturned {
                sale_id: sale_id.clone(),
                lease,
                tickets,
                closed: true,
            };
            self.record(ev, out);
        }
        let book = &self.books[sale_id];
        let granted = want.min(book.pool);
        if granted == 0 {
            return Ok(LeaseGrant {
                lease: held,
                granted: 0,
                deadline: now,
            });
        }
        let lease = if held != 0 { held } else { book.next_lease };
        let deadline = now.plus_ms(lease_ms);
        self.record(
            Event::LeaseGranted {
                sale_id: sale_id.clone(),
                lease,
                node: node.clone(),
                tickets: granted,
                deadline,
            },
            out,
        );
        Ok(LeaseGrant {
            lease,
            granted,
            deadline,
        })
    }

    /// Extends a live lease. A lease past its deadline is lost even if not yet reclaimed: the
    /// node may have been paused, and another may already count on those tickets.
    pub fn renew(
        &mut self,
        sale_id: &SaleId,
        lease: LeaseId,
        lease_ms: i64,
        now: UnixMs,
        out: &mut Vec<Event>,
    ) -> Result<UnixMs, LedgerError> {
        self.live_lease(sale_id, lease, now)?;
        let deadline = now.plus_ms(lease_ms);
        self.record(
            Event::LeaseRenewed {
                sale_id: sale_id.clone(),
                lease,
                deadline,
            },
            out,
        );
        Ok(deadline)
    }

    /// Gives `tickets` unsold tickets of a lease back to the pool (at most what it holds);
    /// `close` ends the lease. Returns how many went back.
    pub fn release(
        &mut self,
        sale_id: &SaleId,
        lease: LeaseId,
        tickets: u64,
        close: bool,
        out: &mut Vec<Event>,
    ) -> Result<u64, LedgerError> {
        let book = self.books.get(sale_id).ok_or(LedgerError::SaleNotFound)?;
        let held = book.leases.get(&lease).ok_or(LedgerError::LeaseLost)?;
        let tickets = if close {
            held.remaining
        } else {
            tickets.min(held.remaining)
        };
        if tickets == 0 && !close {
            return Ok(0);
        }
        self.record(
            Event::LeaseReturned {
                sale_id: sale_id.clone(),
                lease,
                tickets,
                closed: close,
            },
            out,
        );
        Ok(tickets)
    }

    /// Commits a batch of reservations against one lease, in order, answering each item. The
    /// per-user limit and the idempotency key are checked in the same step as the deduction.
    pub fn reserve_batch(
        &mut self,
        sale_id: &SaleId,
        lease: LeaseId,
        items: &[ReserveItem],
        now: UnixMs,
        out: &mut Vec<Event>,
    ) -> Result<Vec<ReserveOutcome>, LedgerError> {
        self.live_lease(sale_id, lease, now)?;
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let outcome = self.reserve_one(sale_id, lease, item, now, out);
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    fn reserve_one(
        &mut self,
        sale_id: &SaleId,
        lease: LeaseId,
        item: &ReserveItem,
        now: UnixMs,
        out: &mut Vec<Event>,
    ) -> ReserveOutcome {
        let book = &self.books[sale_id];
        if let Some(key) = &item.idempotency_key {
            if let Some(id) = book.idempotency.get(&(item.user_id.clone(), key.clone())) {
                return ReserveOutcome::Replayed(self.reservations[id].clone());
            }
        }
        let active = book.active.get(&item.user_id).copied().unwrap_or(0);
        if active >= book.spec.per_user_limit {
            return ReserveOutcome::LimitReached;
        }
        if book.leases[&lease].remaining == 0 {
            return ReserveOutcome::NoStock;
        }
        debug_assert!(
            !self.reservations.contains_key(&item.id),
            "reservation id reused"
        );
        let reservation = Reservation {
            id: item.id.clone(),
            sale_id: sale_id.clone(),
            user_id: item.user_id.clone(),
            state: ReservationState::Reserved,
            created_at: now,
            expires_at: now.plus_ms(book.spec.hold_ms()),
            paid_at: None,
            updated_at: now,
        };
        self.record(
            Event::Reserved {
                reservation: reservation.clone(),
                lease,
                idempotency_key: item.idempotency_key.clone(),
            },
            out,
        );
        ReserveOutcome::Reserved(reservation)
    }

    /// Pays a reservation. Paying a paid one again changes nothing. A hold whose deadline has
    /// passed expires here (recorded) even if the reaper has not reached it yet.
    pub fn pay(
        &mut self,
        id: &ReservationId,
        user_id: &UserId,
        now: UnixMs,
        out: &mut Vec<Event>,
    ) -> Result<Reservation, LedgerError> {
        let r = self.owned_reservation(id, user_id)?;
        match r.state {
            ReservationState::Paid => return Ok(r.clone()),
            ReservationState::Cancelled => return Err(LedgerError::Cancelled),
            ReservationState::Expired => return Err(LedgerError::Expired),
            ReservationState::Reserved => {}
        }
        let sale_id = r.sale_id.clone();
        if r.expires_at <= now {
            self.record_expiry(&sale_id, id, now, out);
            return Err(LedgerError::Expired);
        }
        self.record(
            Event::Paid {
                sale_id,
                id: id.clone(),
                at: now,
            },
            out,
        );
        Ok(self.reservations[id].clone())
    }

    /// Cancels a reservation and puts its ticket back on sale. Cancelling again changes nothing.
    pub fn cancel(
        &mut self,
        id: &ReservationId,
        user_id: &UserId,
        now: UnixMs,
        out: &mut Vec<Event>,
    ) -> Result<Reservation, LedgerError> {
        let r = self.owned_reservation(id, user_id)?;
        match r.state {
            ReservationState::Cancelled => return Ok(r.clone()),
            ReservationState::Paid => return Err(LedgerError::AlreadyPaid),
            ReservationState::Expired => return Err(LedgerError::Expired),
            ReservationState::Reserved => {}
        }
        let sale_id = r.sale_id.clone();
        if r.expires_at <= now {
            self.record_expiry(&sale_id, id, now, out);
            return Err(LedgerError::Expired);
        }
        self.record(
            Event::Cancelled {
                sale_id,
                id: id.clone(),
                at: now,
            },
            out,
        );
        Ok(self.reservations[id].clone())
    }

    /// Expires up to `max` due holds, earliest first, and returns how many. Idempotent: a hold
    /// already expired, paid or cancelled is not in the index.
    pub fn expire_due(&mut self, now: UnixMs, max: usize, out: &mut Vec<Event>) -> usize {
        let mut due: Vec<(SaleId, ReservationId)> = Vec::new();
        for (sale_id, book) in &self.books {
            for (deadline, id) in &book.due {
                if *deadline > now || due.len() >= max {
                    break;
                }
                due.push((sale_id.clone(), id.clone()));
            }
        }
        for (sale_id, id) in &due {
            self.record_expiry(sale_id, id, now, out);
        }
        due.len()
    }

    /// Takes back every lease past its deadline, returning its unsold tickets to the pool.
    pub fn reclaim_lapsed(&mut self, now: UnixMs, out: &mut Vec<Event>) -> usize {
        self.reclaim_where(|l| l.deadline <= now, out)
    }

    /// Takes back every lease. The embedded store calls this when it opens: the process that
    /// held those leases is gone, and its in-memory allotments with it.
    pub fn reclaim_all(&mut self, out: &mut Vec<Event>) -> usize {
        self.reclaim_where(|_| true, out)
    }

    fn reclaim_where(&mut self, pred: impl Fn(&Lease) -> bool, out: &mut Vec<Event>) -> usize {
        let mut lapsed: Vec<(SaleId, LeaseId, u64)> = Vec::new();
        for (sale_id, book) in &self.books {
            for (id, l) in &book.leases {
                if pred(l) {
                    lapsed.push((sale_id.clone(), *id, l.remaining));
                }
            }
        }
        lapsed.sort();
        for (sale_id, lease, tickets) in &lapsed {
            let ev = Event::LeaseReturned {
                sale_id: sale_id.clone(),
                lease: *lease,
                tickets: *tickets,
                closed: true,
            };
            self.record(ev, out);
        }
        lapsed.len()
    }

    // ----- helpers -----

    fn live_lease(&self, sale_id: &SaleId, lease: LeaseId, now: UnixMs) -> Result<(), LedgerError> {
        let book = self.books.get(sale_id).ok_or(LedgerError::SaleNotFound)?;
        match book.leases.get(&lease) {
            Some(l) if l.deadline > now => Ok(()),
            _ => Err(LedgerError::LeaseLost),
        }
    }

    fn owned_reservation(
        &self,
        id: &ReservationId,
        user_id: &UserId,
    ) -> Result<&Reservation, LedgerError> {
        let r = self
            .reservations
            .get(id)
            .ok_or(LedgerError::ReservationNotFound)?;
        if &r.user_id != user_id {
            return Err(LedgerError::Forbidden);
        }
        Ok(r)
    }

    fn record_expiry(
        &mut self,
        sale_id: &SaleId,
        id: &ReservationId,
        now: UnixMs,
        out: &mut Vec<Event>,
    ) {
        let ev = Event::Expired {
            sale_id: sale_id.clone(),
            id: id.clone(),
            at: now,
        };
        self.record(ev, out);
    }

    /// Applies an event the ledger itself just decided, and keeps it for the caller.
    fn record(&mut self, ev: Event, out: &mut Vec<Event>) {
        if let Err(e) = self.apply(&ev) {
            // The operation checked everything apply checks; failing here is a bug in this file.
            panic!("ledger decided an event it cannot apply: {e}: {ev:?}");
        }
        out.push(ev);
    }

    // ----- the one place state changes -----

    /// Applies one event. Used for the ledger's own decisions and for replay; refuses an event
    /// that does not fit (a damaged journal) without changing anything.
    pub fn apply(&mut self, ev: &Event) -> Result<(), ApplyError> {
        let err = |m: &str| ApplyError(m.to_string());
        match ev {
            Event::SaleCreated { spec, .. } => {
                if self.books.contains_key(&spec.id) {
                    return Err(err("sale exists"));
                }
                self.books.insert(spec.id.clone(), new_book(spec.clone()));
            }
            Event::LeaseGranted {
                sale_id,
                lease,
                node,
                tickets,
                deadline,
            } => {
                let book = self.books.get_mut(sale_id).ok_or_else(|| err("no sale"))?;
                if *tickets > book.pool || *lease == 0 {
                    return Err(err("lease grant exceeds the pool"));
                }
                let l = book.leases.entry(*lease).or_insert_with(|| Lease {
                    node: node.clone(),
                    remaining: 0,
                    deadline: *deadline,
                });
                l.remaining += tickets;
                l.deadline = *deadline;
                book.pool -= tickets;
                book.leased += tickets;
                book.next_lease = book.next_lease.max(lease.saturating_add(1));
            }
            Event::LeaseRenewed {
                sale_id,
                lease,
                deadline,
            } => {
                let book = self.books.get_mut(sale_id).ok_or_else(|| err("no sale"))?;
                let l = book.leases.get_mut(lease).ok_or_else(|| err("no lease"))?;
                l.deadline = *deadline;
            }
            Event::LeaseReturned {
                sale_id,
                lease,
                tickets,
                closed,
            } => {
                let book = self.books.get_mut(sale_id).ok_or_else(|| err("no sale"))?;
                let l = book.leases.get_mut(lease).ok_or_else(|| err("no lease"))?;
                if *tickets > l.remaining || (*closed && *tickets != l.remaining) {
                    return Err(err("lease return does not match its remaining tickets"));
                }
                l.remaining -= tickets;
                book.leased -= tickets;
                book.pool += tickets;
                if *closed {
                    book.leases.remove(lease);
                }
            }
            Event::Reserved {
                reservation: r,
                lease,
                idempotency_key,
            } => {
                if self.reservations.contains_key(&r.id) {
                    return Err(err("reservation exists"));
                }
                let book = self
                    .books
                    .get_mut(&r.sale_id)
                    .ok_or_else(|| err("no sale"))?;
                let l = book.leases.get_mut(lease).ok_or_else(|| err("no lease"))?;
                if l.remaining == 0 {
                    return Err(err("lease has no ticket left"));
                }
                l.remaining -= 1;
                book.leased -= 1;
                book.reserved += 1;
                *book.active.entry(r.user_id.clone()).or_insert(0) += 1;
                if let Some(key) = idempotency_key {
                    book.idempotency
                        .insert((r.user_id.clone(), key.clone()), r.id.clone());
                }
                book.due.insert((r.expires_at, r.id.clone()));
                self.reservations.insert(r.id.clone(), r.clone());
            }
            Event::Paid { id, at, .. } => {
                let r = self.reserved_mut(id)?;
                r.state = ReservationState::Paid;
                r.paid_at = Some(*at);
                r.updated_at = *at;
                let key = (r.expires_at, r.id.clone());
                let sale_id = r.sale_id.clone();
                let book = self.books.get_mut(&sale_id).ok_or_else(|| err("no sale"))?;
                book.due.remove(&key);
                book.reserved -= 1;
                book.paid += 1;
            }
            Event::Cancelled { id, at, .. } => {
                self.release_hold(id, *at, ReservationState::Cancelled)?
            }
            Event::Expired { id, at, .. } => {
                self.release_hold(id, *at, ReservationState::Expired)?
            }
        }
        Ok(())
    }

    fn reserved_mut(&mut self, id: &ReservationId) -> Result<&mut Reservation, ApplyError> {
        let r = self
            .reservations
            .get_mut(id)
            .ok_or_else(|| ApplyError("no reservation".into()))?;
        if r.state != ReservationState::Reserved {
            return Err(ApplyError(format!(
                "reservation is {}, not reserved",
                r.state.as_str()
            )));
        }
        Ok(r)
    }

    /// A held ticket goes back to the pool: cancellation or expiry.
    fn release_hold(
        &mut self,
        id: &ReservationId,
        at: UnixMs,
        state: ReservationState,
    ) -> Result<(), ApplyError> {
        let r = self.reserved_mut(id)?;
        r.state = state;
        r.updated_at = at;
        let (sale_id, user_id, key) = (
            r.sale_id.clone(),
            r.user_id.clone(),
            (r.expires_at, r.id.clone()),
        );
        let book = self
            .books
            .get_mut(&sale_id)
            .ok_or_else(|| ApplyError("no sale".into()))?;
        book.due.remove(&key);
        book.reserved -= 1;
        book.pool += 1;
        match book.active.get_mut(&user_id) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                book.active.remove(&user_id);
            }
        }
        Ok(())
    }

    /// Checks the accounting of every sale; used by tests and by the embedded store after replay.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, b) in &self.books {
            let leased: u64 = b.leases.values().map(|l| l.remaining).sum();
            if leased != b.leased {
                return Err(format!(
                    "{id}: leased {} but leases hold {leased}",
                    b.leased
                ));
            }
            if b.pool + b.leased + b.reserved + b.paid != b.spec.total {
                return Err(format!(
                    "{id}: pool {} + leased {} + reserved {} + paid {} != total {}",
                    b.pool, b.leased, b.reserved, b.paid, b.spec.total
                ));
            }
            let mut reserved = 0;
            let mut paid = 0;
            let mut active: HashMap<&UserId, u32> = HashMap::new();
            for r in self.reservations.values().filter(|r| &r.sale_id == id) {
                match r.state {
                    ReservationState::Reserved => reserved += 1,
                    ReservationState::Paid => paid += 1,
                    _ => {}
                }
                if r.state.holds_ticket() {
                    *active.entry(&r.user_id).or_insert(0) += 1;
                }
            }
            if (reserved, paid) != (b.reserved, b.paid) {
                return Err(format!("{id}: counts disagree with reservations"));
            }
            if b.due.len() as u64 != b.reserved {
                return Err(format!(
                    "{id}: due index holds {} of {} holds",
                    b.due.len(),
                    b.reserved
                ));
            }
            for (user, n) in &active {
                if *n > b.spec.per_user_limit {
                    return Err(format!("{id}: user {user} holds {n} > limit"));
                }
                if b.active.get(*user) != Some(n) {
                    return Err(format!("{id}: active count of {user} disagrees"));
                }
            }
            if active.len() != b.active.len() {
                return Err(format!("{id}: active map has stale users"));
            }
        }
        Ok(())
    }
}

fn new_book(spec: SaleSpec) -> Book {
    Book {
        pool: spec.total,
        spec,
        leased: 0,
        reserved: 0,
        paid: 0,
        leases: HashMap::new(),
        next_lease: 1,
        active: HashMap::new(),
        idempotency: HashMap::new(),
        due: BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixMs = UnixMs(1_700_000_000_000);
    const LEASE_MS: i64 = 5_000;
    /// Every sale of these tests holds a ticket for 2 s.
    const HOLD_MS: i64 = 2_000;

    fn sid() -> SaleId {
        SaleId::parse("s1").unwrap()
    }
    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }
    fn node(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }
    fn rid(s: &str) -> ReservationId {
        ReservationId::parse(s).unwrap()
    }
    fn at(ms: i64) -> UnixMs {
        T0.plus_ms(ms)
    }

    /// A sale of `total` tickets, `limit` per user, with node "a" leasing `leased` at T0.
    struct Fx {
        l: Ledger,
        ev: Vec<Event>,
        lease: LeaseId,
    }

    fn setup(total: u64, limit: u32, leased: u64) -> Fx {
        let mut l = Ledger::new();
        let mut ev = Vec::new();
        let spec = SaleSpec::new(sid(), None, total, Some(limit), Some(2), T0).unwrap();
        l.create_sale(spec, T0, &mut ev).unwrap();
        let lease = l
            .lease(&sid(), &node("a"), 0, leased, LEASE_MS, T0, &mut ev)
            .unwrap()
            .lease;
        Fx { l, ev, lease }
    }

    impl Fx {
        /// A lease request by node `who`, which believes it holds `held`.
        fn grant(&mut self, who: &str, held: LeaseId, want: u64, now: UnixMs) -> LeaseGrant {
            self.l
                .lease(&sid(), &node(who), held, want, LEASE_MS, now, &mut self.ev)
                .unwrap()
        }

        /// Commits one reservation against `lease`, whatever the fixture's lease is.
        fn reserve_on(
            &mut self,
            lease: LeaseId,
            id: &str,
            who: &str,
            now: UnixMs,
        ) -> Result<ReserveOutcome, LedgerError> {
            let item = ReserveItem {
                id: rid(id),
                user_id: user(who),
                idempotency_key: None,
            };
            let out = self
                .l
                .reserve_batch(&sid(), lease, &[item], now, &mut self.ev)?;
            Ok(out.into_iter().next().unwrap())
        }

        /// Reserves one ticket on the fixture's lease; `key` is an idempotency key.
        fn reserve(
            &mut self,
            id: &str,
            who: &str,
            key: Option<&str>,
            now: UnixMs,
        ) -> Result<ReserveOutcome, LedgerError> {
            let item = ReserveItem {
                id: rid(id),
                user_id: user(who),
                idempotency_key: key.map(|k| IdempotencyKey::parse(k).unwrap()),
            };
            let lease = self.lease;
            let out = self
                .l
                .reserve_batch(&sid(), lease, &[item], now, &mut self.ev)?;
            Ok(out.into_iter().next().unwrap())
        }

        fn take(&mut self, id: &str, who: &str) -> Reservation {
            match self.reserve(id, who, None, T0) {
                Ok(ReserveOutcome::Reserved(r)) => r,
                other => panic!("expected a reservation, got {other:?}"),
            }
        }

        fn pay(&mut self, id: &str, who: &str, now: UnixMs) -> Result<Reservation, LedgerError> {
            self.l.pay(&rid(id), &user(who), now, &mut self.ev)
        }

        fn cancel(&mut self, id: &str, who: &str, now: UnixMs) -> Result<Reservation, LedgerError> {
            self.l.cancel(&rid(id), &user(who), now, &mut self.ev)
        }

        fn view(&self) -> SaleView {
            self.l.sale(&sid()).unwrap()
        }

        fn counts(&self) -> (u64, u64, u64) {
            let v = self.view();
            (v.available, v.reserved, v.paid)
        }

        fn state(&self, id: &str) -> ReservationState {
            self.l.reservation(&rid(id)).unwrap().state
        }

        /// Runs `f` and answers how many events it recorded, checking the invariants after.
        fn events_of(&mut self, f: impl FnOnce(&mut Fx)) -> usize {
            let before = self.ev.len();
            f(self);
            self.l.check_invariants().unwrap();
            self.ev.len() - before
        }
    }

    /// A comparable picture of a ledger: its sales and reservations, ordered.
    fn snapshot(l: &Ledger) -> (Vec<SaleView>, Vec<Reservation>) {
        let mut rs: Vec<Reservation> = l.reservations().cloned().collect();
        rs.sort_by(|a, b| a.id.cmp(&b.id));
        (l.sales(), rs)
    }

    #[test]
    fn sold_out_after_last_ticket() {
        let mut f = setup(2, 5, 10);
        let items: Vec<ReserveItem> = ["r1", "r2", "r3"]
            .iter()
            .enumerate()
            .map(|(i, id)| ReserveItem {
                id: rid(id),
                user_id: user(&format!("u{i}")),
                idempotency_key: None,
            })
            .collect();
        let out =
            f.l.reserve_batch(&sid(), f.lease, &items, T0, &mut f.ev)
                .unwrap();
        assert!(matches!(out[0], ReserveOutcome::Reserved(_)));
        assert!(matches!(out[1], ReserveOutcome::Reserved(_)));
        assert_eq!(out[2], ReserveOutcome::NoStock);
        assert!(f.l.reservation(&rid("r3")).is_none());
        assert_eq!(f.counts(), (0, 2, 0));
        // The holder's re-lease keeps its lease but grants nothing; another node gets none.
        let lease = f.lease;
        let g = f.grant("a", lease, 5, at(10));
        assert_eq!((g.lease, g.granted), (lease, 0));
        let g = f.grant("b", 0, 5, at(10));
        assert_eq!((g.lease, g.granted), (0, 0));
        f.l.check_invariants().unwrap();
    }

    #[test]
    fn limit_reached_counts_reserved_and_paid() {
        let mut f = setup(10, 2, 10);
        f.take("r1", "u1");
        f.pay("r1", "u1", at(1)).unwrap();
        f.take("r2", "u1");
        assert_eq!(f.l.active_of(&sid(), &user("u1")), 2);
        let n = f.events_of(|f| {
            assert_eq!(
                f.reserve("r3", "u1", None, T0),
                Ok(ReserveOutcome::LimitReached)
            );
        });
        assert_eq!(n, 0, "a refused item records nothing");
        assert!(f.l.reservation(&rid("r3")).is_none());
        assert_eq!(f.counts(), (8, 1, 1));
        // Another user is not affected; a cancelled hold frees a place under the limit.
        f.take("r4", "u2");
        f.cancel("r2", "u1", at(1)).unwrap();
        assert_eq!(f.l.active_of(&sid(), &user("u1")), 1);
        f.take("r5", "u1");
    }

    #[test]
    fn idempotent_replay_takes_no_ticket() {
        let mut f = setup(10, 1, 10);
        let first = f.reserve("r1", "u1", Some("k1"), T0).unwrap();
        let ReserveOutcome::Reserved(r1) = first else {
            panic!("{first:?}")
        };
        let n = f.events_of(|f| {
            // Replayed even though the user is at the limit: the earlier answer, not a refusal.
            let again = f.reserve("r2", "u1", Some("k1"), at(5)).unwrap();
            assert_eq!(again, ReserveOutcome::Replayed(r1.clone()));
        });
        assert_eq!(n, 0);
        assert!(f.l.reservation(&rid("r2")).is_none());
        assert_eq!(f.counts(), (9, 1, 0));
        let key = IdempotencyKey::parse("k1").unwrap();
        assert_eq!(f.l.find_idempotent(&sid(), &user("u1"), &key), Some(&r1));
        // Keys are per user; and two items of one batch with one key take one ticket.
        let item = |id: &str| ReserveItem {
            id: rid(id),
            user_id: user("u2"),
            idempotency_key: Some(key.clone()),
        };
        let out =
            f.l.reserve_batch(&sid(), f.lease, &[item("r3"), item("r4")], T0, &mut f.ev)
                .unwrap();
        let ReserveOutcome::Reserved(r3) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(out[1], ReserveOutcome::Replayed(r3.clone()));
        assert_eq!(f.counts(), (8, 2, 0));
        // A replay answers the reservation as it is now.
        f.cancel("r1", "u1", at(1)).unwrap();
        match f.reserve("r5", "u1", Some("k1"), at(2)).unwrap() {
            ReserveOutcome::Replayed(r) => assert_eq!(r.state, ReservationState::Cancelled),
            other => panic!("{other:?}"),
        }
        f.l.check_invariants().unwrap();
    }

    #[test]
    fn pay_after_deadline_expires() {
        let mut f = setup(5, 5, 5);
        f.take("r1", "u1");
        f.take("r2", "u1");
        assert_eq!(
            f.pay("r1", "u1", at(HOLD_MS - 1)).unwrap().state,
            ReservationState::Paid
        );
        let n = f.events_of(|f| {
            assert_eq!(f.pay("r2", "u1", at(HOLD_MS)), Err(LedgerError::Expired));
        });
        assert_eq!(n, 1, "the expiry is recorded");
        assert!(matches!(f.ev.last(), Some(Event::Expired { id, .. }) if *id == rid("r2")));
        assert_eq!(f.state("r2"), ReservationState::Expired);
        assert_eq!(f.counts(), (4, 0, 1));
        assert_eq!(f.l.active_of(&sid(), &user("u1")), 1);
        assert_eq!(f.l.next_due(), None);
        let r1 = f.l.reservation(&rid("r1")).unwrap();
        assert_eq!(r1.paid_at, Some(at(HOLD_MS - 1)));
    }

    #[test]
    fn cancel_returns_ticket_to_pool() {
        // Node a leases 2 of 3; the cancelled ticket goes to the pool, not back to a's lease.
        let mut f = setup(3, 5, 2);
        f.take("r1", "u1");
        assert_eq!(f.counts(), (2, 1, 0));
        let r = f.cancel("r1", "u1", at(1)).unwrap();
        assert_eq!(
            (r.state, r.updated_at),
            (ReservationState::Cancelled, at(1))
        );
        assert_eq!(f.counts(), (3, 0, 0));
        assert_eq!(f.l.active_of(&sid(), &user("u1")), 0);
        assert_eq!(f.l.next_due(), None);
        let g = f.grant("b", 0, 10, at(2));
        assert_eq!(
            g.granted, 2,
            "the pool holds the untouched ticket and the cancelled one"
        );
        // Cancelling again changes nothing.
        let n = f.events_of(|f| {
            assert_eq!(f.cancel("r1", "u1", at(3)).unwrap(), r);
        });
        assert_eq!(n, 0);
    }

    #[test]
    fn cancel_after_deadline_expires() {
        let mut f = setup(3, 5, 3);
        f.take("r1", "u1");
        assert_eq!(f.cancel("r1", "u1", at(HOLD_MS)), Err(LedgerError::Expired));
        assert_eq!(f.state("r1"), ReservationState::Expired);
        assert_eq!(f.counts(), (3, 0, 0));
        f.l.check_invariants().unwrap();
    }

    #[test]
    fn lapsed_lease_is_refused_and_reclaimed() {
        let mut f = setup(10, 5, 4);
        assert!(matches!(
            f.reserve("r1", "u1", None, at(LEASE_MS - 1)),
            Ok(ReserveOutcome::Reserved(_))
        ));
        // At its deadline the lease is lost, even before the reaper reclaims it.
        let n = f.events_of(|f| {
            assert_eq!(
                f.reserve("r2", "u2", None, at(LEASE_MS)),
                Err(LedgerError::LeaseLost)
            );
            let lease = f.lease;
            assert_eq!(
                f.l.renew(&sid(), lease, LEASE_MS, at(LEASE_MS), &mut f.ev),
                Err(LedgerError::LeaseLost)
            );
        });
        assert_eq!(n, 0);
        assert!(f.l.reservation(&rid("r2")).is_none());
        assert_eq!(f.l.reclaim_lapsed(at(LEASE_MS - 1), &mut f.ev), 0);
        assert_eq!(f.l.reclaim_lapsed(at(LEASE_MS), &mut f.ev), 1);
        assert_eq!(
            f.l.reclaim_lapsed(at(LEASE_MS), &mut f.ev),
            0,
            "reclaiming is idempotent"
        );
        assert_eq!(f.counts(), (9, 1, 0));
        // The 3 unsold tickets are back in the pool: another node can lease all 9.
        let g = f.grant("b", 0, 100, at(LEASE_MS));
        assert_eq!(g.granted, 9);
        assert!(g.lease > f.lease, "lease ids are never reused");
        // A paused node waking with the reclaimed lease is fenced off, whatever its clock says.
        let stale = f.lease;
        assert_eq!(f.reserve("r3", "u3", None, T0), Err(LedgerError::LeaseLost));
        assert_eq!(
            f.l.release(&sid(), stale, 1, false, &mut f.ev),
            Err(LedgerError::LeaseLost)
        );
        // The reservation made under the lease is untouched.
        assert_eq!(f.state("r1"), ReservationState::Reserved);
        f.l.check_invariants().unwrap();
    }

    #[test]
    fn lease_extends_the_held_lease_with_the_same_id() {
        let mut f = setup(10, 5, 3);
        let lease = f.lease;
        let n = f.events_of(|f| {
            let g = f.grant("a", lease, 2, at(1_000));
            assert_eq!(
                g,
                LeaseGrant {
                    lease,
                    granted: 2,
                    deadline: at(1_000 + LEASE_MS)
                }
            );
        });
        assert_eq!(n, 1, "one grant, nothing closed");
        assert_eq!(f.counts(), (10, 0, 0));
        // The old deadline no longer applies.
        assert!(f.reserve("r1", "u1", None, at(LEASE_MS)).is_ok());
        let b = f.grant("b", 0, 4, at(1_000));
        assert_eq!(b.granted, 4, "a holds 5 of the 10; 1 is left in the pool");
        assert_ne!(b.lease, lease);
        // Renewing extends too. At its deadline the lease is lapsed: naming it gets the node a
        // fresh id even before the reaper has reclaimed it, and the lapsed lease is closed on
        // the way, its 4 unsold tickets back in the pool.
        let d =
            f.l.renew(&sid(), lease, LEASE_MS, at(2_000), &mut f.ev)
                .unwrap();
        assert_eq!(d, at(2_000 + LEASE_MS));
        let later = at(2_000 + LEASE_MS);
        let before = f.ev.len();
        let g = f.grant("a", lease, 1, later);
        assert_eq!(g.granted, 1);
        assert!(g.lease > b.lease);
        assert_eq!(
            f.ev[before..],
            [
                Event::LeaseReturned {
                    sale_id: sid(),
                    lease,
                    tickets: 4,
                    closed: true
                },
                Event::LeaseGranted {
                    sale_id: sid(),
                    lease: g.lease,
                    node: node("a"),
                    tickets: 1,
                    deadline: later.plus_ms(LEASE_MS)
                }
            ]
        );
        assert_eq!(
            f.reserve("r2", "u2", None, at(2_000)),
            Err(LedgerError::LeaseLost),
            "the old lease is closed, whatever the caller's clock says"
        );
        assert_eq!(
            f.l.reclaim_lapsed(later, &mut f.ev),
            1,
            "only b's: a's old lease is already closed"
        );
        assert_eq!(f.counts(), (9, 1, 0));
        f.l.check_invariants().unwrap();
    }

    #[test]
    fn another_nodes_lease_id_is_neither_extended_nor_closed() {
        let mut f = setup(10, 5, 3);
        let a = f.lease;
        let before = f.ev.len();
        let g = f.grant("b", a, 2, at(10));
        assert_eq!(g.granted, 2);
        assert!(g.lease > a, "b gets a lease of its own");
        assert_eq!(f.ev.len(), before + 1, "a's lease is not b's to close");
        // a's lease stands, with its tickets and its deadline.
        assert!(matches!(
            f.reserve("r1", "u1", None, at(LEASE_MS - 1)),
            Ok(ReserveOutcome::Reserved(_))
        ));
        assert_eq!(
            f.reserve("r2", "u2", None, at(LEASE_MS)),
            Err(LedgerError::LeaseLost)
        );
        assert!(matches!(
            f.reserve_on(g.lease, "r3", "u3", at(LEASE_MS)),
            Ok(ReserveOutcome::Reserved(_))
        ));
        assert_eq!(f.counts(), (8, 2, 0));
        f.l.check_invariants().unwrap();
    }

    #[test]
    fn restarted_node_with_same_id_gets_a_fresh_lease_and_the_old_share_back() {
        // Node a leases 6 of 10 and sells 2; node b leases 3; 1 is left in the pool.
        let mut f = setup(10, 5, 6);
        f.take("r1", "u1");
        f.take("r2", "u2");
        let old = f.lease;
        let b = f.grant("b", 0, 3, at(10));
        assert_eq!(b.granted, 3);
        // a's process dies with 4 unsold tickets on a live lease. A new process under the same
        // node id holds no lease (held 0) and asks for 5.
        let before = f.ev.len();
        let g = f.grant("a", 0, 5, at(20));
        assert_eq!(
            g.granted, 5,
            "the dead lease's 4 tickets are back in the pool, with the 1 left"
        );
        assert_ne!(g.lease, old, "a fresh lease, not the dead process's");
        assert!(g.lease > b.lease, "lease ids are never reused");
        assert_eq!(g.deadline, at(20 + LEASE_MS));
        assert_eq!(
            f.ev[before..],
            [
                Event::LeaseReturned {
                    sale_id: sid(),
                    lease: old,
                    tickets: 4,
                    closed: true
                },
                Event::LeaseGranted {
                    sale_id: sid(),
                    lease: g.lease,
                    node: node("a"),
                    tickets: 5,
                    deadline: at(20 + LEASE_MS)
                }
            ]
        );
        // The old lease is fenced off though its deadline has not passed: a paused process
        // waking with it sells nothing.
        let n = f.events_of(|f| {
            assert_eq!(
                f.reserve("r3", "u3", None, at(30)),
                Err(LedgerError::LeaseLost)
            );
            assert_eq!(
                f.l.renew(&sid(), old, LEASE_MS, at(30), &mut f.ev),
                Err(LedgerError::LeaseLost)
            );
            assert_eq!(
                f.l.release(&sid(), old, 1, true, &mut f.ev),
                Err(LedgerError::LeaseLost)
            );
        });
        assert_eq!(n, 0);
        // The reservations made under it stand; b's lease is untouched; the new one sells.
        assert_eq!(f.state("r1"), ReservationState::Reserved);
        assert_eq!(f.state("r2"), ReservationState::Reserved);
        assert!(matches!(
            f.reserve_on(b.lease, "r4", "u4", at(30)),
            Ok(ReserveOutcome::Reserved(_))
        ));
        assert!(matches!(
            f.reserve_on(g.lease, "r5", "u5", at(30)),
            Ok(ReserveOutcome::Reserved(_))
        ));
        assert_eq!(f.counts(), (6, 4, 0));
        // The closed lease is not reclaimed a second time when its deadline passes.
        assert_eq!(f.l.reclaim_lapsed(at(LEASE_MS), &mut f.ev), 0);
        f.l.check_invariants().unwrap();
        let mut replayed = Ledger::new();
        for e in &f.ev {
            replayed.apply(e).unwrap();
        }
        assert_eq!(snapshot(&replayed), snapshot(&f.l));
    }

    #[test]
    fn every_other_lease_of_the_node_is_closed_in_id_order() {
        // A journal written before leases were keyed by id may hold several leases of one node.
        let mut f = setup(10, 5, 2);
        for (lease, who, tickets) in [(2, "a", 3), (3, "b", 1), (4, "a", 1)] {
            let ev = Event::LeaseGranted {
                sale_id: sid(),
                lease,
                node: node(who),
                tickets,
                deadline: at(LEASE_MS),
            };
            f.l.apply(&ev).unwrap();
            f.ev.push(ev);
        }
        let mut replayed = Ledger::new();
        for e in &f.ev {
            replayed.apply(e).unwrap();
        }
        // Holding 2, a keeps it and gets the others' tickets back first.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let ga =
            f.l.lease(&sid(), &node("a"), 2, 1, LEASE_MS, at(10), &mut a)
                .unwrap();
        let gb = replayed
            .lease(&sid(), &node("a"), 2, 1, LEASE_MS, at(10), &mut b)
            .unwrap();
        assert_eq!((ga, &a), (gb, &b), "the same decision, event for event");
        assert_eq!((ga.lease, ga.granted), (2, 1));
        let closed = |lease, tickets| Event::LeaseReturned {
            sale_id: sid(),
            lease,
            tickets,
            closed: true,
        };
        assert_eq!(a[..2], [closed(1, 2), closed(4, 1)]);
        assert_eq!(a.len(), 3);
        f.ev.extend(a);
        // A new process (held 0) closes 2 as well; b's lease 3 is never touched.
        let n = f.events_of(|f| {
            let g = f.grant("a", 0, 0, at(20));
            assert_eq!((g.lease, g.granted), (0, 0));
        });
        assert_eq!(n, 1);
        assert_eq!(f.ev.last(), Some(&closed(2, 4)));
        assert!(matches!(
            f.reserve_on(3, "r1", "u1", at(20)),
            Ok(ReserveOutcome::Reserved(_))
        ));
        f.l.check_invariants().unwrap();
    }

    #[test]
    fn zero_grant_with_live_lease_records_nothing() {
        // a holds all 3 tickets; nothing is left in the pool.
        let mut f = setup(3, 5, 3);
        f.take("r1", "u1");
        let lease = f.lease;
        let n = f.events_of(|f| {
            let g = f.grant("a", lease, 5, at(1_000));
            assert_eq!(
                (g.lease, g.granted),
                (lease, 0),
                "the live lease, nothing more"
            );
            let g = f.grant("a", lease, 0, at(1_000));
            assert_eq!((g.lease, g.granted), (lease, 0));
            let g = f.grant("b", 0, 5, at(1_000));
            assert_eq!((g.lease, g.granted), (0, 0));
        });
        assert_eq!(n, 0, "no grant, no extension, nothing closed");
        // Nothing was extended either: the lease lapses at its first deadline.
        assert!(matches!(
            f.reserve("r2", "u2", None, at(LEASE_MS - 1)),
            Ok(ReserveOutcome::Reserved(_))
        ));
        assert_eq!(
            f.reserve("r3", "u3", None, at(LEASE_MS)),
            Err(LedgerError::LeaseLost)
        );
        assert_eq!(f.counts(), (1, 2, 0));
        f.l.check_invariants().unwrap();
    }

    #[test]
    fn zero_grant_still_closes_the_nodes_old_leases() {
        // a sold both tickets of its lease; then a new process of a leases with held 0.
        let mut f = setup(2, 5, 2);
        f.take("r1", "u1");
        f.take("r2", "u2");
        let old = f.lease;
        let n = f.events_of(|f| {
            let g = f.grant("a", 0, 5, at(10));
            assert_eq!((g.lease, g.granted), (0, 0));
        });
        assert_eq!(n, 1);
        assert_eq!(
            f.ev.last(),
            Some(&Event::LeaseReturned {
                sale_id: sid(),
                lease: old,
                tickets: 0,
                closed: true
            })
        );
        assert_eq!(
            f.reserve("r3", "u3", None, at(10)),
            Err(LedgerError::LeaseLost)
        );
        // Nothing left to close the second time.
        let n = f.events_of(|f| {
            let g = f.grant("a", old, 5, at(20));
            assert_eq!((g.lease, g.granted), (0, 0));
        });
        assert_eq!(n, 0);
        assert_eq!(f.counts(), (0, 2, 0));
    }

    #[test]
    fn lease_on_empty_pool_records_nothing() {
        let mut f = setup(2, 5, 2);
        let n = f.events_of(|f| {
            let g = f.grant("b", 0, 5, T0);
            assert_eq!(
                g,
                LeaseGrant {
                    lease: 0,
                    granted: 0,
                    deadline: T0
                }
            );
            let g = f.grant("c", 0, 0, T0);
            assert_eq!((g.lease, g.granted), (0, 0));
        });
        assert_eq!(n, 0);
        // Lease 0 is "no lease": committing against it is refused.
        assert_eq!(f.reserve_on(0, "r1", "u1", T0), Err(LedgerError::LeaseLost));
    }

    #[test]
    fn release_returns_unsold_tickets() {
        let mut f = setup(10, 5, 6);
        f.take("r1", "u1");
        let lease = f.lease;
        assert_eq!(f.l.release(&sid(), lease, 2, false, &mut f.ev), Ok(2));
        assert_eq!(f.l.release(&sid(), lease, 0, false, &mut f.ev), Ok(0));
        let g = f.grant("b", 0, 100, T0);
        assert_eq!(g.granted, 6, "4 never leased and 2 returned");
        // More than the lease holds is capped; closing returns the rest and ends the lease.
        assert_eq!(f.l.release(&sid(), lease, 100, false, &mut f.ev), Ok(3));
        assert_eq!(f.l.release(&sid(), lease, 0, true, &mut f.ev), Ok(0));
        assert_eq!(f.reserve("r2", "u2", None, T0), Err(LedgerError::LeaseLost));
        assert_eq!(f.counts(), (9, 1, 0));
        f.l.check_invariants().unwrap();
    }

    #[test]
    fn expire_due_is_idempotent() {
        let mut f = setup(10, 5, 10);
        for (i, id) in ["r1", "r2", "r3"].iter().enumerate() {
            let now = at(100 * i as i64);
            assert!(matches!(
                f.reserve(id, "u1", None, now),
                Ok(ReserveOutcome::Reserved(_))
            ));
        }
        f.pay("r2", "u1", at(1)).unwrap();
        assert_eq!(f.l.next_due(), Some(at(HOLD_MS)));
        assert_eq!(f.l.expire_due(at(HOLD_MS - 1), 10, &mut f.ev), 0);
        assert_eq!(
            f.l.expire_due(at(HOLD_MS + 500), 0, &mut f.ev),
            0,
            "max bounds the work"
        );
        // r1 is due, r2 is paid (not a hold any more), r3 is not due yet.
        assert_eq!(f.l.expire_due(at(HOLD_MS + 150), 10, &mut f.ev), 1);
        let n = f.events_of(|f| {
            assert_eq!(f.l.expire_due(at(HOLD_MS + 150), 10, &mut f.ev), 0);
        });
        assert_eq!(n, 0);
        assert_eq!(f.l.next_due(), Some(at(HOLD_MS + 200)));
        assert_eq!(f.l.expire_due(at(HOLD_MS + 10_000), 10, &mut f.ev), 1);
        assert_eq!(f.l.next_due(), None);
        let states: Vec<_> = ["r1", "r2", "r3"].iter().map(|id| f.state(id)).collect();
        use ReservationState::*;
        assert_eq!(states, [Expired, Paid, Expired]);
        assert_eq!(f.counts(), (9, 0, 1));
        assert_eq!(f.l.expire_due(at(HOLD_MS + 20_000), 10, &mut f.ev), 0);
    }

    #[test]
    fn paid_cancelled_expired_are_final() {
        let mut f = setup(10, 5, 10);
        f.take("paid", "u1");
        f.take("cancelled", "u1");
        f.take("expired", "u1");
        let paid = f.pay("paid", "u1", at(1)).unwrap();
        f.cancel("cancelled", "u1", at(1)).unwrap();
        assert_eq!(f.l.expire_due(at(HOLD_MS), 10, &mut f.ev), 1);
        let before = snapshot(&f.l);
        let n = f.events_of(|f| {
            let late = at(10 * HOLD_MS);
            assert_eq!(
                f.pay("paid", "u1", late),
                Ok(paid.clone()),
                "paying again is a no-op"
            );
            assert_eq!(f.cancel("paid", "u1", late), Err(LedgerError::AlreadyPaid));
            assert_eq!(f.pay("cancelled", "u1", late), Err(LedgerError::Cancelled));
            assert_eq!(f.pay("expired", "u1", late), Err(LedgerError::Expired));
            assert_eq!(f.cancel("expired", "u1", late), Err(LedgerError::Expired));
            assert_eq!(
                f.cancel("cancelled", "u1", late).map(|r| r.state),
                Ok(ReservationState::Cancelled)
            );
            assert_eq!(f.l.expire_due(late, 10, &mut f.ev), 0);
        });
        assert_eq!(n, 0);
        assert_eq!(snapshot(&f.l), before);
    }

    #[test]
    fn another_users_reservation_is_forbidden() {
        let mut f = setup(10, 5, 10);
        f.take("r1", "u1");
        let before = snapshot(&f.l);
        let n = f.events_of(|f| {
            assert_eq!(f.pay("r1", "u2", at(1)), Err(LedgerError::Forbidden));
            assert_eq!(f.cancel("r1", "u2", at(1)), Err(LedgerError::Forbidden));
            // Even past the deadline a stranger's call does not expire it.
            assert_eq!(f.pay("r1", "u2", at(HOLD_MS)), Err(LedgerError::Forbidden));
        });
        assert_eq!(n, 0);
        assert_eq!(snapshot(&f.l), before);
    }

    #[test]
    fn unknown_ids_are_not_found() {
        let mut f = setup(10, 5, 10);
        let n = f.events_of(|f| {
            assert_eq!(
                f.pay("nope", "u1", T0),
                Err(LedgerError::ReservationNotFound)
            );
            assert_eq!(
                f.cancel("nope", "u1", T0),
                Err(LedgerError::ReservationNotFound)
            );
            let other = SaleId::parse("s2").unwrap();
            let ev = &mut f.ev;
            assert_eq!(
                f.l.lease(&other, &node("a"), 0, 1, LEASE_MS, T0, ev),
                Err(LedgerError::SaleNotFound)
            );
            assert_eq!(
                f.l.lease(&other, &node("a"), 1, 1, LEASE_MS, T0, ev),
                Err(LedgerError::SaleNotFound)
            );
            assert_eq!(
                f.l.renew(&other, 1, LEASE_MS, T0, ev),
                Err(LedgerError::SaleNotFound)
            );
            assert_eq!(
                f.l.release(&other, 1, 1, true, ev),
                Err(LedgerError::SaleNotFound)
            );
            assert_eq!(
                f.l.reserve_batch(&other, 1, &[], T0, ev),
                Err(LedgerError::SaleNotFound)
            );
            assert_eq!(
                f.l.release(&sid(), 99, 1, true, ev),
                Err(LedgerError::LeaseLost)
            );
            assert_eq!(
                f.l.renew(&sid(), 99, LEASE_MS, T0, ev),
                Err(LedgerError::LeaseLost)
            );
            assert!(f.l.sale(&other).is_none());
        });
        assert_eq!(n, 0);
    }

    #[test]
    fn sale_ids_are_unique_and_bounded() {
        let mut l = Ledger::new();
        let mut ev = Vec::new();
        let spec = |i: usize| {
            SaleSpec::new(
                SaleId::parse(&format!("s{i}")).unwrap(),
                None,
                1,
                None,
                None,
                T0,
            )
            .unwrap()
        };
        for i in 0..SALES_MAX {
            l.create_sale(spec(i), T0, &mut ev).unwrap();
        }
        assert_eq!(
            l.create_sale(spec(0), T0, &mut ev),
            Err(LedgerError::SaleExists)
        );
        assert_eq!(
            l.create_sale(spec(SALES_MAX), T0, &mut ev),
            Err(LedgerError::TooManySales)
        );
        assert_eq!(ev.len(), SALES_MAX);
        assert_eq!(l.sales().len(), SALES_MAX);
    }

    #[test]
    fn replay_rebuilds_the_same_state() {
        let mut f = setup(20, 2, 8);
        f.reserve("r1", "u1", Some("k"), T0).unwrap();
        f.take("r2", "u2");
        f.take("r3", "u2");
        f.take("r4", "u3");
        f.pay("r2", "u2", at(10)).unwrap();
        f.cancel("r3", "u2", at(20)).unwrap();
        f.grant("b", 0, 4, at(30));
        f.l.renew(&sid(), f.lease, LEASE_MS, at(40), &mut f.ev)
            .unwrap();
        f.l.release(&sid(), f.lease, 1, false, &mut f.ev).unwrap();
        f.l.expire_due(at(HOLD_MS), 10, &mut f.ev);
        f.l.reclaim_lapsed(at(LEASE_MS + 30), &mut f.ev);
        f.l.check_invariants().unwrap();

        let mut replayed = Ledger::new();
        for e in &f.ev {
            replayed.apply(e).unwrap();
        }
        replayed.check_invariants().unwrap();
        assert_eq!(snapshot(&replayed), snapshot(&f.l));
        assert_eq!(replayed.next_due(), f.l.next_due());
        for u in ["u1", "u2", "u3"] {
            assert_eq!(
                replayed.active_of(&sid(), &user(u)),
                f.l.active_of(&sid(), &user(u))
            );
        }
        let key = IdempotencyKey::parse("k").unwrap();
        assert_eq!(
            replayed.find_idempotent(&sid(), &user("u1"), &key),
            f.l.find_idempotent(&sid(), &user("u1"), &key)
        );
        // Both decide alike from here on: same lease ids, same grants, same events.
        let now = at(LEASE_MS + 40);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let ga =
            f.l.lease(&sid(), &node("c"), 0, 3, LEASE_MS, now, &mut a)
                .unwrap();
        let gb = replayed
            .lease(&sid(), &node("c"), 0, 3, LEASE_MS, now, &mut b)
            .unwrap();
        assert_eq!((ga, &a), (gb, &b));
        let mut a2 = Vec::new();
        let mut b2 = Vec::new();
        f.l.reclaim_all(&mut a2);
        replayed.reclaim_all(&mut b2);
        assert_eq!(a2, b2);
        assert_eq!(snapshot(&replayed), snapshot(&f.l));
    }

    #[test]
    fn apply_refuses_events_that_do_not_fit() {
        let mut f = setup(5, 5, 2);
        f.take("held", "u1");
        f.take("paid", "u1");
        f.pay("paid", "u1", at(1)).unwrap();
        let lease_b = f.grant("b", 0, 1, T0).lease;
        let template = f.l.reservation(&rid("held")).unwrap().clone();
        let spec = f.view().spec;
        let reserved = |id: &str, lease: LeaseId| Event::Reserved {
            reservation: Reservation {
                id: rid(id),
                ..template.clone()
            },
            lease,
            idempotency_key: None,
        };
        let other = SaleId::parse("s2").unwrap();
        let s = sid();
        let bad = [
            Event::SaleCreated { spec, at: T0 },
            Event::LeaseGranted {
                sale_id: other.clone(),
                lease: 9,
                node: node("a"),
                tickets: 1,
                deadline: T0,
            },
            Event::LeaseGranted {
                sale_id: s.clone(),
                lease: 9,
                node: node("c"),
                tickets: 3,
                deadline: T0,
            },
            Event::LeaseGranted {
                sale_id: s.clone(),
                lease: 0,
                node: node("c"),
                tickets: 1,
                deadline: T0,
            },
            Event::LeaseRenewed {
                sale_id: s.clone(),
                lease: 9,
                deadline: T0,
            },
            Event::LeaseReturned {
                sale_id: s.clone(),
                lease: 9,
                tickets: 0,
                closed: true,
            },
            Event::LeaseReturned {
                sale_id: s.clone(),
                lease: lease_b,
                tickets: 2,
                closed: false,
            },
            Event::LeaseReturned {
                sale_id: s.clone(),
                lease: lease_b,
                tickets: 0,
                closed: true,
            },
            reserved("held", lease_b),
            reserved("new", 9),
            reserved("new", f.lease),
            Event::Paid {
                sale_id: s.clone(),
                id: rid("nope"),
                at: T0,
            },
            Event::Paid {
                sale_id: s.clone(),
                id: rid("paid"),
                at: T0,
            },
            Event::Cancelled {
                sale_id: s.clone(),
                id: rid("paid"),
                at: T0,
            },
            Event::Expired {
                sale_id: s.clone(),
                id: rid("paid"),
                at: T0,
            },
        ];
        let before = snapshot(&f.l);
        for ev in &bad {
            assert!(f.l.apply(ev).is_err(), "applied {ev:?}");
            assert_eq!(
                snapshot(&f.l),
                before,
                "a refused event changed the state: {ev:?}"
            );
            f.l.check_invariants().unwrap();
        }
        // Final states refuse every further transition.
        f.cancel("held", "u1", at(2)).unwrap();
        for ev in [
            Event::Paid {
                sale_id: s.clone(),
                id: rid("held"),
                at: T0,
            },
            Event::Cancelled {
                sale_id: s.clone(),
                id: rid("held"),
                at: T0,
            },
            Event::Expired {
                sale_id: s.clone(),
                id: rid("held"),
                at: T0,
            },
        ] {
            assert!(f.l.apply(&ev).is_err(), "applied {ev:?}");
        }
        f.l.check_invariants().unwrap();
    }
}
