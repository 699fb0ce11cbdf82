//! The embedded store and its orders table together: damage to the journal is never a silent
//! loss (the table is the second copy that catches a journal cut short), and compaction keeps
//! the table converging on the new journal.

use std::path::{Path, PathBuf};

use ticketrush_core::{
    ReservationId, ReservationState, ReserveItem, ReserveOutcome, SaleId, SaleSpec, UnixMs, UserId,
};
use ticketrush_orders::{embedded_options, open_embedded};
use ticketrush_store::embedded::{
    Compaction, OpenError, Options, Recovery, JOURNAL_FILE, JOURNAL_NEW_FILE,
};
use ticketrush_store::{journal, Clock, EmbeddedStore, Store, SystemClock};

// `temp_dir`, `sale` and `item` repeat the store's unit tests' own: a crate's unit tests cannot
// share helpers with another crate's tests without building the store twice.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ticketrush-orders-{name}-{}-{}",
        std::process::id(),
        SystemClock.now().0
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn sale(id: &str, total: u64) -> SaleSpec {
    SaleSpec::new(
        SaleId::parse(id).unwrap(),
        None,
        total,
        None,
        None,
        UnixMs(0),
    )
    .unwrap()
}

fn item(n: u32) -> ReserveItem {
    ReserveItem {
        id: ReservationId::parse(&format!("r{n}")).unwrap(),
        user_id: UserId::parse(&format!("u{n}")).unwrap(),
        idempotency_key: None,
    }
}

/// Where the journal's history ends, read as `open` reads it.
fn data_end(dir: &Path) -> u64 {
    journal::scan(&std::fs::read(dir.join(JOURNAL_FILE)).unwrap()).data_end
}

fn open_with(dir: &Path, compaction: Compaction) -> Result<(EmbeddedStore, Recovery), OpenError> {
    EmbeddedStore::open(
        dir,
        Options {
            compaction,
            ..embedded_options()
        },
    )
}

/// What was acknowledged to clients: reservation ids, and which of them were paid.
struct Acked {
    reserved: Vec<ReservationId>,
    paid: Vec<ReservationId>,
}

/// A data dir with a sale of 1,000 seats and many acknowledged changes, in many blocks.
async fn busy_dir(name: &str) -> (PathBuf, Acked) {
    let dir = temp_dir(name);
    let (store, _) = open_embedded(&dir).unwrap();
    let s = SaleId::parse("s").unwrap();
    store.create_sale(sale("s", 1_000)).await.unwrap();
    let mut acked = Acked {
        reserved: Vec::new(),
        paid: Vec::new(),
    };
    for b in 0..40u32 {
        let items: Vec<ReserveItem> = (0..20).map(|i| item(b * 20 + i)).collect();
        let out = store.reserve_batch(&s, items).await.unwrap();
        for o in out.outcomes {
            let ReserveOutcome::Reserved(r) = o else {
                panic!("{o:?}")
            };
            if b % 3 == 0 {
                store.pay(&r.id, &r.user_id).await.unwrap();
                acked.paid.push(r.id.clone());
            }
            acked.reserved.push(r.id);
        }
    }
    drop(store);
    (dir, acked)
}

/// Flipped bits, zeroed sectors and cuts anywhere in a journal with acknowledged contents:
/// after each, the store either opens with every acknowledged reservation and payment and
/// no seat sold twice, or refuses to open and says why. Never a silent loss. (One test per
/// kind of fault, so that they run side by side: each trial opens a store, which reserves
/// journal space with an fsync.)
#[tokio::test]
async fn a_journal_with_flipped_bits_never_loses_acknowledged_changes_silently() {
    let (opened, refused) = damage_trials(0).await;
    // Both outcomes happen: damage in the reserved zeros is harmless, in the history not.
    assert!(
        opened > 0 && refused > 0,
        "opened {opened}, refused {refused}"
    );
}

#[tokio::test]
async fn a_journal_with_zeroed_sectors_never_loses_acknowledged_changes_silently() {
    let (_, refused) = damage_trials(1).await;
    assert!(refused > 0, "refused {refused}");
}

#[tokio::test]
async fn a_journal_cut_short_never_loses_acknowledged_changes_silently() {
    let (opened, refused) = damage_trials(2).await;
    // A cut in the reserved zeros is harmless; one in the history is caught by the table.
    assert!(
        opened > 0 && refused > 0,
        "opened {opened}, refused {refused}"
    );
}

