//! `ticketrush journal verify` and `journal salvage`: what an operator runs when a node refuses
//! to open its data dir.
//!
//! The data dir holds two copies of the history: the journal (the truth) and the orders table
//! (derived from it, one row per reservation). [`verify`] reads both without changing either
//! and reports the journal's state (clean, torn, damaged at which byte, readable from where),
//! and every reservation the two disagree on: rows the readable journal does not have (their
//! events were in the damaged bytes), and rows in a later state than the journal's.
//!
//! [`salvage`] writes a repaired journal beside the damaged one (`journal.salvaged.log`,
//! never over it): the readable history before the damage, the reservations only the orders
//! table still has (re-created from their rows), the readable history after the damage where
//! it still applies, and the later states the table holds. Its report lists each of these, so
//! the operator can judge before putting the file in place.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use ticketrush_core::{Event, Ledger, Reservation, ReservationId, ReservationState};

use ticketrush_store::embedded::JOURNAL_FILE;
use ticketrush_store::journal::{self, Format, Tail};

use crate::sqlite as orders_table;

/// Where `salvage` writes the repaired journal.
pub const SALVAGED_FILE: &str = "journal.salvaged.log";
/// Where `salvage --install` keeps the damaged journal.
pub const DAMAGED_FILE: &str = "journal.damaged.log";

/// A reservation the journal and the orders table disagree on.
#[derive(Debug, Clone)]
pub struct Doubt {
    pub row: Reservation,
    /// Its state in the readable journal, if it is there at all.
    pub journal_state: Option<ReservationState>,
}

#[derive(Debug, Clone)]
pub struct Verify {
    pub format: Format,
    pub file_len: u64,
    /// Where the readable history ends.
    pub data_end: u64,
    pub tail: Tail,
    /// Events of the readable history before `data_end`.
    pub events: usize,
    /// The first of them that does not apply to the state before it (index, reason).
    pub replay_error: Option<(usize, String)>,
    /// Rows in the orders table and the journal offset it was written up to (`None`: no table).
    pub table: Option<(usize, u64)>,
    pub in_doubt: Vec<Doubt>,
}

impl Verify {
    /// Whether a node can open the data dir as it is without losing anything known.
    pub fn healthy(&self) -> bool {
        !matches!(self.tail, Tail::Damaged { .. })
            && self.replay_error.is_none()
            && !self.table_ahead()
            && self.in_doubt.is_empty()
    }

    /// The orders table was written from more journal than the journal holds.
    pub fn table_ahead(&self) -> bool {
        self.table.is_some_and(|(_, offset)| offset > self.data_end) && self.format == Format::V2
    }

    pub fn events_after(&self) -> &[Event] {
        match &self.tail {
            Tail::Damaged { events_after, .. } => events_after,
            _ => &[],
        }
    }
}

/// Replays `events` into a fresh ledger until one does not apply.
fn replay(events: &[Event]) -> (Ledger, Option<(usize, String)>) {
    let mut l = Ledger::new();
    for (i, e) in events.iter().enumerate() {
        if let Err(err) = l.apply(e) {
            return (l, Some((i, err.to_string())));
        }
    }
    (l, None)
}

/// The latest state each reservation reaches in `events` (which may not apply on their own).
fn states_in(events: &[Event]) -> HashMap<ReservationId, ReservationState> {
    let mut m = HashMap::new();
    for e in events {
        let (id, st) = match e {
            Event::Reserved { reservation, .. } | Event::WaitlistOffered { reservation, .. } => {
                (&reservation.id, ReservationState::Reserved)
            }
            Event::Restored { reservation, .. } => (&reservation.id, reservation.state),
            Event::Paid { id, .. } => (id, ReservationState::Paid),
            Event::Cancelled { id, .. } => (id, ReservationState::Cancelled),
            Event::Expired { id, .. } => (id, ReservationState::Expired),
            _ => continue,
        };
        m.insert(id.clone(), st);
    }
    m
}

/// Reads the journal and the orders table in `dir` and compares them. Changes nothing.
pub fn verify(dir: &Path) -> io::Result<Verify> {
    let bytes = std::fs::read(dir.join(JOURNAL_FILE))?;
    let scan = journal::scan(&bytes);
    let (ledger, replay_error) = replay(&scan.events);
    let table = orders_table::read_table(dir).map_err(io::Error::other)?;
    let mut in_doubt = Vec::new();
    if let Some((rows, _)) = &table {
        let mut known: HashMap<ReservationId, ReservationState> = ledger
            .reservations()
            .map(|r| (r.id.clone(), r.state))
            .collect();
        if let Tail::Damaged { events_after, .. } = &scan.tail {
            known.extend(states_in(events_after));
        }
        for row in rows {
            let js = known.get(&row.id).copied();
            let agrees = match js {
                None => false,
                Some(s) if s == row.state => true,
                // The table follows the journal, so a journal ahead of it is normal.
                Some(s) => row.state == ReservationState::Reserved && s != row.state,
            };
            if !agrees {
                in_doubt.push(Doubt {
                    row: row.clone(),
                    journal_state: js,
                });
            }
        }
        in_doubt.sort_by(|a, b| a.row.id.cmp(&b.row.id));
    }
    Ok(Verify {
        format: scan.format,
        file_len: bytes.len() as u64,
        data_end: scan.data_end,
        tail: scan.tail,
        events: scan.events.len(),
        replay_error,
        table: table.map(|(rows, offset)| (rows.len(), offset)),
        in_doubt,
    })
}

