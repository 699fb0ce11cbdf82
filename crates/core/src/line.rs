//! A sale's two lines: the waiting room's queue (before and at the opening) and the waitlist
//! (after the sell-out). Data structures only; the ledger decides and records every change as
//! an event, and applies it here.
//!
//! The queue. A buyer who joins before `opens_at` goes into the *pre-queue*; at the opening the
//! pre-queue is put in the order of its entries' ids, which the node made from 128 random bits,
//! so that order is a uniformly random shuffle no arrival time or script can influence (the
//! Redis store keeps the same order: a sorted set whose members all score 0 sorts by id). A
//! buyer who joins later goes behind all of them, in arrival order. Place `rank` (from 1) is
//! admitted at a time that depends only on the rank and the sale's rate
//! ([`QueueSpec::admitted_at`](crate::QueueSpec::admitted_at)), so admission needs no process
//! and every node computes the same answer from the store's clock. A later arrival's rank is
//! the one after the last given out, but never one whose time has already passed
//! (`QueueSpec::admitted_through` at the join): when the line has drained, the newcomer is
//! admitted at once, and admissions that went unused while nobody waited are not saved up
//! into a burst.
//!
//! The waitlist. Entries wait in arrival order; a ticket freed by a cancel or an expiry
//! becomes a reservation for the first waiting entry, in the same step that frees it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::clock::UnixMs;
use crate::ids::{QueueId, UserId, WaitlistId};

/// Most entries one sale's queue holds (each costs the store ~150 bytes; see BENCHMARKS.md).
pub const QUEUE_ENTRIES_MAX: u64 = 5_000_000;
/// Most entries one sale's waitlist holds.
pub const WAITLIST_ENTRIES_MAX: u64 = 1_000_000;

/// A queue entry as the store answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub queue_id: QueueId,
    pub user_id: UserId,
    /// The entry's place in line, from 1; `None` in the pre-queue before the opening (the
    /// shuffle has not happened).
    pub rank: Option<u64>,
    /// Entries in the queue (all of them, pre-queue and later arrivals).
    pub size: u64,
}

/// Where a waitlist entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitState {
    /// In line for a freed ticket.
    Waiting,
    /// A freed ticket became a reservation in this entry's name (`WAITLIST_ID.SALE_ID`).
    Offered,
    /// Out of line: withdrawn by the buyer, or skipped because the buyer already held as many
    /// tickets as the sale allows when a ticket came up.
    Withdrawn,
}

impl WaitState {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitState::Waiting => "waiting",
            WaitState::Offered => "offered",
            WaitState::Withdrawn => "withdrawn",
        }
    }
}

/// A waitlist entry as the store answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitlistEntry {
    pub waitlist_id: WaitlistId,
    pub user_id: UserId,
    pub state: WaitState,
    /// Waiting entries ahead of this one, plus one; `None` unless waiting.
    pub position: Option<u64>,
}

#[derive(Debug, Clone)]
struct QSlot {
    user: UserId,
    /// When it joined (a compacted journal keeps it: later arrivals' ranks follow from it).
    at: UnixMs,
    /// Later arrivals: their rank, given at the join. Pre-queue: `None`.
    later: Option<u64>,
}

/// One sale's waiting-room queue.
#[derive(Debug, Clone, Default)]
pub struct Queue {
    entries: HashMap<QueueId, QSlot>,
    by_user: HashMap<UserId, QueueId>,
    /// The pre-queue, kept in id order as it fills (a join costs a few comparisons), so the
    /// draw at the opening is a walk, not a sort under the store's lock.
    pre: BTreeSet<QueueId>,
    /// The pre-queue in order once drawn (empty before): a place is its index, found by
    /// binary search.
    order: Vec<QueueId>,
    drawn: bool,
    /// The last rank given to a later arrival (0: none yet).
    last: u64,
}

