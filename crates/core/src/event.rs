//! Events: every change of the global truth, as data.
//!
//! The ledger decides, then records its decision as one of these and applies it. Replaying the
//! same events in order rebuilds the same state, which is how the embedded store recovers from
//! its journal; the same events feed the order writer (a Redis Stream in cluster mode). Events
//! carry results, not requests, so replay never re-runs a decision against a different clock.

use serde::{Deserialize, Serialize};

use crate::clock::UnixMs;
use crate::ids::{IdempotencyKey, NodeId, QueueId, ReservationId, SaleId, UserId, WaitlistId};
use crate::line::WaitState;
use crate::reservation::Reservation;
use crate::sale::SaleSpec;

/// A lease of the first version, whose nodes each sold from a leased chunk of a sale's stock.
/// Journals and streams written then still hold lease events, so they are read and applied;
/// nothing grants a lease any more. Zero means "no lease": the ticket came from the pool.
pub type LeaseId = u32;

fn is_pool(lease: &LeaseId) -> bool {
    *lease == 0
}

fn is_waiting(state: &WaitState) -> bool {
    *state == WaitState::Waiting
}

/// Written as JSON with a `type` tag (serde's internally tagged form). Read by the
/// hand-written `Deserialize` below, which takes the same JSON: the derived one buffers every
/// event whole before it can look at the tag, which made decoding the journal cost about
/// twice as much (replay at start, the orders table's follower on every change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    /// A buyer joined the sale's waiting-room queue: into the pre-queue if `at` is before the
    /// opening, else behind everyone (see `line.rs`).
    QueueJoined {
        sale_id: SaleId,
        queue_id: QueueId,
        user_id: UserId,
        at: UnixMs,
    },
    /// A buyer joined the sale's waitlist (`state` absent: waiting). A compacted journal
    /// restores every entry this way, in line order, with its state.
    WaitlistJoined {
        sale_id: SaleId,
        waitlist_id: WaitlistId,
        user_id: UserId,
        #[serde(default, skip_serializing_if = "is_waiting")]
        state: WaitState,
        at: UnixMs,
    },
    /// A freed ticket became a reservation for the first waiting entry: one step, so the
    /// ticket never passes through the pool.
    WaitlistOffered {
        waitlist_id: WaitlistId,
        reservation: Reservation,
    },
    /// An entry left the line without a ticket (withdrawn, or its buyer was at the limit).
    WaitlistWithdrawn {
        sale_id: SaleId,
        waitlist_id: WaitlistId,
        at: UnixMs,
    },
}

impl Event {
    pub fn sale_id(&self) -> &SaleId {
        match self {
            Event::SaleCreated { spec, .. } => &spec.id,
            Event::Reserved { reservation, .. }
            | Event::Restored { reservation, .. }
            | Event::WaitlistOffered { reservation, .. } => &reservation.sale_id,
            Event::LeaseGranted { sale_id, .. }
            | Event::LeaseRenewed { sale_id, .. }
            | Event::LeaseReturned { sale_id, .. }
            | Event::Paid { sale_id, .. }
            | Event::Cancelled { sale_id, .. }
            | Event::Expired { sale_id, .. }
            | Event::QueueJoined { sale_id, .. }
            | Event::WaitlistJoined { sale_id, .. }
            | Event::WaitlistWithdrawn { sale_id, .. } => sale_id,
        }
    }
}

