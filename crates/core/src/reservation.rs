//! A reservation: one ticket held for one user until paid, cancelled or expired.

use serde::{Deserialize, Serialize};

use crate::clock::UnixMs;
use crate::ids::{ReservationId, SaleId, UserId};

/// The four states of docs/API.md. `Paid`, `Cancelled` and `Expired` are final: no state goes
/// backwards, and only `Reserved` moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    Reserved,
    Paid,
    Cancelled,
    Expired,
}

impl ReservationState {
    /// Every state, in the order a reservation may pass through them.
    pub const ALL: [ReservationState; 4] = [
        ReservationState::Reserved,
        ReservationState::Paid,
        ReservationState::Cancelled,
        ReservationState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Reserved => "reserved",
            ReservationState::Paid => "paid",
            ReservationState::Cancelled => "cancelled",
            ReservationState::Expired => "expired",
        }
    }

    /// The state named by `as_str`'s text (`reserved`, `paid`, `cancelled`, `expired`): the
    /// one way stored states are read back (journal records, Redis records, order rows).
    pub fn parse(s: &str) -> Option<ReservationState> {
        Some(match s {
            "reserved" => ReservationState::Reserved,
            "paid" => ReservationState::Paid,
            "cancelled" => ReservationState::Cancelled,
            "expired" => ReservationState::Expired,
            _ => return None,
        })
    }

    /// Whether the ticket still counts against the user's limit (reserved or paid).
    pub fn holds_ticket(self) -> bool {
        matches!(self, ReservationState::Reserved | ReservationState::Paid)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: ReservationId,
    pub sale_id: SaleId,
    pub user_id: UserId,
    pub state: ReservationState,
    pub created_at: UnixMs,
    pub expires_at: UnixMs,
    pub paid_at: Option<UnixMs>,
    pub updated_at: UnixMs,
}
