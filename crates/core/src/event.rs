//! Events: every change of the global truth, as data.
//!
//! The ledger decides, then records its decision as one of these and applies it. Replaying the
//! same events in order rebuilds the same state, which is how the embedded store recovers from
//! its journal; the same events feed the order writer (a Redis Stream in cluster mode). Events
//! carry results, not requests, so replay never re-runs a decision against a different clock.

use serde::{Deserialize, Serialize};

use crate::clock::UnixMs;
use crate::ids::{IdempotencyKey, NodeId, ReservationId, SaleId};
use crate::reservation::Reservation;
use crate::sale::SaleSpec;

/// A lease of the first version, whose nodes each sold from a leased chunk of a sale's stock.
/// Journals and streams written then still hold lease events, so they are read and applied;
/// nothing grants a lease any more. Zero means "no lease": the ticket came from the pool.
pub type LeaseId = u32;

fn is_pool(lease: &LeaseId) -> bool {
    *lease == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    SaleCreated {
        spec: SaleSpec,
        at: UnixMs,
    },
    /// Legacy (first version): a new lease, or more tickets and a later deadline on a live one.
    /// Pool → allotment.
    LeaseGranted {
        sale_id: SaleId,
        lease: LeaseId,
        node: NodeId,
        tickets: u64,
        deadline: UnixMs,
    },
    /// Legacy (first version).
    LeaseRenewed {
        sale_id: SaleId,
        lease: LeaseId,
        deadline: UnixMs,
    },
    /// Unsold tickets of a (legacy) lease back to the pool; `closed` ends the lease. Still
    /// recorded when the store takes back the leases a first-version journal left open.
    LeaseReturned {
        sale_id: SaleId,
        lease: LeaseId,
        tickets: u64,
        closed: bool,
    },
    /// One ticket of the pool becomes a reservation. `lease` is absent (0) but in first-version
    /// journals, where the ticket came from that lease's allotment.
    Reserved {
        reservation: Reservation,
        #[serde(default, skip_serializing_if = "is_pool")]
        lease: LeaseId,
        idempotency_key: Option<IdempotencyKey>,
    },
    /// A reservation as it stands, in whatever state: what a compacted journal holds instead
    /// of the reservation's history (its `Reserved` and the change that settled it). The
    /// ticket is counted as its state says: a hold or a payment takes one from the pool.
    Restored {
        reservation: Reservation,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<IdempotencyKey>,
    },
    Paid {
        sale_id: SaleId,
        id: ReservationId,
        at: UnixMs,
    },
    /// The ticket goes back to the pool.
    Cancelled {
        sale_id: SaleId,
        id: ReservationId,
        at: UnixMs,
    },
    /// The hold lapsed unpaid; the ticket goes back to the pool.
    Expired {
        sale_id: SaleId,
        id: ReservationId,
        at: UnixMs,
    },
}

impl Event {
    pub fn sale_id(&self) -> &SaleId {
        match self {
            Event::SaleCreated { spec, .. } => &spec.id,
            Event::Reserved { reservation, .. } | Event::Restored { reservation, .. } => {
                &reservation.sale_id
            }
            Event::LeaseGranted { sale_id, .. }
            | Event::LeaseRenewed { sale_id, .. }
            | Event::LeaseReturned { sale_id, .. }
            | Event::Paid { sale_id, .. }
            | Event::Cancelled { sale_id, .. }
            | Event::Expired { sale_id, .. } => sale_id,
        }
    }
}