/// Thirty trials of fault `kind` (0 flipped bit, 1 zeroed sector, 2 cut): answers how many
/// opened (with everything acknowledged) and how many were refused (with the journal as it was).
async fn damage_trials(kind: usize) -> (usize, usize) {
    let (dir, acked) = busy_dir(&format!("faults-{kind}")).await;
    let original = std::fs::read(dir.join(JOURNAL_FILE)).unwrap();
    let orders = std::fs::read(dir.join(ticketrush_orders::sqlite::ORDERS_FILE)).unwrap();
    let end = data_end(&dir) as usize;
    let (mut opened, mut refused) = (0, 0);
    // A small deterministic generator: the seeds are the test's cases.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for seed in (kind..90).step_by(3) {
        let mut bytes = original.clone();
        let fault = match kind {
            0 => {
                // In the history, or in the space reserved after it.
                let at = if seed % 2 == 0 {
                    next(end)
                } else {
                    end + next(bytes.len() - end)
                };
                bytes[at] ^= 1 << next(8);
                format!("bit flipped at {at}")
            }
            1 => {
                let at = next(end) / 512 * 512;
                let to = (at + 512).min(bytes.len());
                bytes[at..to].fill(0);
                format!("sector zeroed at {at}")
            }
            _ => {
                // In the history for half the trials (the table then holds more than the
                // journal), anywhere for the rest.
                let at = if seed % 2 == 0 {
                    next(end)
                } else {
                    next(bytes.len())
                };
                bytes.truncate(at);
                format!("cut at {at}")
            }
        };
        let copy = temp_dir(&format!("fault-{seed}"));
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::write(copy.join(JOURNAL_FILE), &bytes).unwrap();
        std::fs::write(copy.join(ticketrush_orders::sqlite::ORDERS_FILE), &orders).unwrap();
        match open_embedded(&copy) {
            Ok((store, _)) => {
                opened += 1;
                for id in &acked.reserved {
                    let r = store.reservation(id).await.unwrap();
                    assert!(r.is_some(), "{fault}: acknowledged {id} lost");
                }
                for id in &acked.paid {
                    let r = store.reservation(id).await.unwrap().unwrap();
                    assert_eq!(
                        r.state,
                        ReservationState::Paid,
                        "{fault}: payment of {id} lost"
                    );
                }
                let v = store
                    .sale(&SaleId::parse("s").unwrap())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(v.available + v.reserved + v.paid, 1_000, "{fault}");
                assert_eq!(v.reserved + v.paid, acked.reserved.len() as u64, "{fault}");
            }
            Err(e) => {
                refused += 1;
                let why = e.to_string();
                assert!(
                    matches!(
                        e,
                        OpenError::Damaged { .. }
                            | OpenError::JournalBehindOrders { .. }
                            | OpenError::Corrupt { .. }
                    ),
                    "{fault}: {why}"
                );
                assert!(why.contains("journal"), "{fault}: {why}");
                assert_eq!(
                    std::fs::read(copy.join(JOURNAL_FILE)).unwrap(),
                    bytes,
                    "{fault}: refused, yet the journal was changed"
                );
            }
        }
        let _ = std::fs::remove_dir_all(&copy);
    }
    let _ = std::fs::remove_dir_all(&dir);
    (opened, refused)
}

#[tokio::test]
async fn damage_in_the_middle_refuses_to_open_and_changes_nothing() {
    let (dir, _) = busy_dir("mid").await;
    let path = dir.join(JOURNAL_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = data_end(&dir) as usize / 2;
    bytes[at] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let e = open_embedded(&dir).err().expect("refused");
    let msg = e.to_string();
    assert!(matches!(e, OpenError::Damaged { .. }), "{msg}");
    assert!(msg.contains("journal verify"), "{msg}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the journal is untouched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A journal whose history outgrew its records is compacted when opened: the same state,
/// fewer bytes, the orders table converging on the new journal; and a compaction cut short
/// (its unfinished file left beside the journal, the orders table already set to follow
/// from the start) loses nothing.
#[tokio::test]
async fn compaction_keeps_the_state_and_survives_a_crash_midway() {
    let (dir, acked) = busy_dir("compact").await;
    let s = SaleId::parse("s").unwrap();
    // Settle many holds so the history (reserve + pay or cancel) outgrows the records.
    {
        let (store, rec) = open_with(&dir, Compaction::Never).unwrap();
        assert!(!rec.compacted);
        for id in acked
            .reserved
            .iter()
            .filter(|id| !acked.paid.contains(id))
            .take(400)
        {
            let r = store.reservation(id).await.unwrap().unwrap();
            store.cancel(id, &r.user_id).await.unwrap();
        }
    }
    let before = std::fs::read(dir.join(JOURNAL_FILE)).unwrap();
    let history_bytes = journal::scan(&before).data_end;
    let view_before;
    {
        // (`Auto` would too past `COMPACT_MIN_EVENTS`; 100,000 events is too long a test.)
        let (store, rec) = open_with(&dir, Compaction::Always).unwrap();
        assert!(rec.compacted, "{rec:?}");
        view_before = store.sale(&s).await.unwrap().unwrap();
    }
    let after = journal::scan(&std::fs::read(dir.join(JOURNAL_FILE)).unwrap());
    assert!(
        after.data_end * 10 < history_bytes * 8,
        "compacted {} of {history_bytes} bytes",
        after.data_end
    );
    // One record per sale and reservation.
    assert_eq!(after.events.len(), 1 + acked.reserved.len());
    // A crash in the middle of the next compaction: a torn new file, the table reset.
    std::fs::write(dir.join(JOURNAL_NEW_FILE), &before[..before.len() / 3]).unwrap();
    ticketrush_orders::sqlite::replay_from_start(&dir).unwrap();
    let (store, rec) = open_with(&dir, Compaction::Never).unwrap();
    assert!(!rec.compacted);
    assert!(!dir.join(JOURNAL_NEW_FILE).exists());
    assert_eq!(store.sale(&s).await.unwrap().unwrap(), view_before);
    for id in &acked.paid {
        let r = store.reservation(id).await.unwrap().unwrap();
        assert_eq!(r.state, ReservationState::Paid);
    }
    // The orders table caught up with the compacted journal and agrees with the ledger.
    let rows = store
        .order_rows(&s, std::time::Duration::from_secs(10))
        .unwrap()
        .expect("the orders table caught up");
    let snap = store.snapshot(&s).await.unwrap().unwrap();
    let report = ticketrush_core::audit_sale(&snap.view, &snap.reservations, Some(&rows));
    assert!(report.passed(), "{:?}", report.violations);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
