//! The embedded store: the ledger in memory, made durable by a journal with group commit.
//!
//! Every change happens in one critical section: take the lock, let the ledger decide, append
//! the resulting events' frames to the pending buffer, release the lock. A dedicated thread (the
//! journal writer) swaps the buffer out, writes it, `fdatasync`s, and publishes how far the
//! journal is durable. A caller whose answer must survive a crash waits for that point before
//! answering; everyone who arrived during one fsync shares the next one, which is what makes
//! durability cheap under load (one fsync per batch of batches).
//!
//! Durability: an acknowledged reservation, payment or cancellation has been `fdatasync`ed, so
//! it survives a process crash (`kill -9`) and a power loss (on a disk that honours flushes).
//! Expiries are journaled but not waited for: after a crash the reaper expires due holds again.
//!
//! If a write or fsync fails, the process aborts: after a failed fsync the kernel may have
//! dropped the dirty pages, so the only safe state is the journal as it is on disk (the
//! "fsyncgate" lesson). Restarting replays it.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::SystemTime;

use ticketrush_core::{
    Event, IdempotencyKey, Ledger, LedgerError, Reservation, ReservationId, ReserveItem, SaleId,
    SaleSpec, SaleView, UnixMs, UserId,
};
use tokio::sync::watch;

use crate::journal;
use crate::orders_table::OrdersTable;
use crate::{BatchOutcome, BoxFuture, ReapReport, Snapshot, Store, StoreError, StoreResult};

/// Most journal bytes waiting for the writer. The writer drains in one fsync what arrived
/// during the last; a backlog this large means the disk has stalled, and taking more changes
/// would only grow memory and the time to the next acknowledgement.
pub const JOURNAL_PENDING_BYTES_MAX: usize = 32 * 1024 * 1024;

const JOURNAL_FILE: &str = "journal.log";
const LOCK_FILE: &str = "LOCK";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data dir {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("data dir {0} is in use by another ticketrush process")]
    Locked(PathBuf),
    #[error("cannot open the orders table in {dir}: {reason}")]
    Orders { dir: PathBuf, reason: String },
    #[error("journal {path} is damaged at event {index}: {reason}")]
    Corrupt {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

/// What opening found in the data dir, for the start-up log.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    pub events: usize,
    pub torn_bytes: u64,
    pub leases_reclaimed: usize,
}

struct State {
    ledger: Ledger,
    /// Frames not yet handed to the writer.
    pending: Vec<u8>,
    /// Sequence number of the last event appended to `pending`.
    seq: u64,
    shutdown: bool,
}

/// Shared between callers and the journal writer thread.
struct Shared {
    /// The ledger and the pending frames. A std mutex: it is never held across an `.await`,
    /// and every critical section is a few map operations plus serialising the events.
    state: Mutex<State>,
    /// Wakes the writer when frames are pending or on shutdown.
    wake: Condvar,
    /// The sequence number durable on disk, published by the writer after each fsync.
    durable: watch::Sender<u64>,
    /// The journal's length in bytes that is durable: how far the orders table may read.
    durable_bytes: watch::Sender<u64>,
}

pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// The orders table in the data dir, following the journal (stopped after the writer).
    orders: Option<OrdersTable>,
    /// Held for the store's lifetime: the advisory lock that keeps a second process out.
    _lock: File,
}