/// What `salvage` put in the repaired journal.
#[derive(Debug, Clone, Default)]
pub struct Salvage {
    pub path: PathBuf,
    /// Events kept from the readable history before the damage.
    pub kept_before: usize,
    /// Reservations re-created from their orders-table rows (their idempotency keys are lost:
    /// the table does not hold them).
    pub recreated: Vec<ReservationId>,
    /// Events kept from the readable history after the damage.
    pub kept_after: usize,
    /// Events after the damage that no longer apply, with why.
    pub dropped: Vec<String>,
    /// Later states (paid, cancelled, expired) taken from the orders table.
    pub settled_from_table: Vec<ReservationId>,
    /// Rows that could not be re-created, with why.
    pub unrecoverable: Vec<String>,
}

/// Writes `dir/journal.salvaged.log`: the best history the journal and the orders table
/// together hold (see the module doc). The damaged journal is not touched, unless `install`:
/// then it is renamed `journal.damaged.log`, the salvaged one takes its place, and the orders
/// table is set to apply the new journal from its start (its rows converge: inserts of known
/// rows are ignored and a state only moves forward). Run it with no node on the data dir.
pub fn salvage(dir: &Path, install: bool) -> Result<Salvage, String> {
    let bytes = std::fs::read(dir.join(JOURNAL_FILE)).map_err(|e| e.to_string())?;
    let scan = journal::scan(&bytes);
    let rows = orders_table::read_table(dir)
        .map_err(|e| e.to_string())?
        .map(|(rows, _)| rows)
        .unwrap_or_default();
    let mut after = match scan.tail {
        Tail::Damaged { events_after, .. } => events_after,
        _ => Vec::new(),
    };
    let (mut ledger, err) = replay(&scan.events);
    let mut out: Vec<Event> = scan.events.clone();
    if let Some((i, _)) = err {
        // What does not apply is treated like history after the damage.
        let rest = out.split_off(i);
        after.splice(0..0, rest);
    }
    let mut report = Salvage {
        kept_before: out.len(),
        ..Salvage::default()
    };
    let record = |ledger: &mut Ledger, out: &mut Vec<Event>, ev: Event| {
        ledger.apply(&ev).map(|()| out.push(ev))
    };
    // Reservations only the table has: re-create them where the damage was.
    // (Only an event that creates a reservation counts: one whose creation was lost and whose
    // payment survived after the damage is re-created here, and the payment then applies.)
    let created_later: std::collections::HashSet<&ReservationId> = after
        .iter()
        .filter_map(|e| match e {
            Event::Reserved { reservation, .. }
            | Event::Restored { reservation, .. }
            | Event::WaitlistOffered { reservation, .. } => Some(&reservation.id),
            _ => None,
        })
        .collect();
    for row in &rows {
        if ledger.reservation(&row.id).is_some() || created_later.contains(&row.id) {
            continue;
        }
        let reservation = Reservation {
            state: ReservationState::Reserved,
            paid_at: None,
            updated_at: row.created_at,
            ..row.clone()
        };
        // A waitlist offer (`WAITLIST_ID.SALE_ID`) whose entry still waits is re-created as the
        // offer it was, so the entry is not offered a second ticket.
        let offered = row
            .id
            .as_str()
            .split_once('.')
            .and_then(|(w, _)| ticketrush_core::WaitlistId::parse(w).ok())
            .filter(|w| {
                ledger
                    .waitlist_entry(&row.sale_id, w)
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.state == ticketrush_core::WaitState::Waiting)
            });
        let plain = Event::Reserved {
            reservation: reservation.clone(),
            lease: 0,
            idempotency_key: None,
        };
        let result = match offered {
            // Not at the head of the line any more (the history around it is lost): the
            // acknowledged hold is kept as a plain one rather than dropped.
            Some(waitlist_id) => record(
                &mut ledger,
                &mut out,
                Event::WaitlistOffered {
                    waitlist_id,
                    reservation,
                },
            )
            .or_else(|_| record(&mut ledger, &mut out, plain)),
            None => record(&mut ledger, &mut out, plain),
        };
        match result {
            Ok(()) => report.recreated.push(row.id.clone()),
            Err(e) => report.unrecoverable.push(format!("{}: {e}", row.id)),
        }
    }
    for ev in after {
        match record(&mut ledger, &mut out, ev.clone()) {
            Ok(()) => report.kept_after += 1,
            // An offer whose waitlist entry (or the offer before it) was in the damaged
            // stretch: the acknowledged hold is kept as a plain one rather than dropped.
            Err(_) if matches!(ev, Event::WaitlistOffered { .. }) => {
                let Event::WaitlistOffered {
                    reservation,
                    waitlist_id,
                } = &ev
                else {
                    unreachable!()
                };
                let plain = Event::Reserved {
                    reservation: reservation.clone(),
                    lease: 0,
                    idempotency_key: None,
                };
                match record(&mut ledger, &mut out, plain) {
                    Ok(()) => {
                        report.kept_after += 1;
                        // Its entry, if it survived, no longer waits: its buyer holds the ticket.
                        let sale_id = reservation.sale_id.clone();
                        let waiting = ledger
                            .waitlist_entry(&sale_id, waitlist_id)
                            .ok()
                            .flatten()
                            .is_some_and(|e| e.state == ticketrush_core::WaitState::Waiting);
                        if waiting {
                            let at = reservation.created_at;
                            let withdrawn = Event::WaitlistWithdrawn {
                                sale_id,
                                waitlist_id: waitlist_id.clone(),
                                at,
                            };
                            let _ = record(&mut ledger, &mut out, withdrawn);
                        }
                    }
                    Err(e) => report.dropped.push(format!("{ev:?}: {e}")),
                }
            }
            Err(e) => report.dropped.push(format!("{ev:?}: {e}")),
        }
    }
    // Later states the table holds and the journal lost.
    for row in &rows {
        let Some(r) = ledger.reservation(&row.id) else {
            continue;
        };
        if r.state != ReservationState::Reserved || row.state == ReservationState::Reserved {
            continue;
        }
        let (sale_id, id, at) = (row.sale_id.clone(), row.id.clone(), row.updated_at);
        let ev = match row.state {
            ReservationState::Paid => Event::Paid {
                sale_id,
                id,
                at: row.paid_at.unwrap_or(at),
            },
            ReservationState::Cancelled => Event::Cancelled { sale_id, id, at },
            _ => Event::Expired { sale_id, id, at },
        };
        let freed = !matches!(ev, Event::Paid { .. });
        match record(&mut ledger, &mut out, ev) {
            Ok(()) => {
                report.settled_from_table.push(row.id.clone());
                // A freed ticket goes to the waitlist, as the ledger's own settles do.
                if freed {
                    ledger.offer_freed(&row.sale_id, at, &mut out);
                }
            }
            Err(e) => report.unrecoverable.push(format!("{}: {e}", row.id)),
        }
    }
    // A ticket freed in the history kept after the damage, whose offer was lost with it (its
    // waiting entry was in the damaged stretch), goes to whoever waits now, as it would have;
    // the hold runs from now.
    let now = ticketrush_core::UnixMs(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    );
    for sale in ledger.sales() {
        ledger.offer_freed(&sale.spec.id, now, &mut out);
    }
    ledger
        .check_invariants()
        .map_err(|e| format!("the salvaged history does not add up: {e}"))?;
    let mut file = journal::MAGIC.to_vec();
    let mut frames = Vec::new();
    for ev in &out {
        journal::encode(ev, &mut frames);
        if frames.len() >= 1024 * 1024 {
            journal::block(&frames, &mut file);
            frames.clear();
        }
    }
    if !frames.is_empty() {
        journal::block(&frames, &mut file);
    }
    let path = dir.join(SALVAGED_FILE);
    std::fs::write(&path, &file).map_err(|e| e.to_string())?;
    std::fs::File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(|e| e.to_string())?;
    report.path = path.clone();
    if install {
        // No node may write the journal meanwhile: hold the data dir's lock, as a node does.
        let lock = std::fs::File::create(dir.join(ticketrush_store::embedded::LOCK_FILE))
            .map_err(|e| e.to_string())?;
        if lock.try_lock().is_err() {
            return Err(format!(
                "{} is in use by a running node: stop it first",
                dir.display()
            ));
        }
        // In an order that a crash at any step leaves whole: the orders table first follows
        // from the start (right for either journal), the damaged journal is kept by a second
        // name, then the salvaged one replaces it in one rename.
        orders_table::replay_from_start(dir).map_err(|e| e.to_string())?;
        let journal = dir.join(JOURNAL_FILE);
        let damaged = dir.join(DAMAGED_FILE);
        let _ = std::fs::remove_file(&damaged);
        std::fs::hard_link(&journal, &damaged).map_err(|e| e.to_string())?;
        std::fs::rename(&path, &journal).map_err(|e| e.to_string())?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| e.to_string())?;
        report.path = journal;
    }
    Ok(report)
}
