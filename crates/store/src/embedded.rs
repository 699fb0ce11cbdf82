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
//! If a write or fsync of the journal's data fails, the process aborts: after a failed fsync
//! the kernel may have dropped the dirty pages, so the only safe state is the journal as it is
//! on disk (the "fsyncgate" lesson). Restarting replays it.
//!
//! A full disk is not a crash. The journal keeps `JOURNAL_RESERVE_BYTES` beyond its end
//! allocated (written as zeros and fsynced by the writer, a step at a time), and the ledger
//! decides a change only while `JOURNAL_HEADROOM_BYTES` of that is free, so a data write never
//! needs new space. When reserving fails (`ENOSPC`), changes are refused as unavailable (the
//! node answers 503 with `Retry-After`, `/readyz` 503), reads go on, and the writer retries
//! every second: selling resumes by itself when space comes back.
//!
//! Damage is never cut silently (see `journal.rs` for how it is told from a torn write): a
//! journal damaged in the middle, or an orders table that holds more history than the journal,
//! refuses to open with the offset and what is affected; `ticketrush journal verify` reports
//! it in full.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use ticketrush_core::{
    Event, IdempotencyKey, Ledger, LedgerError, QueueId, Reservation, ReservationId, ReserveItem,
    SaleId, SaleSpec, SaleView, UnixMs, UserId, WaitlistEntry, WaitlistId,
};
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::follower::{Follow, FollowError, Following, JournalFollower};
use crate::journal;
use crate::{
    BatchOutcome, BoxFuture, QueueAnswer, ReapReport, Snapshot, Store, StoreError, StoreResult,
    WaitlistAnswer,
};

/// Most journal bytes waiting for the writer. The writer drains in one fsync what arrived
/// during the last; a backlog this large means the disk has stalled, and taking more changes
/// would only grow memory and the time to the next acknowledgement.
pub const JOURNAL_PENDING_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Journal space kept allocated beyond what it holds (see the module doc): a full disk shows
/// as a failure to reserve this, before any acknowledged write is at stake.
pub const JOURNAL_RESERVE_BYTES: u64 = if cfg!(test) { 2 } else { 8 } * 1024 * 1024;
/// Reserved room a change needs before the ledger may decide it: more than the largest change
/// (a batch of 4,096 reservations is at most about 2.2 MB of frames).
pub const JOURNAL_HEADROOM_BYTES: u64 = if cfg!(test) { 1 } else { 4 } * 1024 * 1024;
/// Zeros written (and fsynced) per reserving step, so one step delays a commit little.
const RESERVE_STEP_BYTES: u64 = 1024 * 1024;
/// While the disk is full, how often the writer tries to reserve again.
const RESERVE_RETRY: Duration = Duration::from_secs(1);

pub const JOURNAL_FILE: &str = "journal.log";
/// A journal being written to replace `journal.log` (compaction, conversion) until its rename.
pub const JOURNAL_NEW_FILE: &str = "journal.log.new";
/// Where a first-version journal is kept (hard-linked) when it is converted to format 2.
pub const JOURNAL_V1_FILE: &str = "journal.v1.log";
pub const LOCK_FILE: &str = "LOCK";

/// The refusal of a change while the journal cannot reserve space.
pub const DISK_FULL: &str = "the data dir's disk is full: changes wait until space is freed";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data dir {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("data dir {0} is in use by another ticketrush process")]
    Locked(PathBuf),
    #[error("cannot follow the journal with the orders table in {dir}: {reason}")]
    Orders { dir: PathBuf, reason: String },
    #[error("journal {path} is damaged at event {index}: {reason}")]
    Corrupt {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error(
        "journal {path} is damaged at byte {at}: valid data follows from byte {resumes_at} \
         ({after}). Acknowledged changes may be in the damaged bytes, so the node will not \
         start from what precedes them. Nothing was changed on disk. Run `ticketrush journal \
         verify --data-dir {dir}` for what is affected"
    )]
    Damaged {
        path: PathBuf,
        dir: PathBuf,
        at: u64,
        resumes_at: u64,
        after: String,
    },
    #[error(
        "the orders table in {dir} holds journal history up to byte {table} but the journal \
         ends at byte {journal}: the journal lost acknowledged changes (or is another data \
         dir's). Nothing was changed on disk. Run `ticketrush journal verify --data-dir {dir}`"
    )]
    JournalBehindOrders {
        dir: PathBuf,
        table: u64,
        journal: u64,
    },
}

