//! ticketrush's core: the domain types and the stock model.
//!
//! Architecture invariant: this crate does no I/O and has no async runtime. It never reads a
//! clock or a random number generator; time and ids are passed in. That is what makes the
//! model replayable from a journal and testable with random interleavings.

pub mod audit;
pub mod clock;
pub mod event;
pub mod ids;
pub mod ledger;
pub mod line;
pub mod reservation;
pub mod sale;
pub mod sold_out;

pub use audit::{audit_sale, AuditReport};
pub use clock::{TimeError, UnixMs};
pub use event::{Event, LeaseId};
pub use ids::{
    IdError, IdempotencyKey, NodeId, QueueId, ReservationId, SaleId, UserId, WaitlistId,
};
pub use ledger::{ApplyError, Ledger, LedgerError, ReserveItem, ReserveOutcome};
pub use line::{QueueEntry, WaitState, WaitlistEntry};
pub use reservation::{Reservation, ReservationState};
pub use sale::{QueueSpec, SaleSpec, SaleSpecError, SaleView};
pub use sold_out::{Admit, SoldOutGate};
