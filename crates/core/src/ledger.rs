//! The ledger: the global truth of every sale, as a deterministic state machine.
//!
//! Per sale it holds the pool, every reservation with its state and deadline, each user's
//! active count and the idempotency keys. Every operation takes `now`, decides,
//! records its decision as [`Event`]s in `out` and applies them through [`Ledger::apply`] — the
//! one function that changes state, which replay calls too. The embedded store runs it under one
//! lock; the Redis store's Lua scripts implement the same rules.
//!
//! Accounting, per sale: `pool + leased + reserved + paid == total`. Every reservation is decided
//! against the pool, so `sold_out` (an empty pool) is the truth for the whole sale, whichever
//! node asks. `leased` is only ever non-zero after replaying a journal written by the first
//! version, whose nodes leased chunks of the pool ("allotments"); those legacy leases are read,
//! never granted, and the store takes them all back when it opens or once they lapse. The
//! API's `available` is `pool + leased`.

use std::collections::{BTreeSet, HashMap};

use crate::clock::UnixMs;
use crate::event::{Event, LeaseId};
use crate::ids::{IdempotencyKey, QueueId, ReservationId, SaleId, UserId, WaitlistId};
use crate::line::{
    Queue, QueueEntry, WaitState, Waitlist, WaitlistEntry, QUEUE_ENTRIES_MAX, WAITLIST_ENTRIES_MAX,
};
use crate::reservation::{Reservation, ReservationState};
use crate::sale::{SaleSpec, SaleView};

/// Most sales one store holds. Each sale costs a node a batcher task and metrics series, so the
/// bound keeps both finite; raise it with care.
pub const SALES_MAX: usize = 1_024;

/// The domain's refusals. Each maps to one status and error code of docs/API.md in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("no such sale")]
    SaleNotFound,
    #[error("a sale with this id already exists")]
    SaleExists,
    #[error("this store already holds {SALES_MAX} sales")]
    TooManySales,
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
    #[error("this sale has no waiting room")]
    NoQueue,
    #[error("tickets of this sale are still available: reserve one instead")]
    NotSoldOut,
    #[error("this user already holds as many tickets of this sale as it allows")]
    LimitReached,
    #[error("the line is full")]
    LineFull,
    #[error("no waitlist entry has this id")]
    WaitlistNotFound,
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
    /// A ticket of the pool became this reservation.
    Reserved(Reservation),
    /// The idempotency key was seen before: the earlier reservation, no ticket taken.
    Replayed(Reservation),
    /// The user already holds `per_user_limit` tickets; no ticket taken.
    LimitReached,
    /// The pool had no ticket left when this item was decided: sold out, truly.
    NoStock,
}

/// A lease of the first version (see the module doc): read from old journals, never granted.
#[derive(Debug, Clone)]
struct Lease {
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
    /// Tickets each user holds (reserved or paid); users at zero are removed.
    active: HashMap<UserId, u32>,
    idempotency: HashMap<(UserId, IdempotencyKey), ReservationId>,
    /// Deadlines of `reserved` reservations, earliest first: the reaper's index.
    due: BTreeSet<(UnixMs, ReservationId)>,
    queue: Queue,
    waitlist: Waitlist,
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

    /// Whether any first-version lease is still open (see the module doc).
    pub fn has_leases(&self) -> bool {
        self.books.values().any(|b| !b.leases.is_empty())
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

    /// Commits a batch of reservations against the pool, in order, answering each item. The
    /// per-user limit and the idempotency key are checked in the same step as the deduction.
    pub fn reserve_batch(
        &mut self,
        sale_id: &SaleId,
        items: &[ReserveItem],
        now: UnixMs,
        out: &mut Vec<Event>,
    ) -> Result<Vec<ReserveOutcome>, LedgerError> {
        if !self.books.contains_key(sale_id) {
            return Err(LedgerError::SaleNotFound);
        }
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let outcome = self.reserve_one(sale_id, item, now, out);
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    fn reserve_one(
        &mut self,
        sale_id: &SaleId,
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
        if book.pool == 0 {
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
                lease: 0,
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
                sale_id: sale_id.clone(),
                id: id.clone(),
                at: now,
            },
            out,
        );
        self.offer_freed(&sale_id, now, out);
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
        // Each expiry may also record an offer to the waitlist: the pass stops at `max` events
        // too, so one pass never records more than its caller made room for.
        let start = out.len();
        let mut expired = 0;
        for (sale_id, id) in &due {
            if out.len() - start >= max {
                break;
            }
            self.record_expiry(sale_id, id, now, out);
            expired += 1;
        }
        expired
    }

    /// Takes back every (legacy) lease past its deadline, returning its unsold tickets to the pool.
    pub fn reclaim_lapsed(&mut self, now: UnixMs, out: &mut Vec<Event>) -> usize {
        self.reclaim_where(|l| l.deadline <= now, Some(now), out)
    }

    /// Takes back every (legacy) lease. The embedded store calls this when it opens: a journal
    /// of the first version may hold leases, and the process that held them is gone.
    pub fn reclaim_all(&mut self, out: &mut Vec<Event>) -> usize {
        self.reclaim_where(|_| true, None, out)
    }

    /// Takes back the leases `pred` picks; with `now`, their tickets go to the waitlist first
    /// (without, at the store's opening, nobody can be waiting: a waitlist entry needs an
    /// empty pool and no lease).
    fn reclaim_where(
        &mut self,
        pred: impl Fn(&Lease) -> bool,
        now: Option<UnixMs>,
        out: &mut Vec<Event>,
    ) -> usize {
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
            if let Some(now) = now {
                self.offer_freed(sale_id, now, out);
            }
        }
        lapsed.len()
    }