/// What opening found in the data dir, for the start-up log.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    pub events: usize,
    pub torn_bytes: u64,
    pub leases_reclaimed: usize,
    /// The journal was in the first version's format and was converted (the old file is kept
    /// as `journal.v1.log`).
    pub converted: bool,
    /// The journal was compacted to its records (see `Compaction`).
    pub compacted: bool,
    /// The disk had no room to reserve journal space: the store opened not ready.
    pub disk_full: bool,
}

/// Whether `open` compacts the journal: rewrites it as the state it holds, one record per sale
/// and reservation, dropping the history behind them (the changes that settled each
/// reservation, the first version's lease events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compaction {
    /// When the history holds at least `COMPACT_MIN_EVENTS` events and half again as many
    /// as there are records.
    Auto,
    Always,
    Never,
}

/// How `open` opens a data dir.
pub struct Options {
    pub compaction: Compaction,
    /// The orders table that follows the journal (`ticketrush_orders::SqliteOrders`); `None`:
    /// no table (a data dir's table, if any, is then neither checked nor written, and
    /// `Compaction::Auto` does not compact, so that its offsets keep their meaning).
    pub orders: Option<Arc<dyn JournalFollower>>,
    /// What the ledger decides by: the system clock, or a test's manual one.
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    /// Compaction `Auto`, no orders table, the system clock.
    fn default() -> Options {
        Options {
            compaction: Compaction::Auto,
            orders: None,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Below this many events, a journal replays fast whatever its shape: not worth a rewrite.
pub const COMPACT_MIN_EVENTS: usize = if cfg!(test) { 100 } else { 100_000 };

struct State {
    ledger: Ledger,
    /// Frames not yet handed to the writer.
    pending: Vec<u8>,
    /// Sequence number of the last event appended to `pending`.
    seq: u64,
    /// Journal bytes written or pending (block headers included): where the next frame lands.
    journal_end: u64,
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
    /// The journal file's allocated length (history plus reserved zeros), set by the writer.
    reserved_end: AtomicU64,
    /// Reserving failed and there is not room for a change: refuse changes, not ready.
    disk_full: AtomicBool,
}

pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// The orders table in the data dir, following the journal (stopped after the writer).
    orders: Option<Box<dyn Following>>,
    clock: Arc<dyn Clock>,
    /// Held for the store's lifetime: the advisory lock that keeps a second process out.
    _lock: File,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`: replays the journal, zeroes a torn tail,
    /// refuses a damaged journal, converts a first-version journal, takes back any lease one
    /// left open, compacts a journal whose history outgrew its records, reserves journal space,
    /// and starts the journal writer and (with `options.orders`) the orders table's follower.
    pub fn open(dir: &Path, options: Options) -> Result<(EmbeddedStore, Recovery), OpenError> {
        let Options {
            compaction,
            orders: follower,
            clock,
        } = options;
        // Without the table's follower a compaction could not reset the table's offsets.
        let compaction = match (&follower, compaction) {
            (None, Compaction::Auto) => Compaction::Never,
            (_, c) => c,
        };
        let io_err = |source| OpenError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let lock = File::create(dir.join(LOCK_FILE)).map_err(io_err)?;
        if lock.try_lock().is_err() {
            return Err(OpenError::Locked(dir.to_path_buf()));
        }
        // A compaction or conversion cut short by a crash left its unfinished file: the journal
        // beside it is whole (the rename never happened).
        let _ = std::fs::remove_file(dir.join(JOURNAL_NEW_FILE));
        let path = dir.join(JOURNAL_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        let mut bytes = Vec::new();
        let t0 = std::time::Instant::now();
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let t_read = t0.elapsed();
        let scan = journal::scan(&bytes);
        let t_scan = t0.elapsed();
        let file_len = bytes.len() as u64;
        drop(bytes);
        if let journal::Tail::Damaged {
            resumes_at,
            events_after,
        } = &scan.tail
        {
            return Err(OpenError::Damaged {
                path,
                dir: dir.to_path_buf(),
                at: scan.data_end,
                resumes_at: *resumes_at,
                after: describe(events_after),
            });
        }
        // An orders table built from more history than the journal holds: the journal lost
        // acknowledged data (a cut, or a damaged last block taken for a torn write). Checked
        // before anything on disk changes. (A table that cannot be read now is checked when
        // its follower opens it.)
        // (A first-version table's offsets are that journal's bytes too: comparable alike.)
        if let Some(follower) = &follower {
            if let Ok(Some(table)) = follower.progress(dir) {
                if table > scan.data_end {
                    return Err(OpenError::JournalBehindOrders {
                        dir: dir.to_path_buf(),
                        table,
                        journal: scan.data_end,
                    });
                }
            }
        }
        let mut ledger = Ledger::new();
        for (index, ev) in scan.events.iter().enumerate() {
            ledger.apply(ev).map_err(|e| OpenError::Corrupt {
                path: path.clone(),
                index,
                reason: e.to_string(),
            })?;
        }
        let t_apply = t0.elapsed();
        if let Err(e) = ledger.check_invariants() {
            return Err(OpenError::Corrupt {
                path,
                index: scan.events.len(),
                reason: e,
            });
        }
        tracing::info!(
            events = scan.events.len(),
            bytes = scan.data_end,
            read_ms = t_read.as_millis() as u64,
            decode_ms = (t_scan - t_read).as_millis() as u64,
            apply_ms = (t_apply - t_scan).as_millis() as u64,
            check_ms = (t0.elapsed() - t_apply).as_millis() as u64,
            "journal replayed"
        );
        let torn_bytes = match scan.tail {
            journal::Tail::Torn { bytes } => bytes,
            _ => 0,
        };
        let converted = file_len > 0 && scan.format == journal::Format::V1;
        let mut data_end = scan.data_end;
        if converted || file_len == 0 {
            // A new journal, or the first version's: write format 2 beside it and put it in
            // place with one rename, so a crash leaves one whole journal or the other.
            if converted {
                tracing::warn!(
                    events = scan.events.len(),
                    torn_bytes,
                    "converting a first-version journal to format 2; the old one is kept as {JOURNAL_V1_FILE}"
                );
                let kept = dir.join(JOURNAL_V1_FILE);
                let _ = std::fs::remove_file(&kept);
                std::fs::hard_link(&path, &kept).map_err(io_err)?;
            }
            let (fresh, end) = write_v2(dir, &scan.events).map_err(io_err)?;
            std::fs::rename(&fresh, &path).map_err(io_err)?;
            sync_dir(dir).map_err(io_err)?;
            file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err)?;
            data_end = end;
        } else if torn_bytes > 0 {
            // An unfinished last write, never acknowledged: zero it, so the next blocks are
            // followed by zeros as a clean journal's are.
            tracing::warn!(
                torn_bytes,
                at = data_end,
                "journal ends in an unfinished write (a crash mid-write); zeroing it"
            );
            file.write_all_at(&vec![0u8; torn_bytes as usize], data_end)
                .and_then(|()| file.sync_data())
                .map_err(io_err)?;
        }
        // A first-version journal may leave leases open; the process that held them is gone.
        let mut events = Vec::new();
        let leases_reclaimed = ledger.reclaim_all(&mut events);
        if !events.is_empty() {
            let mut frames = Vec::new();
            for ev in &events {
                journal::encode(ev, &mut frames);
            }
            let mut blk = Vec::new();
            journal::block(&frames, &mut blk);
            file.write_all_at(&blk, data_end)
                .and_then(|()| file.sync_data())
                .map_err(io_err)?;
            data_end += blk.len() as u64;
        }
        // Compaction: the journal becomes the state, one record per sale and reservation
        // (`Ledger::snapshot_events`), written beside it, fsynced and put in place with one
        // rename, so a crash at any moment leaves the old journal or the new one, whole. The
        // orders table is first set to follow from the start (its rows converge), as its
        // offset means nothing in the new file.
        let history = scan.events.len() + events.len();
        let wanted = match compaction {
            Compaction::Never => false,
            Compaction::Always => true,
            Compaction::Auto => history >= COMPACT_MIN_EVENTS && history * 2 > ledger.records() * 3,
        };
        let mut compacted = false;
        if wanted {
            let snapshot = ledger.snapshot_events();
            tracing::info!(
                history,
                records = snapshot.len(),
                "compacting the journal to its records"
            );
            match compact(dir, &path, &snapshot, follower.as_deref()) {
                Ok((f, end)) => {
                    (file, data_end, compacted) = (f, end, true);
                }
                // Compaction is an optimisation: a disk without room for the new journal (or
                // any other failure before the rename) leaves the journal as it was.
                Err(e) if compaction == Compaction::Auto => {
                    let _ = std::fs::remove_file(dir.join(JOURNAL_NEW_FILE));
                    tracing::warn!(error = %e, "could not compact the journal; opening it as it is");
                }
                Err(e) => {
                    let _ = std::fs::remove_file(dir.join(JOURNAL_NEW_FILE));
                    return Err(io_err(e));
                }
            }
        }
        let file_len = file.metadata().map_err(io_err)?.len().max(data_end);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ledger,
                pending: Vec::new(),
                seq: 0,
                journal_end: data_end,
                shutdown: false,
            }),
            wake: Condvar::new(),
            durable: watch::Sender::new(0),
            durable_bytes: watch::Sender::new(data_end),
            reserved_end: AtomicU64::new(file_len),
            disk_full: AtomicBool::new(false),
        });
        // Reserve before serving, and find out whether the disk has room beyond what is
        // reserved: a disk already full opens not ready, never ready-then-abort.
        while shared.reserved_end.load(Ordering::Acquire) < data_end + JOURNAL_RESERVE_BYTES {
            if !reserve_step(&shared, &file, data_end) {
                break;
            }
        }
        if !shared.disk_full.load(Ordering::Acquire) {
            let len = shared.reserved_end.load(Ordering::Acquire);
            let probe = file
                .write_all_at(&vec![0u8; RESERVE_STEP_BYTES as usize], len)
                .and_then(|()| file.set_len(len));
            if let Err(e) = probe {
                let _ = file.set_len(len);
                tracing::warn!(error = %e, "the data dir's disk is full: starting not ready");
                shared.disk_full.store(true, Ordering::Release);
            }
        }
        let disk_full = shared.disk_full.load(Ordering::Acquire);
        let orders = match &follower {
            None => None,
            Some(f) => Some(
                f.follow(Follow {
                    dir: dir.to_path_buf(),
                    data_end,
                    converted,
                    durable: shared.durable_bytes.subscribe(),
                })
                .map_err(|e| match e {
                    FollowError::Ahead { table } => OpenError::JournalBehindOrders {
                        dir: dir.to_path_buf(),
                        table,
                        journal: data_end,
                    },
                    FollowError::Failed(reason) => OpenError::Orders {
                        dir: dir.to_path_buf(),
                        reason,
                    },
                })?,
            ),
        };
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("journal-writer".into())
                .spawn(move || write_loop(&shared, file, data_end))
                .map_err(io_err)?
        };
        let recovery = Recovery {
            events: scan.events.len(),
            torn_bytes,
            leases_reclaimed,
            converted,
            compacted,
            disk_full,
        };
        let store = EmbeddedStore {
            shared,
            writer: Some(writer),
            orders,
            clock,
            _lock: lock,
        };
        Ok((store, recovery))
    }

    /// Whether changes are refused because the disk has no room for the journal.
    pub fn disk_full(&self) -> bool {
        self.shared.disk_full.load(Ordering::Acquire)
    }

    /// The rows of a sale in the embedded orders table, once it holds every change the ledger
    /// holds now (waiting up to `within` for the journal and then the table). `None` if they
    /// did not catch up in time. An error if the store was opened without the table.
    pub fn order_rows(
        &self,
        sale: &SaleId,
        within: std::time::Duration,
    ) -> Result<Option<Vec<Reservation>>, String> {
        let orders = self
            .orders
            .as_ref()
            .ok_or("this store was opened without its orders table")?;
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
        // Decide only what the reserved space can hold, so no data write needs new space.
        let room = self.shared.reserved_end.load(Ordering::Acquire);
        if self.shared.disk_full.load(Ordering::Acquire)
            || st.journal_end + (journal::HEADER_BYTES as u64) + JOURNAL_HEADROOM_BYTES > room
        {
            // The writer reserves more (or, on a full disk, has marked the store not ready).
            self.shared.wake.notify_one();
            return Err(StoreError::Refused(DISK_FULL.into()));
        }
        let mut events = Vec::new();
        let result = op(&mut st.ledger, self.clock.now(), &mut events);
        if !events.is_empty() {
            let before = st.pending.len();
            for ev in &events {
                journal::encode(ev, &mut st.pending);
            }
            let added = (st.pending.len() - before) as u64;
            debug_assert!(
                added <= JOURNAL_HEADROOM_BYTES,
                "a change larger than the headroom"
            );
            st.journal_end += added;
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

    /// Reads the ledger (no change) and answers once everything recorded before the read is
    /// durable: what it shows is then acknowledged state (an idempotent replay, a place in a
    /// line), never an event a crash could still take back.
    fn read_durably<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut Ledger, UnixMs) -> Result<T, LedgerError>,
    ) -> BoxFuture<'_, StoreResult<T>> {
        let (answer, seq) = {
            let mut st = self.lock();
            let answer = read(&mut st.ledger, self.clock.now());
            (answer, st.seq)
        };
        Box::pin(async move {
            let answer = answer?;
            self.durable(seq).await?;
            Ok(answer)
        })
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

/// The journal writer: waits for pending frames, writes them as one block, fsyncs,
/// publishes; between commits it keeps `JOURNAL_RESERVE_BYTES` allocated ahead, one step at a
/// time, and while the disk is full it tries again every `RESERVE_RETRY`.
fn write_loop(shared: &Shared, file: File, mut data_end: u64) {
    // The last reserving step succeeded: the disk has room again, so go on reserving at once
    // rather than a step per `RESERVE_RETRY`.
    let mut stepped = false;
    loop {
        let (frames, seq, reserve) = {
            let mut st = shared.state.lock().expect("ledger lock poisoned");
            let retry_at = std::time::Instant::now() + RESERVE_RETRY;
            loop {
                let reserve = shared.reserved_end.load(Ordering::Acquire)
                    < st.journal_end + JOURNAL_RESERVE_BYTES;
                let full = shared.disk_full.load(Ordering::Acquire);
                if !st.pending.is_empty() || st.shutdown || (reserve && (!full || stepped)) {
                    break;
                }
                if full {
                    // Try again after a while (refused changes wake the writer too often to
                    // count on a quiet timeout).
                    let left = retry_at.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    st = shared
                        .wake
                        .wait_timeout(st, left)
                        .expect("ledger lock poisoned")
                        .0;
                } else {
                    st = shared.wake.wait(st).expect("ledger lock poisoned");
                }
            }
            if st.pending.is_empty() && st.shutdown {
                return;
            }
            let frames = std::mem::take(&mut st.pending);
            if !frames.is_empty() {
                st.journal_end += journal::HEADER_BYTES as u64;
            }
            // While full, every retry is a reserving step: its success is the sign that the
            // disk has room again.
            let reserve = shared.reserved_end.load(Ordering::Acquire)
                < st.journal_end + JOURNAL_RESERVE_BYTES
                || shared.disk_full.load(Ordering::Acquire);
            (frames, st.seq, reserve)
        };
        if !frames.is_empty() {
            let mut blk = Vec::with_capacity(frames.len() + journal::HEADER_BYTES);
            journal::block(&frames, &mut blk);
            if let Err(e) = file
                .write_all_at(&blk, data_end)
                .and_then(|()| file.sync_data())
            {
                tracing::error!(error = %e, "journal write failed; aborting so a restart replays the journal as it is on disk");
                std::process::abort();
            }
            data_end += blk.len() as u64;
            // Bytes first: whoever sees `durable` reach a sequence number then finds the byte
            // offset at least as far (`order_rows` relies on it).
            shared.durable_bytes.send_replace(data_end);
            shared.durable.send_replace(seq);
        }
        stepped = reserve && reserve_step(shared, &file, data_end);
    }
}

/// Allocates one more step of journal space by writing zeros past the reserved end. Answers
/// whether it did; a failed write (a full disk) marks the store full, and a success that
/// leaves room for a change clears the mark. A failed fsync is fatal, as for the data.
fn reserve_step(shared: &Shared, file: &File, data_end: u64) -> bool {
    let at = shared.reserved_end.load(Ordering::Acquire).max(data_end);
    let zeros = vec![0u8; RESERVE_STEP_BYTES as usize];
    if let Err(e) = file.write_all_at(&zeros, at) {
        if !shared.disk_full.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, "cannot reserve journal space: refusing changes until the disk has room");
        }
        return false;
    }
    if let Err(e) = file.sync_data() {
        tracing::error!(error = %e, "journal fsync failed; aborting so a restart replays the journal as it is on disk");
        std::process::abort();
    }
    let reserved = at + RESERVE_STEP_BYTES;
    shared.reserved_end.store(reserved, Ordering::Release);
    let end = shared
        .state
        .lock()
        .expect("ledger lock poisoned")
        .journal_end;
    if reserved >= end + (journal::HEADER_BYTES as u64) + JOURNAL_HEADROOM_BYTES
        && shared.disk_full.swap(false, Ordering::AcqRel)
    {
        tracing::info!("journal space reserved again: accepting changes");
    }
    true
}

/// Compaction's steps (see `open`): the records written beside the journal and fsynced,
/// the orders table set to follow from the start, the rename, the directory synced. Answers
/// the new journal, open, and where its history ends.
fn compact(
    dir: &Path,
    path: &Path,
    snapshot: &[Event],
    follower: Option<&dyn JournalFollower>,
) -> io::Result<(File, u64)> {
    let (fresh, end) = write_v2(dir, snapshot)?;
    if let Some(f) = follower {
        f.replay_from_start(dir).map_err(io::Error::other)?;
    }
    std::fs::rename(&fresh, path)?;
    sync_dir(dir)?;
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    Ok((file, end))
}

/// Writes `events` as a new format-2 journal in `dir` (a temporary name, fsynced), answers its
/// path and where its history ends.
fn write_v2(dir: &Path, events: &[Event]) -> io::Result<(PathBuf, u64)> {
    let tmp = dir.join(JOURNAL_NEW_FILE);
    let mut out = journal::MAGIC.to_vec();
    let mut frames = Vec::new();
    for ev in events {
        journal::encode(ev, &mut frames);
        if frames.len() >= 1024 * 1024 {
            journal::block(&frames, &mut out);
            frames.clear();
        }
    }
    if !frames.is_empty() {
        journal::block(&frames, &mut out);
    }
    let f = File::create(&tmp)?;
    f.write_all_at(&out, 0)?;
    f.sync_all()?;
    Ok((tmp, out.len() as u64))
}

/// A short account of events: how many, of which reservations and sales (for messages about
/// damage).
pub fn describe(events: &[Event]) -> String {
    let reservations: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Reserved { reservation, .. } | Event::WaitlistOffered { reservation, .. } => {
                Some(reservation.id.as_str())
            }
            _ => None,
        })
        .collect();
    let mut sales: Vec<&str> = events.iter().map(|e| e.sale_id().as_str()).collect();
    sales.sort_unstable();
    sales.dedup();
    let first = reservations.first().copied().unwrap_or("none");
    format!(
        "{} events, {} new reservations (the first {first}) of sales {}",
        events.len(),
        reservations.len(),
        sales.join(", ")
    )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Store for EmbeddedStore {
    fn now(&self) -> UnixMs {
        self.clock.now()
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
        self.read_durably(move |l, _| Ok(l.find_idempotent(sale_id, user_id, key).cloned()))
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
        // Nothing due (the usual case): no change, so no journal room needed.
        let due = self
            .lock()
            .ledger
            .next_due()
            .is_some_and(|d| d <= self.clock.now());
        if !due && !self.lock().ledger.has_leases() {
            return Box::pin(async { Ok(ReapReport::default()) });
        }
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

    fn queue_join<'a>(
        &'a self,
        sale_id: &'a SaleId,
        queue_id: QueueId,
        user_id: UserId,
    ) -> BoxFuture<'a, StoreResult<QueueAnswer>> {
        Box::pin(self.mutate_durably(move |l, now, out| {
            let (entry, created) = l.queue_join(sale_id, queue_id, user_id, now, out)?;
            Ok(QueueAnswer {
                entry,
                created,
                now,
            })
        }))
    }

    fn queue_entry<'a>(
        &'a self,
        sale_id: &'a SaleId,
        queue_id: &'a QueueId,
    ) -> BoxFuture<'a, StoreResult<Option<QueueAnswer>>> {
        // Shown only once the join it shows is durable, like an idempotent replay.
        self.read_durably(move |l, now| {
            Ok(l.queue_entry(sale_id, queue_id, now)?
                .map(|entry| QueueAnswer {
                    entry,
                    created: false,
                    now,
                }))
        })
    }

    fn waitlist_join<'a>(
        &'a self,
        sale_id: &'a SaleId,
        waitlist_id: WaitlistId,
        user_id: UserId,
    ) -> BoxFuture<'a, StoreResult<WaitlistAnswer>> {
        Box::pin(self.mutate_durably(move |l, now, out| {
            let (entry, created) = l.waitlist_join(sale_id, waitlist_id, user_id, now, out)?;
            Ok(WaitlistAnswer { entry, created })
        }))
    }

    fn waitlist_entry<'a>(
        &'a self,
        sale_id: &'a SaleId,
        waitlist_id: &'a WaitlistId,
    ) -> BoxFuture<'a, StoreResult<Option<WaitlistEntry>>> {
        self.read_durably(move |l, _| l.waitlist_entry(sale_id, waitlist_id))
    }

    fn waitlist_withdraw<'a>(
        &'a self,
        sale_id: &'a SaleId,
        waitlist_id: &'a WaitlistId,
        user_id: &'a UserId,
    ) -> BoxFuture<'a, StoreResult<WaitlistEntry>> {
        Box::pin(self.mutate_durably(move |l, now, out| {
            l.waitlist_withdraw(sale_id, waitlist_id, user_id, now, out)
        }))
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        let writer_alive = self.writer.as_ref().is_some_and(|w| !w.is_finished());
        let backlog_full = self.lock().pending.len() > JOURNAL_PENDING_BYTES_MAX;
        let disk_full = self.disk_full();
        Box::pin(async move {
            if disk_full {
                return Err(StoreError::Unavailable(DISK_FULL.into()));
            }
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

    #[tokio::test]
    async fn reservations_survive_reopen() {
        let dir = temp_dir("reopen");
        let sale_id = SaleId::parse("s").unwrap();
        {
            let (store, rec) = EmbeddedStore::open(&dir, Options::default()).unwrap();
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
        let (store, rec) = EmbeddedStore::open(&dir, Options::default()).unwrap();
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
        let (store, rec) = EmbeddedStore::open(&dir, Options::default()).unwrap();
        assert_eq!(
            (rec.events, rec.leases_reclaimed, rec.converted),
            (3, 1, true)
        );
        assert!(
            dir.join(JOURNAL_V1_FILE).exists(),
            "the first-version journal is kept"
        );
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
        let (_store, _) = EmbeddedStore::open(&dir, Options::default()).unwrap();
        assert!(matches!(
            EmbeddedStore::open(&dir, Options::default()),
            Err(OpenError::Locked(_))
        ));
    }

    /// Where the journal's history ends, read as `open` reads it.
    fn data_end(dir: &Path) -> u64 {
        journal::scan(&std::fs::read(dir.join(JOURNAL_FILE)).unwrap()).data_end
    }

    #[tokio::test]
    async fn a_torn_tail_is_zeroed_and_appending_resumes() {
        let dir = temp_dir("torn");
        {
            let (store, _) = EmbeddedStore::open(&dir, Options::default()).unwrap();
            store.create_sale(sale("a", 1)).await.unwrap();
        }
        // The start of a block that never finished, where the next block would go.
        let end = data_end(&dir);
        let f = OpenOptions::new()
            .write(true)
            .open(dir.join(JOURNAL_FILE))
            .unwrap();
        f.write_all_at(&[200, 0, 0, 0, 1, 2], end).unwrap();
        drop(f);
        {
            let (store, rec) = EmbeddedStore::open(&dir, Options::default()).unwrap();
            assert_eq!(rec.torn_bytes, 6);
            store.create_sale(sale("b", 1)).await.unwrap();
        }
        let (store, rec) = EmbeddedStore::open(&dir, Options::default()).unwrap();
        assert_eq!(rec.torn_bytes, 0);
        assert_eq!(store.sales().await.unwrap().len(), 2);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Expiry follows the store's clock, not the wall: a one-minute hold expires when a manual
    /// clock passes its deadline, not a millisecond before, and the reaper frees the seat.
    #[tokio::test]
    async fn holds_expire_by_the_store_clock() {
        let dir = temp_dir("clock");
        let clock = crate::clock::ManualClock::starting_now();
        let options = Options {
            clock: Arc::new(clock.clone()),
            ..Options::default()
        };
        let (store, _) = EmbeddedStore::open(&dir, options).unwrap();
        let s = SaleId::parse("c").unwrap();
        let spec = SaleSpec::new(s.clone(), None, 1, None, Some(60), UnixMs(0)).unwrap();
        store.create_sale(spec).await.unwrap();
        let out = store.reserve_batch(&s, vec![item(1)]).await.unwrap();
        let ReserveOutcome::Reserved(r) = &out.outcomes[0] else {
            panic!("{out:?}")
        };
        assert_eq!(r.expires_at, store.now().plus_ms(60_000));
        clock.advance(Duration::from_millis(59_999));
        assert_eq!(store.reap(10).await.unwrap().expired, 0, "not yet due");
        clock.advance(Duration::from_millis(1));
        assert_eq!(store.reap(10).await.unwrap().expired, 1);
        let v = store.sale(&s).await.unwrap().unwrap();
        assert_eq!((v.available, v.reserved), (1, 0));
        let err = store.pay(&r.id, &r.user_id).await.unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