impl Queue {
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, id: &QueueId) -> bool {
        self.entries.contains_key(id)
    }

    /// The user's latest entry.
    pub fn of_user(&self, user: &UserId) -> Option<&QueueId> {
        self.by_user.get(user)
    }

    /// Whether anyone joined after the opening (the pre-queue is then closed).
    pub fn has_later(&self) -> bool {
        self.last > 0
    }

    /// Adds an entry to the pre-queue (`floor` is `None`), or behind everyone: the rank after
    /// the last one given, and at least `floor` (the rank being admitted at the join).
    pub fn join(&mut self, id: QueueId, user: UserId, at: UnixMs, floor: Option<u64>) {
        let later = match floor {
            None => {
                self.pre.insert(id.clone());
                // A pre-queue entry after a draw (only a replay across a clock step back can
                // do that): draw again when next asked.
                self.drawn = false;
                None
            }
            Some(floor) => {
                let rank = (self.last.max(self.pre.len() as u64) + 1).max(floor);
                self.last = rank;
                Some(rank)
            }
        };
        self.by_user.insert(user.clone(), id.clone());
        self.entries.insert(id, QSlot { user, at, later });
    }

    /// Fixes the pre-queue's order (by id: the shuffle). Done once, at the first question
    /// after the opening; cheap to call again.
    pub fn draw(&mut self) {
        if self.drawn {
            return;
        }
        self.order = self.pre.iter().cloned().collect();
        self.drawn = true;
    }

    /// An entry, its place in line known once `opened` (the caller draws first).
    pub fn entry(&self, id: &QueueId, opened: bool) -> Option<QueueEntry> {
        let slot = self.entries.get(id)?;
        let rank = match slot.later {
            Some(rank) => Some(rank),
            None if opened && self.drawn => self.order.binary_search(id).ok().map(|i| i as u64 + 1),
            None => None,
        };
        Some(QueueEntry {
            queue_id: id.clone(),
            user_id: slot.user.clone(),
            rank,
            size: self.len(),
        })
    }

    /// Every entry as (id, user, joined at), pre-queue first, then later arrivals in order:
    /// joining them again in this order, at those times, rebuilds the same queue (a compacted
    /// journal).
    pub fn joins(&self) -> Vec<(QueueId, UserId, UnixMs)> {
        let mut later: Vec<(u64, &QueueId, &QSlot)> = Vec::new();
        let mut out = Vec::with_capacity(self.entries.len());
        for id in &self.pre {
            let slot = &self.entries[id];
            out.push((id.clone(), slot.user.clone(), slot.at));
        }
        for (id, slot) in &self.entries {
            if let Some(rank) = slot.later {
                later.push((rank, id, slot));
            }
        }
        later.sort_unstable_by_key(|(rank, _, _)| *rank);
        out.extend(
            later
                .into_iter()
                .map(|(_, id, s)| (id.clone(), s.user.clone(), s.at)),
        );
        out
    }
}

/// Counts over positions 1..=n that change one at a time, with prefix sums in O(log n)
/// (a Fenwick tree): how many waiting entries are at or ahead of a place in line.
#[derive(Debug, Clone, Default)]
struct Counts {
    tree: Vec<i64>,
}

impl Counts {
    fn lowbit(i: usize) -> usize {
        i & i.wrapping_neg()
    }

    /// Sum of positions 1..=i.
    fn prefix(&self, mut i: usize) -> i64 {
        let mut s = 0;
        while i > 0 {
            s += self.tree[i - 1];
            i -= Self::lowbit(i);
        }
        s
    }

    /// Appends position n+1 with value `v`.
    fn push(&mut self, v: i64) {
        let i = self.tree.len() + 1;
        let below = self.prefix(i - 1) - self.prefix(i - Self::lowbit(i));
        self.tree.push(v + below);
    }

    fn add(&mut self, mut i: usize, d: i64) {
        while i <= self.tree.len() {
            self.tree[i - 1] += d;
            i += Self::lowbit(i);
        }
    }
}

#[derive(Debug, Clone)]
struct WSlot {
    user: UserId,
    /// Place in arrival order, from 1.
    seq: u64,
    state: WaitState,
}

/// One sale's waitlist.
#[derive(Debug, Clone, Default)]
pub struct Waitlist {
    entries: HashMap<WaitlistId, WSlot>,
    by_user: HashMap<UserId, WaitlistId>,
    waiting: BTreeMap<u64, WaitlistId>,
    counts: Counts,
}

