//! A node's allotment: the tickets it leased, sold from with one atomic word and no lock.
//!
//! The word packs the lease id (high 32 bits) and the unsold count (low 32 bits), so taking a
//! ticket and learning which lease it belongs to is one compare-and-swap, and a lease that is
//! replaced can never have its old count mixed with the new one. Sale totals are at most 10^9,
//! which fits the low half.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::event::LeaseId;

const COUNT_MASK: u64 = 0xffff_ffff;

fn pack(lease: LeaseId, count: u64) -> u64 {
    assert!(
        count <= COUNT_MASK,
        "allotment count {count} overflows 32 bits"
    );
    (u64::from(lease) << 32) | count
}

fn unpack(word: u64) -> (LeaseId, u64) {
    ((word >> 32) as LeaseId, word & COUNT_MASK)
}

#[derive(Debug, Default)]
pub struct Allotment(AtomicU64);

impl Allotment {
    pub fn new() -> Allotment {
        Allotment::default()
    }

    /// Takes one ticket; answers the lease it belongs to, or `None` when empty.
    pub fn try_take(&self) -> Option<LeaseId> {
        let mut word = self.0.load(Ordering::Acquire);
        loop {
            let (lease, count) = unpack(word);
            if count == 0 {
                return None;
            }
            match self.0.compare_exchange_weak(
                word,
                pack(lease, count - 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(lease),
                Err(now) => word = now,
            }
        }
    }

    /// Returns a ticket taken but not sold (the store refused the item without deducting).
    /// If the lease changed meanwhile the ticket is not ours to return: the store took the old
    /// lease back whole. Answers whether it was returned.
    pub fn put_back(&self, lease: LeaseId) -> bool {
        self.add_if_lease(lease, 1)
    }

    /// Adds a lease grant: more tickets on the same lease, or a new lease replacing the old
    /// one (whose tickets the store has already taken back).
    pub fn install(&self, lease: LeaseId, granted: u64) {
        if lease == 0 {
            return;
        }
        if !self.add_if_lease(lease, granted) {
            self.0.store(pack(lease, granted), Ordering::Release);
        }
    }

    fn add_if_lease(&self, lease: LeaseId, n: u64) -> bool {
        let mut word = self.0.load(Ordering::Acquire);
        loop {
            let (current, count) = unpack(word);
            if current != lease {
                return false;
            }
            match self.0.compare_exchange_weak(
                word,
                pack(lease, count + n),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => word = now,
            }
        }
    }

    /// Empties the allotment, keeping the lease id, and answers what was taken out so the
    /// caller can give it back to the store.
    pub fn drain(&self) -> (LeaseId, u64) {
        let mut word = self.0.load(Ordering::Acquire);
        loop {
            let (lease, count) = unpack(word);
            match self.0.compare_exchange_weak(
                word,
                pack(lease, 0),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return (lease, count),
                Err(now) => word = now,
            }
        }
    }

    /// Forgets a lease the store took back. A newer lease installed meanwhile is kept.
    pub fn forget(&self, lease: LeaseId) {
        let word = self.0.load(Ordering::Acquire);
        if unpack(word).0 == lease {
            let _ = self
                .0
                .compare_exchange(word, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    pub fn lease(&self) -> LeaseId {
        unpack(self.0.load(Ordering::Acquire)).0
    }

    pub fn remaining(&self) -> u64 {
        unpack(self.0.load(Ordering::Acquire)).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_until_empty_then_refuses() {
        let a = Allotment::new();
        assert_eq!(a.try_take(), None);
        a.install(3, 2);
        assert_eq!(a.try_take(), Some(3));
        assert_eq!(a.try_take(), Some(3));
        assert_eq!(a.try_take(), None);
    }

    #[test]
    fn a_new_lease_replaces_the_old_count() {
        let a = Allotment::new();
        a.install(1, 5);
        a.install(1, 5);
        assert_eq!(a.remaining(), 10);
        a.install(2, 3);
        assert_eq!((a.lease(), a.remaining()), (2, 3));
        assert!(
            !a.put_back(1),
            "a ticket of a replaced lease is not returned"
        );
        assert!(a.put_back(2));
        assert_eq!(a.remaining(), 4);
    }

    #[test]
    fn drain_and_forget() {
        let a = Allotment::new();
        a.install(7, 9);
        assert_eq!(a.drain(), (7, 9));
        assert_eq!(a.try_take(), None);
        a.install(7, 1);
        a.forget(6);
        assert_eq!(a.remaining(), 1);
        a.forget(7);
        assert_eq!((a.lease(), a.remaining()), (0, 0));
    }

    #[test]
    fn concurrent_takes_never_exceed_the_grant() {
        let a = std::sync::Arc::new(Allotment::new());
        a.install(1, 10_000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while a.try_take().is_some() {
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let taken: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(taken, 10_000);
    }
}