    // ----- the lines: waiting-room queue and waitlist -----

    /// Puts a user in the sale's waiting-room queue (`true`: a new entry), or answers the
    /// user's entry if it still counts: not yet admitted, or admitted and its window open. A
    /// user whose admission lapsed joins again at the back.
    pub fn queue_join(
        &mut self,
        sale_id: &SaleId,
        queue_id: QueueId,
        user_id: UserId,
        now: UnixMs,
        out: &mut Vec<Event>,
    ) -> Result<(QueueEntry, bool), LedgerError> {
        let book = self.books.get(sale_id).ok_or(LedgerError::SaleNotFound)?;
        let spec = book.spec.queue.clone().ok_or(LedgerError::NoQueue)?;
        let opens_at = book.spec.opens_at;
        if let Some(existing) = self.queue_entry_of_user(sale_id, &user_id, now) {
            let lapsed = existing.rank.is_some_and(|r| spec.lapsed(opens_at, r, now));
            if !lapsed {
                return Ok((existing, false));
            }
        }
        let book = &self.books[sale_id];
        if book.queue.len() >= QUEUE_ENTRIES_MAX {
            return Err(LedgerError::LineFull);
        }
        debug_assert!(!book.queue.contains(&queue_id), "queue id reused");
        self.record(
            Event::QueueJoined {
                sale_id: sale_id.clone(),
                queue_id: queue_id.clone(),
                user_id,
                at: now,
            },
            out,
        );
        let entry = self
            .queue_entry(sale_id, &queue_id, now)?
            .expect("the entry just joined");
        Ok((entry, true))
    }

    fn queue_entry_of_user(
        &mut self,
        sale_id: &SaleId,
        user_id: &UserId,
        now: UnixMs,
    ) -> Option<QueueEntry> {
        let id = self.books.get(sale_id)?.queue.of_user(user_id)?.clone();
        self.queue_entry(sale_id, &id, now).ok().flatten()
    }

    /// A queue entry with its place in line (once the sale has opened at `now`: the first
    /// question after the opening draws the pre-queue's order).
    pub fn queue_entry(
        &mut self,
        sale_id: &SaleId,
        queue_id: &QueueId,
        now: UnixMs,
    ) -> Result<Option<QueueEntry>, LedgerError> {
        let book = self
            .books
            .get_mut(sale_id)
            .ok_or(LedgerError::SaleNotFound)?;
        let opened = now >= book.spec.opens_at;
        if opened {
            book.queue.draw();
        }
        Ok(book.queue.entry(queue_id, opened))
    }

    /// Puts a user on a sold-out sale's waitlist (`true`: a new entry), or answers the user's
    /// entry if it is still waiting.
    pub fn waitlist_join(
        &mut self,
        sale_id: &SaleId,
        waitlist_id: WaitlistId,
        user_id: UserId,
        now: UnixMs,
        out: &mut Vec<Event>,
    ) -> Result<(WaitlistEntry, bool), LedgerError> {
        let book = self.books.get(sale_id).ok_or(LedgerError::SaleNotFound)?;
        if let Some(e) = book
            .waitlist
            .of_user(&user_id)
            .and_then(|id| book.waitlist.entry(id))
        {
            if e.state == WaitState::Waiting {
                return Ok((e, false));
            }
        }
        if book.pool + book.leased > 0 {
            return Err(LedgerError::NotSoldOut);
        }
        if book.active.get(&user_id).copied().unwrap_or(0) >= book.spec.per_user_limit {
            return Err(LedgerError::LimitReached);
        }
        if book.waitlist.len() >= WAITLIST_ENTRIES_MAX {
            return Err(LedgerError::LineFull);
        }
        debug_assert!(!book.waitlist.contains(&waitlist_id), "waitlist id reused");
        self.record(
            Event::WaitlistJoined {
                sale_id: sale_id.clone(),
                waitlist_id: waitlist_id.clone(),
                user_id,
                state: WaitState::Waiting,
                at: now,
            },
            out,
        );
        let e = self.books[sale_id]
            .waitlist
            .entry(&waitlist_id)
            .expect("the entry just joined");
        Ok((e, true))
    }

    pub fn waitlist_entry(
        &self,
        sale_id: &SaleId,
        waitlist_id: &WaitlistId,
    ) -> Result<Option<WaitlistEntry>, LedgerError> {
        let book = self.books.get(sale_id).ok_or(LedgerError::SaleNotFound)?;
        Ok(book.waitlist.entry(waitlist_id))
    }