impl Waitlist {
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, id: &WaitlistId) -> bool {
        self.entries.contains_key(id)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The first waiting entry and its user.
    pub fn head(&self) -> Option<(&WaitlistId, &UserId)> {
        let (_, id) = self.waiting.first_key_value()?;
        Some((id, &self.entries[id].user))
    }

    /// The user's latest entry.
    pub fn of_user(&self, user: &UserId) -> Option<&WaitlistId> {
        self.by_user.get(user)
    }

    /// Appends an entry in `state` (`Waiting` for a new one; any state when a compacted
    /// journal restores it).
    pub fn push(&mut self, id: WaitlistId, user: UserId, state: WaitState) {
        let seq = self.counts.tree.len() as u64 + 1;
        let waiting = state == WaitState::Waiting;
        self.counts.push(i64::from(waiting));
        if waiting {
            self.waiting.insert(seq, id.clone());
        }
        self.by_user.insert(user.clone(), id.clone());
        self.entries.insert(id, WSlot { user, seq, state });
    }

    /// Moves a waiting entry out of line; false if it is not waiting.
    pub fn settle(&mut self, id: &WaitlistId, state: WaitState) -> bool {
        let Some(slot) = self.entries.get_mut(id) else {
            return false;
        };
        if slot.state != WaitState::Waiting || state == WaitState::Waiting {
            return false;
        }
        slot.state = state;
        self.waiting.remove(&slot.seq);
        self.counts.add(slot.seq as usize, -1);
        true
    }

    pub fn entry(&self, id: &WaitlistId) -> Option<WaitlistEntry> {
        let slot = self.entries.get(id)?;
        let position = (slot.state == WaitState::Waiting)
            .then(|| self.counts.prefix(slot.seq as usize) as u64);
        Some(WaitlistEntry {
            waitlist_id: id.clone(),
            user_id: slot.user.clone(),
            state: slot.state,
            position,
        })
    }

    /// Every entry in arrival order with its state: pushing them again in this order rebuilds
    /// the same waitlist (a compacted journal).
    pub fn entries(&self) -> Vec<(WaitlistId, UserId, WaitState)> {
        let mut v: Vec<(&u64, &WaitlistId, &WSlot)> =
            self.entries.iter().map(|(id, s)| (&s.seq, id, s)).collect();
        v.sort_unstable_by_key(|(seq, _, _)| **seq);
        v.into_iter()
            .map(|(_, id, s)| (id.clone(), s.user.clone(), s.state))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> QueueId {
        QueueId::parse(s).unwrap()
    }
    fn w(s: &str) -> WaitlistId {
        WaitlistId::parse(s).unwrap()
    }
    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn the_pre_queue_is_ordered_by_id_and_later_arrivals_follow_in_order() {
        let mut line = Queue::default();
        for (id, user) in [("m", "a"), ("c", "b"), ("x", "c")] {
            line.join(q(id), u(user), UnixMs(1), None);
        }
        assert_eq!(line.entry(&q("m"), false).unwrap().rank, None);
        line.join(q("a"), u("d"), UnixMs(2), Some(1));
        line.join(q("b"), u("e"), UnixMs(3), Some(1));
        line.draw();
        let rank = |id| line.entry(&q(id), true).unwrap().rank.unwrap();
        assert_eq!(
            [rank("c"), rank("m"), rank("x"), rank("a"), rank("b")],
            [1, 2, 3, 4, 5]
        );
        assert_eq!(line.of_user(&u("e")), Some(&q("b")));
        // Joining the listed entries again rebuilds the same ranks.
        let mut again = Queue::default();
        for (id, user, at) in line.joins() {
            let floor = (at.0 >= 2).then_some(1);
            again.join(id, user, at, floor);
        }
        again.draw();
        for id in ["c", "m", "x", "a", "b"] {
            assert_eq!(again.entry(&q(id), true), line.entry(&q(id), true));
        }
        // A newcomer after the line drained takes the rank being admitted, not the next one.
        line.join(q("n"), u("f"), UnixMs(4), Some(40));
        line.join(q("o"), u("g"), UnixMs(4), Some(40));
        let rank = |id| line.entry(&q(id), true).unwrap().rank.unwrap();
        assert_eq!((rank("n"), rank("o")), (40, 41));
    }

    #[test]
    fn waitlist_positions_count_only_waiting_entries_ahead() {
        let mut wl = Waitlist::default();
        for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            wl.push(w(id), u(&format!("u{i}")), WaitState::Waiting);
        }
        let pos = |wl: &Waitlist, id| wl.entry(&w(id)).unwrap().position;
        assert_eq!(pos(&wl, "e"), Some(5));
        assert!(wl.settle(&w("b"), WaitState::Withdrawn));
        assert!(!wl.settle(&w("b"), WaitState::Offered), "settles once");
        assert_eq!(pos(&wl, "b"), None);
        assert_eq!(pos(&wl, "e"), Some(4));
        assert_eq!(wl.head().unwrap().0, &w("a"));
        assert!(wl.settle(&w("a"), WaitState::Offered));
        assert_eq!(wl.head().unwrap().0, &w("c"));
        assert_eq!((pos(&wl, "c"), pos(&wl, "e")), (Some(1), Some(3)));
        // Many entries: the counts agree with a plain count at every place.
        let mut big = Waitlist::default();
        for i in 0..1000 {
            big.push(w(&format!("w{i}")), u("x"), WaitState::Waiting);
        }
        for i in (0..1000).step_by(3) {
            big.settle(&w(&format!("w{i}")), WaitState::Withdrawn);
        }
        let mut ahead = 0;
        for i in 0..1000 {
            let e = big.entry(&w(&format!("w{i}"))).unwrap();
            if i % 3 == 0 {
                assert_eq!(e.position, None);
            } else {
                ahead += 1;
                assert_eq!(e.position, Some(ahead), "entry {i}");
            }
        }
        let mut again = Waitlist::default();
        for (id, user, state) in big.entries() {
            again.push(id, user, state);
        }
        assert_eq!(again.entry(&w("w998")), big.entry(&w("w998")));
    }
}
