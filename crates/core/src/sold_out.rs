//! What a node knows of a sale being sold out: the one piece of stock state a node keeps.
//!
//! A node holds no tickets of its own. Every reservation is decided by the store against the
//! sale's one pool, so a `sold_out` from the store is the truth for the whole sale at that
//! moment. The store answers each batch with the tickets left after it (`available`); once
//! that is zero, the node answers further requests `sold_out` from memory, without a store
//! call, until a recheck is due. Tickets come back only by cancellation or expiry, so in a sale
//! where nothing came back, "was empty" means "is empty": the answer from memory is exact.
//! When tickets do come back, the node learns it from the next batch or probe (at most
//! `recheck_ms` later), or at once when the return happened on this node.
//!
//! The whole state is one atomic word read with one plain load on the sold-out path:
//! - `0`: the store may have tickets; requests go to the store.
//! - `t > 0`: the pool was empty; until node-clock millisecond `t` every request is answered
//!   `sold_out` from memory. The first request at or after `t` moves `t` a recheck forward and
//!   goes to the store as the probe: if its batch finds tickets, the gate opens; if the probe
//!   never answers (the store failed it, the node stopped), the next recheck sends another.
//!   (A client that hangs up loses nothing: the batcher reads the store's answer anyway.)
//!
//! Time is passed in (milliseconds on the node's monotonic clock, from 0), so the rules are
//! testable without waiting.

use std::sync::atomic::{AtomicU64, Ordering};

/// Whether a request goes to the store or is answered `sold_out` from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it to the store (the pool may have tickets, or a recheck is due).
    Store,
    /// The pool was empty and no recheck is due yet.
    SoldOut,
}

#[derive(Debug, Default)]
pub struct SoldOutGate {
    /// 0: open; otherwise the node-clock millisecond (plus one, so that 0 stays "open" even at
    /// the clock's origin) until which the sale counts as sold out.
    until: AtomicU64,
    /// Counts `reopen`s: a batch answered after a return it did not see must not close the
    /// gate again (see `observe_since`).
    reopened: AtomicU64,
}

impl SoldOutGate {
    /// Decides one request at `now_ms`; `recheck_ms` is how long a probe's turn lasts.
    pub fn admit(&self, now_ms: u64, recheck_ms: u64) -> Admit {
        let mut word = self.until.load(Ordering::Acquire);
        loop {
            if word == 0 {
                return Admit::Store;
            }
            if now_ms + 1 < word {
                return Admit::SoldOut;
            }
            // The recheck is due: this request is the probe, the others wait for its answer
            // (or for the next recheck) and keep answering from memory meanwhile.
            let next = now_ms + 1 + recheck_ms;
            match self
                .until
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Admit::Store,
                Err(seen) => word = seen,
            }
        }
    }

    /// The store answered a batch decided at `now_ms` with `available` tickets left after it.
    pub fn observe(&self, available: u64, now_ms: u64, recheck_ms: u64) {
        self.observe_since(available, self.epoch(), now_ms, recheck_ms);
    }

    /// Where the gate stands before a batch goes to the store: pass it to `observe_since`.
    pub fn epoch(&self) -> u64 {
        self.reopened.load(Ordering::Acquire)
    }

    /// `observe` for a batch sent at `epoch`: an empty pool it reports is ignored if tickets
    /// came back on this node since (the batch may have been decided before the return; with
    /// several batches in flight, answers arrive in any order). Tickets left always open it.
    pub fn observe_since(&self, available: u64, epoch: u64, now_ms: u64, recheck_ms: u64) {
        if available == 0 {
            if self.epoch() != epoch {
                return;
            }
            self.until.store(now_ms + 1 + recheck_ms, Ordering::Release);
        } else {
            self.until.store(0, Ordering::Release);
        }
    }

    /// Tickets came back to the pool (a cancellation or expiry this node saw): ask the store
    /// again from the next request on.
    pub fn reopen(&self) {
        self.reopened.fetch_add(1, Ordering::AcqRel);
        self.until.store(0, Ordering::Release);
    }

    /// Whether the gate currently answers `sold_out` from memory at `now_ms`.
    pub fn is_closed(&self, now_ms: u64) -> bool {
        now_ms + 1 < self.until.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECHECK: u64 = 100;

    #[test]
    fn open_until_the_store_says_empty() {
        let g = SoldOutGate::default();
        assert_eq!(g.admit(0, RECHECK), Admit::Store);
        g.observe(5, 0, RECHECK);
        assert_eq!(g.admit(1, RECHECK), Admit::Store);
        g.observe(0, 10, RECHECK);
        assert!(g.is_closed(10));
        assert_eq!(g.admit(10, RECHECK), Admit::SoldOut);
        assert_eq!(g.admit(109, RECHECK), Admit::SoldOut);
    }

    #[test]
    fn one_probe_per_recheck() {
        let g = SoldOutGate::default();
        g.observe(0, 0, RECHECK);
        // At the recheck, exactly one request goes to the store; the rest answer from memory.
        assert_eq!(g.admit(100, RECHECK), Admit::Store);
        assert_eq!(g.admit(100, RECHECK), Admit::SoldOut);
        assert_eq!(g.admit(150, RECHECK), Admit::SoldOut);
        // The probe never answered: the next recheck sends another.
        assert_eq!(g.admit(200, RECHECK), Admit::Store);
        assert_eq!(g.admit(201, RECHECK), Admit::SoldOut);
        // The probe found tickets: everyone goes to the store again.
        g.observe(1, 205, RECHECK);
        assert_eq!(g.admit(206, RECHECK), Admit::Store);
        assert_eq!(g.admit(206, RECHECK), Admit::Store);
    }

    #[test]
    fn a_batch_answered_after_a_return_does_not_close_the_gate_again() {
        let g = SoldOutGate::default();
        let sent = g.epoch();
        // A cancel on this node returns a ticket while the batch is on its way.
        g.reopen();
        // The batch was decided before the return and reports an empty pool: stale.
        g.observe_since(0, sent, 5, RECHECK);
        assert_eq!(g.admit(6, RECHECK), Admit::Store);
        // A batch sent after the return is believed.
        g.observe_since(0, g.epoch(), 7, RECHECK);
        assert_eq!(g.admit(8, RECHECK), Admit::SoldOut);
    }

    #[test]
    fn reopen_forgets_the_empty_pool() {
        let g = SoldOutGate::default();
        g.observe(0, 0, RECHECK);
        g.reopen();
        assert!(!g.is_closed(1));
        assert_eq!(g.admit(1, RECHECK), Admit::Store);
    }

    #[test]
    fn a_probe_at_the_clock_origin_is_not_lost() {
        // A gate closed at t = 0 with no recheck still reads as closed until 0 has passed,
        // never as the "open" word.
        let g = SoldOutGate::default();
        g.observe(0, 0, 0);
        assert_eq!(g.admit(0, 0), Admit::Store);
    }
}