    /// The user leaves the waitlist. Withdrawing again changes nothing; an entry already
    /// offered keeps its reservation (cancel that instead).
    pub fn waitlist_withdraw(
        &mut self,
        sale_id: &SaleId,
        waitlist_id: &WaitlistId,
        user_id: &UserId,
        now: UnixMs,
        out: &mut Vec<Event>,
    ) -> Result<WaitlistEntry, LedgerError> {
        let e = self
            .waitlist_entry(sale_id, waitlist_id)?
            .ok_or(LedgerError::WaitlistNotFound)?;
        if &e.user_id != user_id {
            return Err(LedgerError::Forbidden);
        }
        if e.state != WaitState::Waiting {
            return Ok(e);
        }
        self.record(
            Event::WaitlistWithdrawn {
                sale_id: sale_id.clone(),
                waitlist_id: waitlist_id.clone(),
                at: now,
            },
            out,
        );
        Ok(self.books[sale_id]
            .waitlist
            .entry(waitlist_id)
            .expect("the entry exists"))
    }

    /// Tickets in the pool go to the waitlist, first waiting entry first, each as a hold in
    /// that buyer's name; a buyer already at the limit is taken out of line instead. Called in
    /// the same step as every change that frees a ticket, so a freed ticket never sits in the
    /// pool while someone waits. Public for the journal's salvage, which settles holds from
    /// the orders table and must hand their tickets on the same way.
    pub fn offer_freed(&mut self, sale_id: &SaleId, now: UnixMs, out: &mut Vec<Event>) {
        loop {
            let Some(book) = self.books.get(sale_id) else {
                return;
            };
            if book.pool == 0 {
                return;
            }
            let Some((wid, user)) = book.waitlist.head() else {
                return;
            };
            let (wid, user) = (wid.clone(), user.clone());
            let at_limit = book.active.get(&user).copied().unwrap_or(0) >= book.spec.per_user_limit;
            let ev = if at_limit {
                Event::WaitlistWithdrawn {
                    sale_id: sale_id.clone(),
                    waitlist_id: wid,
                    at: now,
                }
            } else {
                Event::WaitlistOffered {
                    reservation: Reservation {
                        id: offer_id(&wid, sale_id),
                        sale_id: sale_id.clone(),
                        user_id: user,
                        state: ReservationState::Reserved,
                        created_at: now,
                        expires_at: now.plus_ms(book.spec.hold_ms()),
                        paid_at: None,
                        updated_at: now,
                    },
                    waitlist_id: wid,
                }
            };
            self.record(ev, out);
        }
    }

