//! The audit: docs/DESIGN.md's invariants checked against what the stores hold.
//!
//! Pure: the caller reads a sale's counts, its reservations and (when there is an order
//! table) its order rows, and [`audit_sale`] names every violation with the reservation ids
//! involved. `ticketrush audit` and `ticketrush demo` both end with it; tests use it after
//! every scenario. An order row has exactly the shape of a [`Reservation`], so rows are read
//! into that type.

use std::collections::HashMap;

use crate::ids::{ReservationId, UserId};
use crate::reservation::{Reservation, ReservationState};
use crate::sale::SaleView;

/// Most violations listed one by one; beyond it only their number is kept, so a badly broken
/// sale does not print a million lines.
pub const VIOLATIONS_LISTED_MAX: usize = 100;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Reservations looked at, by state.
    pub reserved: u64,
    pub paid: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Order rows looked at (None: no order table was checked).
    pub orders: Option<u64>,
    /// Each violation as a sentence naming what is involved; at most `VIOLATIONS_LISTED_MAX`.
    pub violations: Vec<String>,
    /// All violations, listed or not.
    pub violation_count: u64,
}

impl AuditReport {
    pub fn passed(&self) -> bool {
        self.violation_count == 0
    }

    /// Records a violation found outside `audit_sale` (a writer that never caught up).
    pub fn note_violation(&mut self, v: String) {
        self.violation_count += 1;
        if self.violations.len() < VIOLATIONS_LISTED_MAX {
            self.violations.push(v);
        }
    }
}

/// Checks one sale: the counts add up to the total and agree with the reservations; nobody
/// holds more than the limit; with `orders`, every reservation has exactly one row in the same
/// state (and the same user and times), and no row lacks a reservation.
pub fn audit_sale(
    view: &SaleView,
    reservations: &[Reservation],
    orders: Option<&[Reservation]>,
) -> AuditReport {
    let mut report = AuditReport::default();
    let spec = &view.spec;
    if view.available + view.reserved + view.paid != spec.total {
        report.note_violation(format!(
            "counts do not add up: available {} + reserved {} + paid {} != total {}",
            view.available, view.reserved, view.paid, spec.total
        ));
    }
    let mut held: HashMap<&UserId, Vec<&ReservationId>> = HashMap::new();
    for r in reservations {
        match r.state {
            ReservationState::Reserved => report.reserved += 1,
            ReservationState::Paid => report.paid += 1,
            ReservationState::Cancelled => report.cancelled += 1,
            ReservationState::Expired => report.expired += 1,
        }
        if r.sale_id != spec.id {
            report.note_violation(format!(
                "reservation {} belongs to sale {}",
                r.id, r.sale_id
            ));
        }
        if r.state.holds_ticket() {
            held.entry(&r.user_id).or_default().push(&r.id);
        }
    }
    if (report.reserved, report.paid) != (view.reserved, view.paid) {
        report.note_violation(format!(
            "the sale counts reserved {} and paid {}, its reservations {} and {}",
            view.reserved, view.paid, report.reserved, report.paid
        ));
    }
    let mut over: Vec<(&UserId, &Vec<&ReservationId>)> = held
        .iter()
        .filter(|(_, ids)| ids.len() > spec.per_user_limit as usize)
        .map(|(u, ids)| (*u, ids))
        .collect();
    over.sort();
    for (user, ids) in over {
        report.note_violation(format!(
            "user {user} holds {} tickets, above the limit of {}: {}",
            ids.len(),
            spec.per_user_limit,
            join_ids(ids.iter().copied())
        ));
    }
    if let Some(orders) = orders {
        check_orders(&mut report, reservations, orders);
    }
    report
}