/// Every field any event has, each optional, and the tag: one pass over the JSON, no buffering.
#[derive(Deserialize)]
struct EventWire {
    #[serde(rename = "type")]
    kind: EventKind,
    spec: Option<SaleSpec>,
    at: Option<UnixMs>,
    sale_id: Option<SaleId>,
    lease: Option<LeaseId>,
    node: Option<NodeId>,
    tickets: Option<u64>,
    deadline: Option<UnixMs>,
    closed: Option<bool>,
    reservation: Option<Reservation>,
    idempotency_key: Option<IdempotencyKey>,
    id: Option<ReservationId>,
    queue_id: Option<QueueId>,
    waitlist_id: Option<WaitlistId>,
    user_id: Option<UserId>,
    state: Option<WaitState>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EventKind {
    SaleCreated,
    LeaseGranted,
    LeaseRenewed,
    LeaseReturned,
    Reserved,
    Restored,
    Paid,
    Cancelled,
    Expired,
    QueueJoined,
    WaitlistJoined,
    WaitlistOffered,
    WaitlistWithdrawn,
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        use serde::de::Error;
        let w = EventWire::deserialize(d)?;
        fn need<T, E: Error>(v: Option<T>, name: &'static str) -> Result<T, E> {
            v.ok_or_else(|| E::missing_field(name))
        }
        Ok(match w.kind {
            EventKind::SaleCreated => Event::SaleCreated {
                spec: need(w.spec, "spec")?,
                at: need(w.at, "at")?,
            },
            EventKind::LeaseGranted => Event::LeaseGranted {
                sale_id: need(w.sale_id, "sale_id")?,
                lease: need(w.lease, "lease")?,
                node: need(w.node, "node")?,
                tickets: need(w.tickets, "tickets")?,
                deadline: need(w.deadline, "deadline")?,
            },
            EventKind::LeaseRenewed => Event::LeaseRenewed {
                sale_id: need(w.sale_id, "sale_id")?,
                lease: need(w.lease, "lease")?,
                deadline: need(w.deadline, "deadline")?,
            },
            EventKind::LeaseReturned => Event::LeaseReturned {
                sale_id: need(w.sale_id, "sale_id")?,
                lease: need(w.lease, "lease")?,
                tickets: need(w.tickets, "tickets")?,
                closed: need(w.closed, "closed")?,
            },
            EventKind::Reserved => Event::Reserved {
                reservation: need(w.reservation, "reservation")?,
                lease: w.lease.unwrap_or(0),
                idempotency_key: w.idempotency_key,
            },
            EventKind::Restored => Event::Restored {
                reservation: need(w.reservation, "reservation")?,
                idempotency_key: w.idempotency_key,
            },
            kind @ (EventKind::Paid | EventKind::Cancelled | EventKind::Expired) => {
                let sale_id = need(w.sale_id, "sale_id")?;
                let (id, at) = (need(w.id, "id")?, need(w.at, "at")?);
                match kind {
                    EventKind::Paid => Event::Paid { sale_id, id, at },
                    EventKind::Cancelled => Event::Cancelled { sale_id, id, at },
                    _ => Event::Expired { sale_id, id, at },
                }
            }
            EventKind::QueueJoined => Event::QueueJoined {
                sale_id: need(w.sale_id, "sale_id")?,
                queue_id: need(w.queue_id, "queue_id")?,
                user_id: need(w.user_id, "user_id")?,
                at: need(w.at, "at")?,
            },
            EventKind::WaitlistJoined => Event::WaitlistJoined {
                sale_id: need(w.sale_id, "sale_id")?,
                waitlist_id: need(w.waitlist_id, "waitlist_id")?,
                user_id: need(w.user_id, "user_id")?,
                state: w.state.unwrap_or(WaitState::Waiting),
                at: need(w.at, "at")?,
            },
            EventKind::WaitlistOffered => Event::WaitlistOffered {
                waitlist_id: need(w.waitlist_id, "waitlist_id")?,
                reservation: need(w.reservation, "reservation")?,
            },
            EventKind::WaitlistWithdrawn => Event::WaitlistWithdrawn {
                sale_id: need(w.sale_id, "sale_id")?,
                waitlist_id: need(w.waitlist_id, "waitlist_id")?,
                at: need(w.at, "at")?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reservation::ReservationState;

    fn reservation() -> Reservation {
        Reservation {
            id: ReservationId::parse("r1.s").unwrap(),
            sale_id: SaleId::parse("s").unwrap(),
            user_id: crate::UserId::parse("u").unwrap(),
            state: ReservationState::Paid,
            created_at: UnixMs(1),
            expires_at: UnixMs(2),
            paid_at: Some(UnixMs(3)),
            updated_at: UnixMs(3),
        }
    }

    /// Every kind of event reads back as it was written, with and without its optional fields.
    #[test]
    fn every_event_reads_back_as_written() {
        let sale = SaleId::parse("s").unwrap();
        let id = ReservationId::parse("r1.s").unwrap();
        let key = Some(IdempotencyKey::parse("k1").unwrap());
        let spec = SaleSpec::new(
            sale.clone(),
            Some("n".into()),
            5,
            Some(2),
            Some(60),
            UnixMs(0),
        )
        .unwrap();
        let events = [
            Event::SaleCreated {
                spec,
                at: UnixMs(9),
            },
            Event::LeaseGranted {
                sale_id: sale.clone(),
                lease: 3,
                node: NodeId::parse("n1").unwrap(),
                tickets: 10,
                deadline: UnixMs(7),
            },
            Event::LeaseRenewed {
                sale_id: sale.clone(),
                lease: 3,
                deadline: UnixMs(8),
            },
            Event::LeaseReturned {
                sale_id: sale.clone(),
                lease: 3,
                tickets: 4,
                closed: true,
            },
            Event::Reserved {
                reservation: reservation(),
                lease: 0,
                idempotency_key: None,
            },
            Event::Reserved {
                reservation: reservation(),
                lease: 5,
                idempotency_key: key.clone(),
            },
            Event::Restored {
                reservation: reservation(),
                idempotency_key: None,
            },
            Event::Restored {
                reservation: reservation(),
                idempotency_key: key,
            },
            Event::Paid {
                sale_id: sale.clone(),
                id: id.clone(),
                at: UnixMs(4),
            },
            Event::Cancelled {
                sale_id: sale.clone(),
                id: id.clone(),
                at: UnixMs(5),
            },
            Event::Expired {
                sale_id: sale.clone(),
                id,
                at: UnixMs(6),
            },
            Event::QueueJoined {
                sale_id: sale.clone(),
                queue_id: QueueId::parse("q1").unwrap(),
                user_id: crate::UserId::parse("u").unwrap(),
                at: UnixMs(7),
            },
            Event::WaitlistJoined {
                sale_id: sale.clone(),
                waitlist_id: WaitlistId::parse("w1").unwrap(),
                user_id: crate::UserId::parse("u").unwrap(),
                state: WaitState::Waiting,
                at: UnixMs(8),
            },
            Event::WaitlistJoined {
                sale_id: sale.clone(),
                waitlist_id: WaitlistId::parse("w2").unwrap(),
                user_id: crate::UserId::parse("u").unwrap(),
                state: WaitState::Offered,
                at: UnixMs(8),
            },
            Event::WaitlistOffered {
                waitlist_id: WaitlistId::parse("w1").unwrap(),
                reservation: reservation(),
            },
            Event::WaitlistWithdrawn {
                sale_id: sale,
                waitlist_id: WaitlistId::parse("w2").unwrap(),
                at: UnixMs(9),
            },
        ];
        for ev in events {
            let json = serde_json::to_string(&ev).unwrap();
            let back: Event = serde_json::from_str(&json).unwrap();
            assert_eq!(back, ev, "{json}");
        }
    }

    #[test]
    fn a_missing_field_or_unknown_type_is_an_error_not_a_default() {
        for bad in [
            r#"{"type":"paid","sale_id":"s","at":1}"#,
            r#"{"type":"reserved"}"#,
            r#"{"type":"teleported","sale_id":"s"}"#,
            r#"{"sale_id":"s","id":"r1.s","at":1}"#,
        ] {
            assert!(serde_json::from_str::<Event>(bad).is_err(), "{bad}");
        }
        // Fields of other kinds are ignored, as the derived reader ignored them.
        let ev: Event =
            serde_json::from_str(r#"{"at":1,"type":"paid","sale_id":"s","id":"r1.s","lease":2}"#)
                .unwrap();
        assert!(matches!(ev, Event::Paid { .. }));
    }
}