    // ----- helpers -----

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
        self.offer_freed(sale_id, now, out);
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
                tickets,
                deadline,
                ..
            } => {
                let book = self.books.get_mut(sale_id).ok_or_else(|| err("no sale"))?;
                if *tickets > book.pool || *lease == 0 {
                    return Err(err("lease grant exceeds the pool"));
                }
                let l = book.leases.entry(*lease).or_insert_with(|| Lease {
                    remaining: 0,
                    deadline: *deadline,
                });
                l.remaining += tickets;
                l.deadline = *deadline;
                book.pool -= tickets;
                book.leased += tickets;
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
            } => self.insert_reservation(r, idempotency_key.as_ref(), *lease)?,
            Event::Restored {
                reservation: r,
                idempotency_key,
            } => self.insert_reservation(r, idempotency_key.as_ref(), 0)?,
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
            Event::QueueJoined {
                sale_id,
                queue_id,
                user_id,
                at,
            } => {
                let book = self.books.get_mut(sale_id).ok_or_else(|| err("no sale"))?;
                let Some(q) = &book.spec.queue else {
                    return Err(err("the sale has no queue"));
                };
                if book.queue.contains(queue_id) {
                    return Err(err("queue entry exists"));
                }
                let opens = book.spec.opens_at;
                // Once a later arrival exists the pre-queue is closed, even if the clock
                // stepped back across the opening: the line's order never changes again.
                let pre = *at < opens && !book.queue.has_later();
                let floor = (!pre).then(|| q.admitted_through(opens, *at));
                book.queue
                    .join(queue_id.clone(), user_id.clone(), *at, floor);
            }
            Event::WaitlistJoined {
                sale_id,
                waitlist_id,
                user_id,
                state,
                ..
            } => {
                let book = self.books.get_mut(sale_id).ok_or_else(|| err("no sale"))?;
                if book.waitlist.contains(waitlist_id) {
                    return Err(err("waitlist entry exists"));
                }
                if offer_id_checked(waitlist_id, sale_id).is_none() {
                    return Err(err("a waitlist id too long to name its offer"));
                }
                book.waitlist
                    .push(waitlist_id.clone(), user_id.clone(), *state);
            }
            Event::WaitlistOffered {
                waitlist_id,
                reservation: r,
            } => {
                let book = self.books.get(&r.sale_id).ok_or_else(|| err("no sale"))?;
                let fits = book
                    .waitlist
                    .head()
                    .is_some_and(|(head, user)| head == waitlist_id && user == &r.user_id)
                    && Some(&r.id) == offer_id_checked(waitlist_id, &r.sale_id).as_ref()
                    && r.state == ReservationState::Reserved;
                if !fits {
                    return Err(err("the offer is not for the waitlist's first entry"));
                }
                self.insert_reservation(r, None, 0)?;
                let book = self.books.get_mut(&r.sale_id).expect("checked above");
                book.waitlist.settle(waitlist_id, WaitState::Offered);
            }
            Event::WaitlistWithdrawn {
                sale_id,
                waitlist_id,
                ..
            } => {
                let book = self.books.get_mut(sale_id).ok_or_else(|| err("no sale"))?;
                if !book.waitlist.settle(waitlist_id, WaitState::Withdrawn) {
                    return Err(err("the waitlist entry is not waiting"));
                }
            }
        }
        Ok(())
    }

    /// A new reservation in the state it carries (`Reserved`: a new hold; `Restored`: a
    /// compacted record in any state). A ticket it holds comes from `lease` (first-version
    /// journals) or, with 0, from the pool. Checks everything before it changes anything.
    fn insert_reservation(
        &mut self,
        r: &Reservation,
        key: Option<&IdempotencyKey>,
        lease: LeaseId,
    ) -> Result<(), ApplyError> {
        let err = |m: &str| ApplyError(m.to_string());
        if self.reservations.contains_key(&r.id) {
            return Err(err("reservation exists"));
        }
        let book = self
            .books
            .get_mut(&r.sale_id)
            .ok_or_else(|| err("no sale"))?;
        if r.state.holds_ticket() {
            if lease == 0 {
                if book.pool == 0 {
                    return Err(err("the pool has no ticket left"));
                }
                book.pool -= 1;
            } else {
                // A first-version journal: the ticket came from a node's lease.
                let l = book.leases.get_mut(&lease).ok_or_else(|| err("no lease"))?;
                if l.remaining == 0 {
                    return Err(err("lease has no ticket left"));
                }
                l.remaining -= 1;
                book.leased -= 1;
            }
            *book.active.entry(r.user_id.clone()).or_insert(0) += 1;
            if r.state == ReservationState::Reserved {
                book.reserved += 1;
                book.due.insert((r.expires_at, r.id.clone()));
            } else {
                book.paid += 1;
            }
        }
        if let Some(key) = key {
            book.idempotency
                .insert((r.user_id.clone(), key.clone()), r.id.clone());
        }
        self.reservations.insert(r.id.clone(), r.clone());
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

    /// The live state as events that rebuild it: each sale, then each reservation as it stands
    /// (`Restored`, with its idempotency key), in the order they were made. What a compacted
    /// journal holds: one record per sale and per reservation, whatever their history was.
    /// First-version leases are not in it (the store takes them back before it compacts).
    pub fn snapshot_events(&self) -> Vec<Event> {
        let mut books: Vec<&Book> = self.books.values().collect();
        books.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        let mut keys: HashMap<&ReservationId, &IdempotencyKey> = HashMap::new();
        for b in &books {
            for ((_, key), id) in &b.idempotency {
                keys.insert(id, key);
            }
        }
        let mut out: Vec<Event> = books
            .iter()
            .map(|b| Event::SaleCreated {
                spec: b.spec.clone(),
                at: b.spec.opens_at,
            })
            .collect();
        let mut rs: Vec<&Reservation> = self.reservations.values().collect();
        rs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out.extend(rs.into_iter().map(|r| Event::Restored {
            reservation: r.clone(),
            idempotency_key: keys.get(&r.id).map(|k| (*k).clone()),
        }));
        // The lines, in their order, with the times they were joined at (a later arrival's
        // rank follows from its time and the ranks before it).
        for b in &books {
            let sale_id = &b.spec.id;
            for (queue_id, user_id, at) in b.queue.joins() {
                out.push(Event::QueueJoined {
                    sale_id: sale_id.clone(),
                    queue_id,
                    user_id,
                    at,
                });
            }
            for (waitlist_id, user_id, state) in b.waitlist.entries() {
                out.push(Event::WaitlistJoined {
                    sale_id: sale_id.clone(),
                    waitlist_id,
                    user_id,
                    state,
                    at: b.spec.opens_at,
                });
            }
        }
        out
    }

    /// Sales and reservations held: what a compacted journal's record count would be.
    pub fn records(&self) -> usize {
        let lines: u64 = self
            .books
            .values()
            .map(|b| b.queue.len() + b.waitlist.len())
            .sum();
        self.books.len() + self.reservations.len() + lines as usize
    }

    /// Checks the accounting of every sale; used by tests and by the embedded store after replay.
    pub fn check_invariants(&self) -> Result<(), String> {
        // One pass over the reservations, grouped by sale (a pass per sale would be
        // sales × reservations when a store holds many sales).
        #[derive(Default)]
        struct Seen<'a> {
            reserved: u64,
            paid: u64,
            active: HashMap<&'a UserId, u32>,
        }
        let mut seen: HashMap<&SaleId, Seen> = HashMap::with_capacity(self.books.len());
        for r in self.reservations.values() {
            if !self.books.contains_key(&r.sale_id) {
                return Err(format!("reservation {} of an unknown sale", r.id));
            }
            let s = seen.entry(&r.sale_id).or_default();
            match r.state {
                ReservationState::Reserved => s.reserved += 1,
                ReservationState::Paid => s.paid += 1,
                _ => {}
            }
            if r.state.holds_ticket() {
                *s.active.entry(&r.user_id).or_insert(0) += 1;
            }
        }
        let none = Seen::default();
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
            let s = seen.get(id).unwrap_or(&none);
            if (s.reserved, s.paid) != (b.reserved, b.paid) {
                return Err(format!("{id}: counts disagree with reservations"));
            }
            if b.due.len() as u64 != b.reserved {
                return Err(format!(
                    "{id}: due index holds {} of {} holds",
                    b.due.len(),
                    b.reserved
                ));
            }
            for (user, n) in &s.active {
                if *n > b.spec.per_user_limit {
                    return Err(format!("{id}: user {user} holds {n} > limit"));
                }
                if b.active.get(*user) != Some(n) {
                    return Err(format!("{id}: active count of {user} disagrees"));
                }
            }
            if s.active.len() != b.active.len() {
                return Err(format!("{id}: active map has stale users"));
            }
            if b.pool > 0 && b.waitlist.waiting() > 0 {
                return Err(format!(
                    "{id}: {} tickets in the pool while {} buyers wait for one",
                    b.pool,
                    b.waitlist.waiting()
                ));
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
        active: HashMap::new(),
        idempotency: HashMap::new(),
        due: BTreeSet::new(),
        queue: Queue::default(),
        waitlist: Waitlist::default(),
    }
}

