//! A sale's stock as one node holds it: the leased allotment, plus the tickets taken from it
//! that are on their way through the batcher.
//!
//! "Sold out" must mean no ticket can be had, not that the ones left are in flight for
//! requests that may yet give them back (a user over their limit, a replayed key). So a request
//! that finds the allotment and the pool empty while tickets are in flight waits for the next
//! settlement instead of answering `sold_out`.

use std::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire};

use ticketrush_core::{Allotment, LeaseId};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct LocalStock {
    pub allotment: Allotment,
    /// Tickets taken from the allotment and not yet settled by the batcher.
    in_flight: AtomicU64,
    /// Woken after every settlement.
    settled: Notify,
}

impl LocalStock {
    /// Takes a ticket; it counts as in flight until `settle`.
    pub fn take(&self) -> Option<LeaseId> {
        // The sold-out path: one plain load, no write to a shared cache line.
        if self.allotment.remaining() == 0 {
            return None;
        }
        // Counted before the take, so no one can see the allotment empty and nothing in flight
        // while this ticket is between the two.
        self.in_flight.fetch_add(1, AcqRel);
        let lease = self.allotment.try_take();
        if lease.is_none() {
            self.in_flight.fetch_sub(1, AcqRel);
        }
        lease
    }

    /// A ticket taken but never submitted (the queue was full): straight back.
    pub fn untake(&self, lease: LeaseId) {
        self.allotment.put_back(lease);
        self.settle(1);
    }

    /// `n` in-flight tickets are settled (sold, returned or forgotten).
    pub fn settle(&self, n: u64) {
        let before = self.in_flight.fetch_sub(n, AcqRel);
        debug_assert!(before >= n, "settled more tickets than were in flight");
        self.settled.notify_waiters();
    }

    /// Waits for the next settlement if any ticket is in flight; answers false at once if none
    /// is (then the stock really is empty).
    pub async fn wait_for_settlement(&self) -> bool {
        // The common case (sold out, nothing in flight) must not touch the Notify's lock.
        if self.in_flight.load(Acquire) == 0 {
            return false;
        }
        let notified = self.settled.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.in_flight.load(Acquire) == 0 {
            return false;
        }
        notified.await;
        true
    }
}
