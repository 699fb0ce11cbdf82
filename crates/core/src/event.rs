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

/// A node's lease on a chunk of a sale's stock; the fencing token of its commits.
/// Increasing per sale, never reused. Zero means "no lease".
pub type LeaseId = u32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    SaleCreated {
        spec: SaleSpec,
        at: UnixMs,
    },
    /// A new lease, or more tickets and a later deadline on a live one. Pool → allotment.
    LeaseGranted {
        sale_id: SaleId,
        lease: LeaseId,
        node: NodeId,
        tickets: u64,
        deadline: UnixMs,
    },
    LeaseRenewed {
        sale_id: SaleId,
        lease: LeaseId,
        deadline: UnixMs,
    },
    /// Unsold tickets of a lease back to the pool; `closed` ends the lease (released by its
    /// node, or reclaimed because it lapsed), after which commits naming it are refused.
    LeaseReturned {
        sale_id: SaleId,
        lease: LeaseId,
        tickets: u64,
        closed: bool,
    },
    /// One ticket of a lease's allotment becomes a reservation.
    Reserved {
        reservation: Reservation,
        lease: LeaseId,
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
            Event::Reserved { reservation, .. } => &reservation.sale_id,
            Event::LeaseGranted { sale_id, .. }
            | Event::LeaseRenewed { sale_id, .. }
            | Event::LeaseReturned { sale_id, .. }
            | Event::Paid { sale_id, .. }
            | Event::Cancelled { sale_id, .. }
            | Event::Expired { sale_id, .. } => sale_id,
        }
    }
}