/// The reservation a waitlist entry's offer becomes: `WAITLIST_ID.SALE_ID`, one per entry.
fn offer_id_checked(waitlist_id: &WaitlistId, sale_id: &SaleId) -> Option<ReservationId> {
    ReservationId::parse(&format!("{waitlist_id}.{sale_id}")).ok()
}

/// The reservation a waitlist entry's offer becomes (for an entry the ledger accepted: its id
/// fits; see `waitlist_join`).
pub fn offer_id(waitlist_id: &WaitlistId, sale_id: &SaleId) -> ReservationId {
    ReservationId::parse(&format!("{waitlist_id}.{sale_id}"))
        .expect("a waitlist id and a sale id make a reservation id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

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

    /// A sale of `total` tickets, `limit` per user.
    struct Fx {
        l: Ledger,
        ev: Vec<Event>,
    }

    fn setup(total: u64, limit: u32) -> Fx {
        let mut l = Ledger::new();
        let mut ev = Vec::new();
        let spec = SaleSpec::new(sid(), None, total, Some(limit), Some(2), T0).unwrap();
        l.create_sale(spec, T0, &mut ev).unwrap();
        Fx { l, ev }
    }

    impl Fx {
        /// Reserves one ticket; `key` is an idempotency key.
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
            let out = self.l.reserve_batch(&sid(), &[item], now, &mut self.ev)?;
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
        let mut f = setup(2, 5);
        let items: Vec<ReserveItem> = ["r1", "r2", "r3"]
            .iter()
            .enumerate()
            .map(|(i, id)| ReserveItem {
                id: rid(id),
                user_id: user(&format!("u{i}")),
                idempotency_key: None,
            })
            .collect();
        let out = f.l.reserve_batch(&sid(), &items, T0, &mut f.ev).unwrap();
        assert!(matches!(out[0], ReserveOutcome::Reserved(_)));
        assert!(matches!(out[1], ReserveOutcome::Reserved(_)));
        assert_eq!(out[2], ReserveOutcome::NoStock);
        assert!(f.l.reservation(&rid("r3")).is_none());
        assert_eq!(f.counts(), (0, 2, 0));
        // Every later batch, from any node, finds the same empty pool and records nothing.
        let n = f.events_of(|f| {
            assert_eq!(
                f.reserve("r4", "u9", None, at(10)),
                Ok(ReserveOutcome::NoStock)
            );
        });
        assert_eq!(n, 0);
        // An unknown sale is refused whole.
        let other = SaleId::parse("s9").unwrap();
        assert_eq!(
            f.l.reserve_batch(&other, &items, T0, &mut f.ev),
            Err(LedgerError::SaleNotFound)
        );
    }

    #[test]
    fn limit_reached_counts_reserved_and_paid() {
        let mut f = setup(10, 2);
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
        let mut f = setup(10, 1);
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
            f.l.reserve_batch(&sid(), &[item("r3"), item("r4")], T0, &mut f.ev)
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
        let mut f = setup(5, 5);
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
        let mut f = setup(3, 5);
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
        // The cancelled ticket sells again: all three are for sale.
        for (id, u) in [("r2", "u2"), ("r3", "u3"), ("r4", "u4")] {
            f.take(id, u);
        }
        assert_eq!(
            f.reserve("r5", "u5", None, at(2)),
            Ok(ReserveOutcome::NoStock)
        );
        // Cancelling again changes nothing.
        let n = f.events_of(|f| {
            assert_eq!(f.cancel("r1", "u1", at(3)).unwrap(), r);
        });
        assert_eq!(n, 0);
    }

    #[test]
    fn cancel_after_deadline_expires() {
        let mut f = setup(3, 5);
        f.take("r1", "u1");
        assert_eq!(f.cancel("r1", "u1", at(HOLD_MS)), Err(LedgerError::Expired));
        assert_eq!(f.state("r1"), ReservationState::Expired);
        assert_eq!(f.counts(), (3, 0, 0));
        f.l.check_invariants().unwrap();
    }

    #[test]
    fn expire_due_is_idempotent() {
        let mut f = setup(10, 5);
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
        let mut f = setup(10, 5);
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
        let mut f = setup(10, 5);
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
        let mut f = setup(10, 5);
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
                f.l.reserve_batch(&other, &[], T0, ev),
                Err(LedgerError::SaleNotFound)
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

    /// A compacted journal (one record per sale and reservation) rebuilds the same state as
    /// the history it replaces, and decides alike from there.
    #[test]
    fn snapshot_events_rebuild_the_same_state() {
        let mut f = setup(6, 2);
        f.reserve("r1", "u1", Some("k"), T0).unwrap();
        f.take("r2", "u2");
        f.take("r3", "u2");
        f.take("r4", "u3");
        f.pay("r2", "u2", at(10)).unwrap();
        f.cancel("r3", "u2", at(20)).unwrap();
        f.l.expire_due(at(HOLD_MS), 10, &mut f.ev);
        f.take("r5", "u4");
        let snap = f.l.snapshot_events();
        assert_eq!(snap.len(), f.l.records());
        assert!(
            snap.len() < f.ev.len(),
            "{} records for {} events",
            snap.len(),
            f.ev.len()
        );
        let mut l = Ledger::new();
        for e in &snap {
            l.apply(e).unwrap();
        }
        l.check_invariants().unwrap();
        assert_eq!(snapshot(&l), snapshot(&f.l));
        assert_eq!(l.next_due(), f.l.next_due());
        let key = IdempotencyKey::parse("k").unwrap();
        assert_eq!(
            l.find_idempotent(&sid(), &user("u1"), &key).map(|r| &r.id),
            Some(&rid("r1"))
        );
        for u in ["u1", "u2", "u3", "u4"] {
            assert_eq!(
                l.active_of(&sid(), &user(u)),
                f.l.active_of(&sid(), &user(u))
            );
        }
        // The same decisions follow from there.
        let items: Vec<ReserveItem> = ["u2", "u4", "u9", "u8"]
            .iter()
            .enumerate()
            .map(|(i, u)| ReserveItem {
                id: rid(&format!("n{i}")),
                user_id: user(u),
                idempotency_key: None,
            })
            .collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let oa =
            f.l.reserve_batch(&sid(), &items, at(HOLD_MS + 1), &mut a)
                .unwrap();
        let ob = l
            .reserve_batch(&sid(), &items, at(HOLD_MS + 1), &mut b)
            .unwrap();
        assert_eq!((oa, a), (ob, b));
        // A restored paid reservation whose ticket the pool no longer has does not apply.
        let extra = Event::Restored {
            reservation: Reservation {
                id: rid("extra"),
                ..l.reservation(&rid("r2")).unwrap().clone()
            },
            idempotency_key: None,
        };
        let mut full = Ledger::new();
        for e in l.snapshot_events() {
            full.apply(&e).unwrap();
        }
        assert_eq!(full.sale(&sid()).unwrap().available, 0);
        assert!(full.apply(&extra).is_err());
    }

    #[test]
    fn replay_rebuilds_the_same_state() {
        let mut f = setup(20, 2);
        f.reserve("r1", "u1", Some("k"), T0).unwrap();
        f.take("r2", "u2");
        f.take("r3", "u2");
        f.take("r4", "u3");
        f.pay("r2", "u2", at(10)).unwrap();
        f.cancel("r3", "u2", at(20)).unwrap();
        f.l.expire_due(at(HOLD_MS), 10, &mut f.ev);
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
        // Both decide alike from here on: same outcomes, same events.
        let now = at(HOLD_MS + 40);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let items = [ReserveItem {
            id: rid("r9"),
            user_id: user("u9"),
            idempotency_key: None,
        }];
        let oa = f.l.reserve_batch(&sid(), &items, now, &mut a).unwrap();
        let ob = replayed.reserve_batch(&sid(), &items, now, &mut b).unwrap();
        assert_eq!((oa, &a), (ob, &b));
        assert_eq!(snapshot(&replayed), snapshot(&f.l));
    }

    /// A journal of the first version: nodes leased chunks, reservations name their lease.
    /// It replays to the same counts, and taking the leases back puts their unsold tickets in
    /// the pool, where every node can sell them.
    #[test]
    fn first_version_journal_replays_and_its_leases_come_back() {
        let spec = SaleSpec::new(sid(), None, 10, Some(5), Some(2), T0).unwrap();
        let lease_of = |lease: LeaseId, tickets: u64| Event::LeaseGranted {
            sale_id: sid(),
            lease,
            node: node("a"),
            tickets,
            deadline: at(LEASE_MS),
        };
        let reserved = |id: &str, lease: LeaseId| Event::Reserved {
            reservation: Reservation {
                id: rid(id),
                sale_id: sid(),
                user_id: user("u1"),
                state: ReservationState::Reserved,
                created_at: T0,
                expires_at: at(HOLD_MS),
                paid_at: None,
                updated_at: T0,
            },
            lease,
            idempotency_key: None,
        };
        let log = [
            Event::SaleCreated { spec, at: T0 },
            lease_of(1, 4),
            lease_of(2, 3),
            reserved("r1", 1),
            reserved("r2", 2),
            Event::LeaseRenewed {
                sale_id: sid(),
                lease: 1,
                deadline: at(2 * LEASE_MS),
            },
            Event::LeaseReturned {
                sale_id: sid(),
                lease: 2,
                tickets: 2,
                closed: true,
            },
            // Written by this version after the upgrade: from the pool.
            reserved("r3", 0),
        ];
        let mut l = Ledger::new();
        for e in &log {
            l.apply(e).unwrap();
        }
        l.check_invariants().unwrap();
        let v = l.sale(&sid()).unwrap();
        assert_eq!((v.available, v.reserved), (7, 3));
        // Lease 1 (3 unsold) is still open: it lapses at its renewed deadline.
        let mut out = Vec::new();
        assert_eq!(l.reclaim_lapsed(at(2 * LEASE_MS - 1), &mut out), 0);
        assert_eq!(l.reclaim_lapsed(at(2 * LEASE_MS), &mut out), 1);
        assert_eq!(
            out,
            [Event::LeaseReturned {
                sale_id: sid(),
                lease: 1,
                tickets: 3,
                closed: true
            }]
        );
        assert_eq!(l.reclaim_all(&mut out), 0, "nothing left to take back");
        // All 7 unsold tickets sell from the pool now; the 8th request is sold out.
        let items: Vec<ReserveItem> = (0..8)
            .map(|i| ReserveItem {
                id: rid(&format!("n{i}")),
                user_id: user(&format!("v{i}")),
                idempotency_key: None,
            })
            .collect();
        let got = l.reserve_batch(&sid(), &items, at(1), &mut out).unwrap();
        let won = got
            .iter()
            .filter(|o| matches!(o, ReserveOutcome::Reserved(_)))
            .count();
        assert_eq!((won, got[7].clone()), (7, ReserveOutcome::NoStock));
        // A reservation naming a lease nobody holds does not apply.
        assert!(l.apply(&reserved("r4", 9)).is_err());
        l.check_invariants().unwrap();
    }

    #[test]
    fn apply_refuses_events_that_do_not_fit() {
        let mut f = setup(5, 5);
        f.take("held", "u1");
        f.take("paid", "u1");
        f.pay("paid", "u1", at(1)).unwrap();
        // A legacy lease of one ticket, as a first-version journal would hold.
        let lease_b = 7;
        f.l.apply(&Event::LeaseGranted {
            sale_id: sid(),
            lease: lease_b,
            node: node("b"),
            tickets: 1,
            deadline: at(LEASE_MS),
        })
        .unwrap();
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
            reserved("held", 0),
            reserved("new", 9),
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

    fn qid(s: &str) -> QueueId {
        QueueId::parse(s).unwrap()
    }
    fn wid(s: &str) -> WaitlistId {
        WaitlistId::parse(s).unwrap()
    }

    fn rebuilt(l: &Ledger) -> Ledger {
        let mut again = Ledger::new();
        for e in l.snapshot_events() {
            again.apply(&e).unwrap();
        }
        again.check_invariants().unwrap();
        again
    }

    #[test]
    fn the_queue_shuffles_the_pre_queue_and_appends_later_arrivals() {
        let mut l = Ledger::new();
        let mut ev = Vec::new();
        let spec = SaleSpec::new(sid(), None, 10, None, Some(2), T0)
            .unwrap()
            .with_queue(2, "secret".into())
            .unwrap();
        l.create_sale(spec, at(-10_000), &mut ev).unwrap();
        // Before the opening: no place yet; the same user again gets the same entry.
        for (id, who) in [("qm", "a"), ("qc", "b"), ("qx", "c")] {
            let (e, new) = l
                .queue_join(&sid(), qid(id), user(who), at(-5_000), &mut ev)
                .unwrap();
            assert!(new);
            assert_eq!(e.rank, None);
        }
        let (again, new) = l
            .queue_join(&sid(), qid("qz"), user("a"), at(-4_000), &mut ev)
            .unwrap();
        assert!(!new);
        assert_eq!(again.queue_id, qid("qm"));
        // After it: the pre-queue in id order, later arrivals behind.
        let (d, _) = l
            .queue_join(&sid(), qid("qa"), user("d"), at(1), &mut ev)
            .unwrap();
        assert_eq!(d.rank, Some(4));
        let rank = |l: &mut Ledger, id| {
            l.queue_entry(&sid(), &qid(id), at(2))
                .unwrap()
                .unwrap()
                .rank
        };
        assert_eq!(
            [rank(&mut l, "qc"), rank(&mut l, "qm"), rank(&mut l, "qx")],
            [Some(1), Some(2), Some(3)]
        );
        // A clock stepped back across the opening does not reopen the pre-queue.
        let (back, _) = l
            .queue_join(&sid(), qid("qb"), user("z"), at(-1), &mut ev)
            .unwrap();
        assert_eq!(back.rank, Some(5));
        // Replay and a compacted journal rebuild the same places.
        let mut replayed = Ledger::new();
        for e in &ev {
            replayed.apply(e).unwrap();
        }
        let mut compacted = rebuilt(&l);
        for id in ["qc", "qm", "qx", "qa", "qb"] {
            let want = rank(&mut l, id);
            assert_eq!(rank(&mut replayed, id), want);
            assert_eq!(rank(&mut compacted, id), want);
        }
        // A lapsed admission: joining again goes to the back.
        let late = at(crate::sale::ADMISSION_WINDOW_MS + 10_000);
        let (e, new) = l
            .queue_join(&sid(), qid("qn"), user("b"), late, &mut ev)
            .unwrap();
        assert!(new);
        // Not behind the old line (long admitted) but at the place being admitted now: at once.
        // (Five places before it: qc, qm, qx, then qa and qb after the opening.)
        let q = crate::QueueSpec {
            admit_per_second: 2,
            secret: String::new(),
        };
        assert_eq!(e.rank, Some(q.admitted_through(T0, late)));
        assert!(q.admitted_at(T0, e.rank.unwrap()) <= late);
        // A sale without a queue has none.
        let mut f = setup(1, 1);
        assert_eq!(
            f.l.queue_join(&sid(), qid("q1"), user("a"), T0, &mut f.ev)
                .unwrap_err(),
            LedgerError::NoQueue
        );
    }

    #[test]
    fn freed_tickets_go_to_the_waitlist_in_order_never_to_the_pool() {
        let mut f = setup(2, 1);
        f.take("r1", "a");
        assert_eq!(
            f.l.waitlist_join(&sid(), wid("w0"), user("x"), T0, &mut f.ev)
                .unwrap_err(),
            LedgerError::NotSoldOut
        );
        f.take("r2", "b");
        assert_eq!(
            f.l.waitlist_join(&sid(), wid("w0"), user("a"), T0, &mut f.ev)
                .unwrap_err(),
            LedgerError::LimitReached,
            "a user at the limit cannot wait for more"
        );
        for (id, who) in [("w1", "c"), ("w2", "d"), ("w3", "e")] {
            let (e, new) =
                f.l.waitlist_join(&sid(), wid(id), user(who), T0, &mut f.ev)
                    .unwrap();
            assert!(new);
            assert_eq!(e.state, WaitState::Waiting);
        }
        let (same, new) =
            f.l.waitlist_join(&sid(), wid("w9"), user("d"), T0, &mut f.ev)
                .unwrap();
        assert!(!new);
        assert_eq!((same.waitlist_id, same.position), (wid("w2"), Some(2)));
        // A cancel: the ticket becomes c's hold in the same step.
        let n = f.events_of(|f| {
            f.cancel("r1", "a", at(100)).unwrap();
        });
        assert_eq!(n, 2);
        assert_eq!(f.counts(), (0, 2, 0));
        let offered =
            f.l.reservation(&offer_id(&wid("w1"), &sid()))
                .unwrap()
                .clone();
        assert_eq!(
            (offered.user_id.as_str(), offered.state),
            ("c", ReservationState::Reserved)
        );
        assert_eq!(offered.expires_at, at(100 + HOLD_MS));
        let pos = |f: &Fx, id| f.l.waitlist_entry(&sid(), &wid(id)).unwrap().unwrap();
        assert_eq!(pos(&f, "w1").state, WaitState::Offered);
        assert_eq!(pos(&f, "w2").position, Some(1));
        // An expiry: d's turn. e still waits.
        f.events_of(|f| {
            f.l.expire_due(at(HOLD_MS), 10, &mut f.ev);
        });
        assert_eq!(pos(&f, "w2").state, WaitState::Offered);
        assert_eq!(
            (pos(&f, "w3").state, pos(&f, "w3").position),
            (WaitState::Waiting, Some(1))
        );
        assert_eq!(f.counts(), (0, 2, 0));
        // e withdraws; then a freed ticket goes back to the pool.
        let w =
            f.l.waitlist_withdraw(&sid(), &wid("w3"), &user("e"), at(5), &mut f.ev)
                .unwrap();
        assert_eq!(w.state, WaitState::Withdrawn);
        assert_eq!(
            f.l.waitlist_withdraw(&sid(), &wid("w3"), &user("x"), at(5), &mut f.ev)
                .unwrap_err(),
            LedgerError::Forbidden
        );
        let cid = offer_id(&wid("w1"), &sid());
        f.l.cancel(&cid, &user("c"), at(200), &mut f.ev).unwrap();
        assert_eq!(f.counts(), (1, 1, 0));
        f.l.check_invariants().unwrap();
        // Replay and a compacted journal agree.
        let mut replayed = Ledger::new();
        for e in &f.ev {
            replayed.apply(e).unwrap();
        }
        replayed.check_invariants().unwrap();
        let compacted = rebuilt(&f.l);
        for l in [&replayed, &compacted] {
            assert_eq!(snapshot(l), snapshot(&f.l));
            for id in ["w1", "w2", "w3"] {
                assert_eq!(
                    l.waitlist_entry(&sid(), &wid(id)),
                    f.l.waitlist_entry(&sid(), &wid(id))
                );
            }
        }
    }

    #[test]
    fn an_offer_must_go_to_the_head_of_the_line() {
        let mut f = setup(1, 1);
        f.take("r1", "a");
        f.l.waitlist_join(&sid(), wid("w1"), user("c"), T0, &mut f.ev)
            .unwrap();
        f.l.waitlist_join(&sid(), wid("w2"), user("d"), T0, &mut f.ev)
            .unwrap();
        f.cancel("r1", "a", at(1)).unwrap();
        let mut l = Ledger::new();
        let mut skipped = false;
        for e in &f.ev {
            // Replace the offer to w1 by one to w2: it does not apply.
            if let Event::WaitlistOffered { reservation, .. } = e {
                let forged = Event::WaitlistOffered {
                    waitlist_id: wid("w2"),
                    reservation: Reservation {
                        id: offer_id(&wid("w2"), &sid()),
                        user_id: user("d"),
                        ..reservation.clone()
                    },
                };
                assert!(l.apply(&forged).is_err());
                skipped = true;
            }
            l.apply(e).unwrap();
        }
        assert!(skipped);
    }
}