fn check_orders(report: &mut AuditReport, reservations: &[Reservation], orders: &[Reservation]) {
    report.orders = Some(orders.len() as u64);
    let mut rows: HashMap<&ReservationId, Vec<&Reservation>> = HashMap::new();
    for o in orders {
        rows.entry(&o.id).or_default().push(o);
    }
    let mut problems: Vec<String> = Vec::new();
    for r in reservations {
        match rows.remove(&r.id).as_deref() {
            None => problems.push(format!("reservation {} has no order row", r.id)),
            Some([row]) => {
                if row.state != r.state {
                    problems.push(format!(
                        "reservation {} is {} but its order row is {}",
                        r.id,
                        r.state.as_str(),
                        row.state.as_str()
                    ));
                } else if row.user_id != r.user_id
                    || row.created_at != r.created_at
                    || row.expires_at != r.expires_at
                    || row.paid_at != r.paid_at
                {
                    problems.push(format!(
                        "the order row of reservation {} differs from it (user or times)",
                        r.id
                    ));
                }
            }
            Some(many) => problems.push(format!(
                "reservation {} has {} order rows",
                r.id,
                many.len()
            )),
        }
    }
    let mut extra: Vec<&&ReservationId> = rows.keys().collect();
    extra.sort();
    for id in extra {
        problems.push(format!("order row {id} has no reservation"));
    }
    problems.sort();
    for p in problems {
        report.note_violation(p);
    }
}

fn join_ids<'a>(ids: impl Iterator<Item = &'a ReservationId>) -> String {
    ids.map(|i| i.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::UnixMs;
    use crate::ids::SaleId;
    use crate::sale::SaleSpec;

    fn view(total: u64, available: u64, reserved: u64, paid: u64) -> SaleView {
        let spec = SaleSpec::new(
            SaleId::parse("S").unwrap(),
            None,
            total,
            Some(1),
            None,
            UnixMs(0),
        )
        .unwrap();
        SaleView {
            spec,
            available,
            reserved,
            paid,
        }
    }

    fn res(id: &str, user: &str, state: ReservationState) -> Reservation {
        Reservation {
            id: ReservationId::parse(id).unwrap(),
            sale_id: SaleId::parse("S").unwrap(),
            user_id: UserId::parse(user).unwrap(),
            state,
            created_at: UnixMs(1),
            expires_at: UnixMs(2),
            paid_at: (state == ReservationState::Paid).then_some(UnixMs(1)),
            updated_at: UnixMs(1),
        }
    }

    #[test]
    fn a_clean_sale_passes() {
        let rs = vec![
            res("a", "u1", ReservationState::Reserved),
            res("b", "u2", ReservationState::Paid),
            res("c", "u2", ReservationState::Expired),
        ];
        let report = audit_sale(&view(5, 3, 1, 1), &rs, Some(&rs));
        assert!(report.passed(), "{:?}", report.violations);
        assert_eq!(report.orders, Some(3));
    }

    #[test]
    fn names_the_ids_of_every_violation() {
        let rs = vec![
            res("a", "u1", ReservationState::Reserved),
            res("b", "u1", ReservationState::Paid),
            res("c", "u3", ReservationState::Reserved),
        ];
        let mut orders = vec![
            res("a", "u1", ReservationState::Paid),     // wrong state
            res("x", "u9", ReservationState::Reserved), // no reservation
            res("c", "u3", ReservationState::Reserved),
            res("c", "u3", ReservationState::Reserved), // twice
        ];
        orders[1].created_at = UnixMs(1);
        // b has no row; counts say 4 in all of a total of 5.
        let report = audit_sale(&view(5, 1, 2, 1), &rs, Some(&orders));
        let all = report.violations.join("\n");
        assert!(all.contains("counts do not add up"), "{all}");
        assert!(all.contains("user u1 holds 2 tickets"), "{all}");
        assert!(
            all.contains("reservation a is reserved but its order row is paid"),
            "{all}"
        );
        assert!(all.contains("reservation b has no order row"), "{all}");
        assert!(all.contains("reservation c has 2 order rows"), "{all}");
        assert!(all.contains("order row x has no reservation"), "{all}");
        assert!(!report.passed());
    }
}