fn now_ms() -> UnixMs {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    UnixMs(d.as_millis() as i64)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`: replays the journal, cuts a torn tail, takes back
    /// any lease a first-version journal left open, and starts the journal writer.
    pub fn open(dir: &Path) -> Result<(EmbeddedStore, Recovery), OpenError> {
        let io_err = |source| OpenError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let lock = File::create(dir.join(LOCK_FILE)).map_err(io_err)?;
        if lock.try_lock().is_err() {
            return Err(OpenError::Locked(dir.to_path_buf()));
        }
        let path = dir.join(JOURNAL_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        let replay = journal::read_all(&mut file).map_err(io_err)?;
        let mut ledger = Ledger::new();
        for (index, ev) in replay.events.iter().enumerate() {
            ledger.apply(ev).map_err(|e| OpenError::Corrupt {
                path: path.clone(),
                index,
                reason: e.to_string(),
            })?;
        }
        if replay.torn_bytes > 0 {
            tracing::warn!(
                torn_bytes = replay.torn_bytes,
                "journal ends in a torn frame (a crash mid-write); cutting it off"
            );
            file.set_len(replay.good_len).map_err(io_err)?;
        }
        file.seek(SeekFrom::Start(replay.good_len))
            .map_err(io_err)?;
        // A first-version journal may leave leases open; the process that held them is gone.
        let mut events = Vec::new();
        let leases_reclaimed = ledger.reclaim_all(&mut events);
        let mut buf = Vec::new();
        for ev in &events {
            journal::encode(ev, &mut buf);
        }
        file.write_all(&buf).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        sync_dir(dir).map_err(io_err)?;
        if let Err(e) = ledger.check_invariants() {
            return Err(OpenError::Corrupt {
                path,
                index: replay.events.len(),
                reason: e,
            });
        }
        let recovery = Recovery {
            events: replay.events.len(),
            torn_bytes: replay.torn_bytes,
            leases_reclaimed,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ledger,
                pending: Vec::new(),
                seq: 0,
                shutdown: false,
            }),
            wake: Condvar::new(),
            durable: watch::Sender::new(0),
            durable_bytes: watch::Sender::new(replay.good_len + buf.len() as u64),
        });
        let orders =
            OrdersTable::start(dir, &path, shared.durable_bytes.subscribe()).map_err(|e| {
                OpenError::Orders {
                    dir: dir.to_path_buf(),
                    reason: e.to_string(),
                }
            })?;
        let writer = {
            let shared = shared.clone();
            let offset = replay.good_len + buf.len() as u64;
            std::thread::Builder::new()
                .name("journal-writer".into())
                .spawn(move || write_loop(&shared, file, offset))
                .map_err(io_err)?
        };
        let store = EmbeddedStore {
            shared,
            writer: Some(writer),
            orders: Some(orders),
            _lock: lock,
        };
        Ok((store, recovery))
    }

    /// The rows of a sale in the embedded orders table, once it holds every change the ledger
    /// holds now (waiting up to `within` for the journal and then the table). `None` if they
    /// did not catch up in time.
    pub fn order_rows(
        &self,
        sale: &SaleId,
        within: std::time::Duration,
    ) -> Result<Option<Vec<Reservation>>, String> {
        let orders = self.orders.as_ref().expect("open until dropped");
        // Everything the ledger holds now (a snapshot taken before this call included) must
        // first be on disk: expiries and lease changes are journaled without anyone waiting.
        let deadline = std::time::Instant::now() + within;
        let seq = self.lock().seq;
        while *self.shared.durable.borrow() < seq {
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let durable = *self.shared.durable_bytes.borrow();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !orders.wait_caught_up(durable, left) {
            return Ok(None);
        }
        orders.rows_of(sale).map(Some).map_err(|e| e.to_string())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("ledger lock poisoned")
    }

    /// Runs one ledger operation in the critical section and queues its events for the
    /// journal. Answers the result and the sequence number to wait for before answering.
    fn mutate<T>(
        &self,
        op: impl FnOnce(&mut Ledger, UnixMs, &mut Vec<Event>) -> Result<T, LedgerError>,
    ) -> StoreResult<(T, u64)> {
        let mut st = self.lock();
        if st.pending.len() > JOURNAL_PENDING_BYTES_MAX {
            return Err(StoreError::Unavailable(
                "the journal is not keeping up with writes (disk stalled?)".into(),
            ));
        }
        let mut events = Vec::new();
        let result = op(&mut st.ledger, now_ms(), &mut events);
        if !events.is_empty() {
            for ev in &events {
                journal::encode(ev, &mut st.pending);
            }
            st.seq += events.len() as u64;
            self.shared.wake.notify_one();
        }
        // Even an answer that recorded nothing (a replayed key, paying a paid reservation) may
        // rest on events not yet on disk: it waits for everything recorded before it.
        Ok((result?, st.seq))
    }

    /// Waits until the journal is durable up to `seq`.
    async fn durable(&self, seq: u64) -> StoreResult<()> {
        if seq == 0 {
            return Ok(());
        }
        let mut rx = self.shared.durable.subscribe();
        rx.wait_for(|d| *d >= seq)
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Unavailable("the journal writer has stopped".into()))
    }

    /// Like `mutate`, then waits for durability of whatever it recorded, also when the answer
    /// is a refusal (a pay that found the hold expired records the expiry).
    async fn mutate_durably<T>(
        &self,
        op: impl FnOnce(&mut Ledger, UnixMs, &mut Vec<Event>) -> Result<T, LedgerError>,
    ) -> StoreResult<T> {
        let (result, seq) = self.mutate(|l, now, out| Ok(op(l, now, out)))?;
        self.durable(seq).await?;
        result.map_err(StoreError::from)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.lock().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(mut o) = self.orders.take() {
            o.stop();
        }
    }
}

/// The journal writer: waits for pending frames, writes them, fsyncs, publishes.
fn write_loop(shared: &Shared, mut file: File, mut offset: u64) {
    loop {
        let (buf, seq) = {
            let mut st = shared.state.lock().expect("ledger lock poisoned");
            while st.pending.is_empty() && !st.shutdown {
                st = shared.wake.wait(st).expect("ledger lock poisoned");
            }
            if st.pending.is_empty() {
                return;
            }
            (std::mem::take(&mut st.pending), st.seq)
        };
        if let Err(e) = file.write_all(&buf).and_then(|()| file.sync_data()) {
            tracing::error!(error = %e, "journal write failed; aborting so a restart replays the journal as it is on disk");
            std::process::abort();
        }
        offset += buf.len() as u64;
        // Bytes first: whoever sees `durable` reach a sequence number then finds the byte
        // offset at least as far (`order_rows` relies on it).
        shared.durable_bytes.send_replace(offset);
        shared.durable.send_replace(seq);
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Store for EmbeddedStore {
    fn now(&self) -> UnixMs {
        now_ms()
    }

    fn create_sale(&self, spec: SaleSpec) -> BoxFuture<'_, StoreResult<SaleView>> {
        Box::pin(self.mutate_durably(move |l, now, out| l.create_sale(spec, now, out)))
    }

    fn sale<'a>(&'a self, id: &'a SaleId) -> BoxFuture<'a, StoreResult<Option<SaleView>>> {
        let v = self.lock().ledger.sale(id);
        Box::pin(async move { Ok(v) })
    }

    fn snapshot<'a>(&'a self, sale_id: &'a SaleId) -> BoxFuture<'a, StoreResult<Option<Snapshot>>> {
        let snap = {
            let inner = self.lock();
            inner.ledger.sale(sale_id).map(|view| Snapshot {
                view,
                reservations: inner
                    .ledger
                    .reservations()
                    .filter(|r| &r.sale_id == sale_id)
                    .cloned()
                    .collect(),
            })
        };
        Box::pin(async move { Ok(snap) })
    }

    fn sales(&self) -> BoxFuture<'_, StoreResult<Vec<SaleView>>> {
        let v = self.lock().ledger.sales();
        Box::pin(async move { Ok(v) })
    }

    fn reserve_batch<'a>(
        &'a self,
        sale_id: &'a SaleId,
        items: Vec<ReserveItem>,
    ) -> BoxFuture<'a, StoreResult<BatchOutcome>> {
        Box::pin(self.mutate_durably(move |l, now, out| {
            let outcomes = l.reserve_batch(sale_id, &items, now, out)?;
            let available = l.sale(sale_id).map_or(0, |v| v.available);
            Ok(BatchOutcome {
                outcomes,
                available,
            })
        }))
    }

    fn find_idempotent<'a>(
        &'a self,
        sale_id: &'a SaleId,
        user_id: &'a UserId,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, StoreResult<Option<Reservation>>> {
        // The replay is an acknowledgement too: answer it only once what it shows is durable.
        let (r, seq) = {
            let st = self.lock();
            (
                st.ledger.find_idempotent(sale_id, user_id, key).cloned(),
                st.seq,
            )
        };
        Box::pin(async move {
            self.durable(seq).await?;
            Ok(r)
        })
    }

    fn reservation<'a>(
        &'a self,
        id: &'a ReservationId,
    ) -> BoxFuture<'a, StoreResult<Option<Reservation>>> {
        let r = self.lock().ledger.reservation(id).cloned();
        Box::pin(async move { Ok(r) })
    }

    fn pay<'a>(
        &'a self,
        id: &'a ReservationId,
        user_id: &'a UserId,
    ) -> BoxFuture<'a, StoreResult<Reservation>> {
        Box::pin(self.mutate_durably(move |l, now, out| l.pay(id, user_id, now, out)))
    }

    fn cancel<'a>(
        &'a self,
        id: &'a ReservationId,
        user_id: &'a UserId,
    ) -> BoxFuture<'a, StoreResult<Reservation>> {
        Box::pin(self.mutate_durably(move |l, now, out| l.cancel(id, user_id, now, out)))
    }

    fn reap(&self, max: usize) -> BoxFuture<'_, StoreResult<ReapReport>> {
        let r = self
            .mutate(|l, now, out| {
                let expired = l.expire_due(now, max, out);
                let leases_reclaimed = l.reclaim_lapsed(now, out);
                Ok(ReapReport {
                    expired,
                    leases_reclaimed,
                })
            })
            .map(|(r, _)| r);
        Box::pin(async move { r })
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        let writer_alive = self.writer.as_ref().is_some_and(|w| !w.is_finished());
        let backlog_full = self.lock().pending.len() > JOURNAL_PENDING_BYTES_MAX;
        Box::pin(async move {
            if !writer_alive {
                return Err(StoreError::Unavailable(
                    "the journal writer has stopped".into(),
                ));
            }
            if backlog_full {
                return Err(StoreError::Unavailable(
                    "the journal is not keeping up".into(),
                ));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticketrush_core::ReserveOutcome;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ticketrush-embedded-{name}-{}-{}",
            std::process::id(),
            now_ms().0
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

    #[tokio::test]
    async fn reservations_survive_reopen() {
        let dir = temp_dir("reopen");
        let sale_id = SaleId::parse("s").unwrap();
        {
            let (store, rec) = EmbeddedStore::open(&dir).unwrap();
            assert_eq!(rec.events, 0);
            store.create_sale(sale("s", 3)).await.unwrap();
            let out = store
                .reserve_batch(&sale_id, vec![item(1), item(2)])
                .await
                .unwrap();
            assert!(matches!(out.outcomes[0], ReserveOutcome::Reserved(_)));
            assert_eq!(out.available, 1, "the batch answers what is left after it");
            let r1 = ReservationId::parse("r1").unwrap();
            store.pay(&r1, &UserId::parse("u1").unwrap()).await.unwrap();
            let out = store
                .reserve_batch(&sale_id, vec![item(3), item(4)])
                .await
                .unwrap();
            assert_eq!(out.outcomes[1], ReserveOutcome::NoStock);
            assert_eq!(out.available, 0);
        }
        let (store, rec) = EmbeddedStore::open(&dir).unwrap();
        assert_eq!(rec.leases_reclaimed, 0);
        let v = store.sale(&sale_id).await.unwrap().unwrap();
        assert_eq!((v.available, v.reserved, v.paid), (0, 2, 1));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A data dir written by the first version, whose nodes leased chunks of the pool: it
    /// opens, and the leases it left open come back to the pool for sale.
    #[tokio::test]
    async fn a_first_version_journal_opens_with_its_leases_back_in_the_pool() {
        let dir = temp_dir("v1");
        std::fs::create_dir_all(&dir).unwrap();
        let sale_id = SaleId::parse("s").unwrap();
        let mut r = ticketrush_core::Reservation {
            id: ReservationId::parse("r1").unwrap(),
            sale_id: sale_id.clone(),
            user_id: UserId::parse("u1").unwrap(),
            state: ticketrush_core::ReservationState::Reserved,
            created_at: UnixMs(1),
            expires_at: UnixMs(4_000_000_000_000),
            paid_at: None,
            updated_at: UnixMs(1),
        };
        let mut buf = Vec::new();
        journal::encode(
            &Event::SaleCreated {
                spec: sale("s", 10),
                at: UnixMs(0),
            },
            &mut buf,
        );
        journal::encode(
            &Event::LeaseGranted {
                sale_id: sale_id.clone(),
                lease: 1,
                node: ticketrush_core::NodeId::parse("n1").unwrap(),
                tickets: 5,
                deadline: UnixMs(4_000_000_000_000),
            },
            &mut buf,
        );
        journal::encode(
            &Event::Reserved {
                reservation: r.clone(),
                lease: 1,
                idempotency_key: None,
            },
            &mut buf,
        );
        std::fs::write(dir.join(JOURNAL_FILE), &buf).unwrap();
        let (store, rec) = EmbeddedStore::open(&dir).unwrap();
        assert_eq!((rec.events, rec.leases_reclaimed), (3, 1));
        let v = store.sale(&sale_id).await.unwrap().unwrap();
        assert_eq!((v.available, v.reserved), (9, 1));
        // All 9 sell from the pool.
        let items: Vec<ReserveItem> = (2..=11).map(item).collect();
        let out = store.reserve_batch(&sale_id, items).await.unwrap();
        assert_eq!(out.available, 0);
        assert_eq!(out.outcomes[9], ReserveOutcome::NoStock);
        r.id = ReservationId::parse("r2").unwrap();
        assert!(store.reservation(&r.id).await.unwrap().is_some());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_dir() {
        let dir = temp_dir("lock");
        let (_store, _) = EmbeddedStore::open(&dir).unwrap();
        assert!(matches!(
            EmbeddedStore::open(&dir),
            Err(OpenError::Locked(_))
        ));
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_appending_resumes() {
        let dir = temp_dir("torn");
        {
            let (store, _) = EmbeddedStore::open(&dir).unwrap();
            store.create_sale(sale("a", 1)).await.unwrap();
        }
        let path = dir.join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        {
            let (store, rec) = EmbeddedStore::open(&dir).unwrap();
            assert_eq!(rec.torn_bytes, 6);
            store.create_sale(sale("b", 1)).await.unwrap();
        }
        let (store, rec) = EmbeddedStore::open(&dir).unwrap();
        assert_eq!(rec.torn_bytes, 0);
        assert_eq!(store.sales().await.unwrap().len(), 2);
    }
}
