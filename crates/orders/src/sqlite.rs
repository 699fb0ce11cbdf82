//! The orders table of an embedded node: docs/API.md's `orders` table (`crate::schema`) in
//! SQLite, in the data dir, following the embedded store's journal ([`SqliteOrders`], the
//! store's `JournalFollower`).
//!
//! On one machine the journal is the event log, as the Redis Streams are in cluster mode, and
//! this is its order writer: a thread (`orders-writer`) that reads the journal file up to the
//! point the journal writer has made durable, turns reservation events into rows and writes
//! each chunk in one SQLite transaction together with the journal offset it reached. The offset
//! and the rows commit together, so a crash anywhere replays exactly what is missing; rows are
//! never written for events that are not yet durable, so a power loss cannot leave a row
//! without its reservation. Sales never wait for it.
//!
//! Times are RFC 3339 text in UTC (SQLite has no `timestamptz`), so the same queries (counts by
//! state, rows of a sale) and the same audit work as on PostgreSQL.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use ticketrush_core::{
    Event, Reservation, ReservationId, ReservationState, SaleId, UnixMs, UserId,
};
use ticketrush_store::follower::{Follow, FollowError, Following, JournalFollower};
use ticketrush_store::journal;
use tokio::sync::watch;

use crate::schema::{self, Dialect};

pub const ORDERS_FILE: &str = "orders.sqlite";

/// Most journal bytes read and written in one transaction.
const CHUNK_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Wait between looks at the durable point when there is nothing new.
const POLL: Duration = Duration::from_millis(20);

/// The table (`crate::schema`) and how far into the journal it was written.
fn schema_sql() -> String {
    format!(
        "PRAGMA journal_mode = WAL;\nPRAGMA synchronous = NORMAL;\n{}\
         CREATE TABLE IF NOT EXISTS orders_progress \
         (id integer PRIMARY KEY CHECK (id = 1), journal_offset integer NOT NULL);\n",
        schema::create_table(Dialect::Sqlite)
    )
}

/// The embedded store's orders table, as the store uses it (`EmbeddedStore::open` with
/// `Options { orders: Some(Arc::new(SqliteOrders)), .. }`; `crate::open_embedded` does that).
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteOrders;

impl JournalFollower for SqliteOrders {
    fn progress(&self, dir: &Path) -> Result<Option<u64>, String> {
        progress(dir).map_err(|e| e.to_string())
    }

    fn replay_from_start(&self, dir: &Path) -> Result<(), String> {
        replay_from_start(dir).map_err(|e| e.to_string())
    }

    fn follow(&self, from: Follow) -> Result<Box<dyn Following>, FollowError> {
        OrdersTable::start(
            &from.dir,
            &from.dir.join(ticketrush_store::embedded::JOURNAL_FILE),
            from.data_end,
            from.converted,
            from.durable,
        )
        .map(|t| Box::new(t) as Box<dyn Following>)
        .map_err(|e| match e {
            StartError::Ahead { table } => FollowError::Ahead { table },
            StartError::Sqlite(e) => FollowError::Failed(e.to_string()),
        })
    }
}

/// Why the table could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The table was written from journal history up to byte `table`, past the journal's end.
    #[error("the orders table is ahead of the journal (offset {table})")]
    Ahead { table: u64 },
}

/// The running orders writer of an embedded store.
pub struct OrdersTable {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// Journal bytes written into the table so far.
    written: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl OrdersTable {
    /// Opens (or creates) the table in `dir` and starts following `journal` (a format-2
    /// journal whose history ends at `data_end`) up to `durable`. `converted`: the journal was
    /// just rewritten from the first version's format, so the table's offset means nothing
    /// and every event is applied again (rows converge: inserts are ignored when present, and
    /// a state only moves forward). A table that holds more history than the journal refuses
    /// to start: the journal lost data, and rebuilding the table from it would lose the copy.
    /// A table that cannot be opened now (a full disk: SQLite needs room for its WAL) does not
    /// stop the node: the follower opens it once it can, and makes the same check then.
    pub fn start(
        dir: &Path,
        journal: &Path,
        data_end: u64,
        converted: bool,
        durable: watch::Receiver<u64>,
    ) -> Result<OrdersTable, StartError> {
        let path = dir.join(ORDERS_FILE);
        let opened = match open_table(&path, data_end, converted) {
            Ok(t) => Some(t),
            Err(StartError::Ahead { table }) => return Err(StartError::Ahead { table }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the orders table yet; retrying each second");
                None
            }
        };
        let offset = opened.as_ref().map_or(0, |(_, o)| *o);
        let file = File::open(journal)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(offset));
        let follower = Follower {
            conn: opened.map(|(c, _)| c),
            path: path.clone(),
            data_end,
            converted,
            file,
            offset,
            durable,
            stop: stop.clone(),
            written: written.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("orders-writer".into())
            .spawn(move || follower.run())
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(OrdersTable {
            path,
            stop,
            written,
            thread: Some(thread),
        })
    }
}

impl Following for OrdersTable {
    fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Read on a connection of its own.
    fn rows_of(&self, sale: &SaleId) -> Result<Vec<Reservation>, String> {
        Connection::open(&self.path)
            .and_then(|conn| read_rows(&conn, Some(sale)))
            .map_err(|e| e.to_string())
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for OrdersTable {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The table in `dir` as it is on disk, without following anything: every row and the journal
/// offset it was written up to (`None` when there is no table). For `journal verify`.
pub fn read_table(dir: &Path) -> rusqlite::Result<Option<(Vec<Reservation>, u64)>> {
    let path = dir.join(ORDERS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let offset: u64 = conn
        .query_row("SELECT journal_offset FROM orders_progress", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .map_or(0, |o| o.max(0) as u64);
    Ok(Some((read_rows(&conn, None)?, offset)))
}

/// Opens (or creates) the table and answers it with the journal offset to follow from.
fn open_table(
    path: &Path,
    data_end: u64,
    converted: bool,
) -> Result<(Connection, u64), StartError> {
    let conn = Connection::open(path)?;
    conn.execute_batch(&schema_sql())?;
    let mut offset: u64 = conn
        .query_row("SELECT journal_offset FROM orders_progress", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .map_or(0, |o| o.max(0) as u64);
    let start = journal::MAGIC.len() as u64;
    if converted {
        offset = start;
    } else if offset > data_end {
        return Err(StartError::Ahead { table: offset });
    }
    Ok((conn, offset.max(start)))
}

/// Makes the table in `dir` apply its journal again from the start (after the journal was
/// replaced by a salvaged one). Nothing when there is no table.
pub fn replay_from_start(dir: &Path) -> rusqlite::Result<()> {
    let path = dir.join(ORDERS_FILE);
    if !path.exists() {
        return Ok(());
    }
    let conn = Connection::open(&path)?;
    conn.execute("DELETE FROM orders_progress", [])?;
    Ok(())
}

/// How far into the journal the table in `dir` was written (`None`: no table, or none yet).
pub fn progress(dir: &Path) -> rusqlite::Result<Option<u64>> {
    let path = dir.join(ORDERS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let has_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'orders_progress'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    conn.query_row("SELECT journal_offset FROM orders_progress", [], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|o| o.map(|o| o.max(0) as u64))
}

/// The rows of one sale, or of all.
fn read_rows(conn: &Connection, sale: Option<&SaleId>) -> rusqlite::Result<Vec<Reservation>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM orders WHERE ?1 IS NULL OR sale_id = ?1",
        schema::column_list()
    ))?;
    let rows = stmt.query_map([sale.map(SaleId::as_str)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Option<String>>(6)?,
            r.get::<_, String>(7)?,
        ))
    })?;
    let bad =
        |what: &str| rusqlite::Error::InvalidColumnName(format!("order row with a bad {what}"));
    let time = |s: &str| UnixMs::parse_rfc3339(s).map_err(|_| bad("time"));
    let mut out = Vec::new();
    for row in rows {
        let (id, sale, user, state, created, expires, paid, updated) = row?;
        out.push(Reservation {
            id: ReservationId::parse(&id).map_err(|_| bad("reservation_id"))?,
            sale_id: SaleId::parse(&sale).map_err(|_| bad("sale_id"))?,
            user_id: UserId::parse(&user).map_err(|_| bad("user_id"))?,
            state: ReservationState::parse(&state).ok_or_else(|| bad("state"))?,
            created_at: time(&created)?,
            expires_at: time(&expires)?,
            paid_at: paid.as_deref().map(time).transpose()?,
            updated_at: time(&updated)?,
        });
    }
    Ok(out)
}

struct Follower {
    /// `None` until the table could be opened (see `OrdersTable::start`).
    conn: Option<Connection>,
    path: PathBuf,
    data_end: u64,
    converted: bool,
    file: File,
    offset: u64,
    durable: watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
}

impl Follower {
    fn run(mut self) {
        while self.conn.is_none() {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
            match open_table(&self.path, self.data_end, self.converted) {
                Ok((conn, offset)) => {
                    self.conn = Some(conn);
                    self.offset = offset;
                    self.written.store(offset, Ordering::Release);
                }
                Err(StartError::Ahead { table }) => {
                    tracing::error!(
                        table,
                        journal = self.data_end,
                        "the orders table is ahead of the journal: not following it; run \
                         `ticketrush journal verify`"
                    );
                    return;
                }
                Err(_) => {}
            }
        }
        let conn = self.conn.take().expect("opened before following");
        // Prepared once for the connection's life: preparing them per chunk cost about as much
        // as writing a row (BENCHMARKS.md, issue 17).
        // A failure (a locked or full database) is retried each second, as a failed chunk is.
        let mut stmts = loop {
            match Statements::prepare(&conn) {
                Ok(s) => break s,
                Err(e) => {
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    tracing::warn!(error = %e, "cannot prepare the orders table's statements; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        loop {
            let durable = *self.durable.borrow();
            if self.offset < durable {
                if let Err(e) = self.write_chunk(&conn, &mut stmts, durable) {
                    // The table is a copy of the journal: a failure costs a retry, not a sale.
                    // Asked to stop, it stops anyway: the next open resumes from the offset
                    // committed with the last good chunk.
                    if self.stop.load(Ordering::Acquire) {
                        tracing::warn!(error = %e, "orders table behind the journal at shutdown");
                        return;
                    }
                    tracing::warn!(error = %e, "orders table write failed; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                // Less than a chunk left: let more gather (at most `POLL`), so that a busy
                // sale's rows go in a few transactions a second, not one per group commit.
                // Stopping writes the rest at once.
                let left = self.durable.borrow().saturating_sub(self.offset);
                if left < CHUNK_BYTES_MAX && !self.stop.load(Ordering::Acquire) {
                    std::thread::sleep(POLL);
                }
                continue;
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    fn write_chunk(
        &mut self,
        conn: &Connection,
        stmts: &mut Statements<'_>,
        durable: u64,
    ) -> Result<(), Box<dyn std::error::Error>> {
        // Whole blocks only: a chunk, or the one block at the offset if it is larger.
        let mut header = [0u8; journal::HEADER_BYTES];
        self.file.read_exact_at(&mut header, self.offset)?;
        let first =
            journal::HEADER_BYTES as u64 + u64::from(u32::from_le_bytes(header[0..4].try_into()?));
        let len = (durable - self.offset).min(CHUNK_BYTES_MAX.max(first));
        let mut bytes = vec![0u8; len as usize];
        self.file.read_exact_at(&mut bytes, self.offset)?;
        let (events, good_len) = journal::decode_blocks(&bytes);
        if good_len == 0 {
            return Err(format!("no whole block at journal offset {}", self.offset).into());
        }
        // The statements are the connection's, so the transaction is begun on a shared borrow;
        // dropped without `commit` (an error below) it rolls back.
        let tx = conn.unchecked_transaction()?;
        for ev in &events {
            stmts.apply(ev)?;
        }
        let next = self.offset + good_len;
        stmts.progress.execute(params![next as i64])?;
        tx.commit()?;
        self.offset = next;
        self.written.store(next, Ordering::Release);
        Ok(())
    }
}

struct Statements<'c> {
    insert: rusqlite::Statement<'c>,
    settle: rusqlite::Statement<'c>,
    progress: rusqlite::Statement<'c>,
}

impl<'c> Statements<'c> {
    fn prepare(conn: &'c Connection) -> rusqlite::Result<Statements<'c>> {
        Ok(Statements {
            insert: conn.prepare(
                "INSERT OR IGNORE INTO orders VALUES (?1, ?2, ?3, 'reserved', ?4, ?5, NULL, ?6)",
            )?,
            settle: conn.prepare(
                "UPDATE orders SET state = ?2, paid_at = ?3, updated_at = ?4 \
                 WHERE reservation_id = ?1 AND state = 'reserved'",
            )?,
            progress: conn.prepare(
                "INSERT INTO orders_progress (id, journal_offset) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET journal_offset = excluded.journal_offset",
            )?,
        })
    }

    /// A reservation's row as it was made (`reserved`); nothing if the row exists.
    fn insert_row(&mut self, r: &ticketrush_core::Reservation) -> rusqlite::Result<()> {
        // A new row was last updated when it was made: one string for both columns.
        let created = r.created_at.to_rfc3339();
        self.insert.execute(params![
            r.id.as_str(),
            r.sale_id.as_str(),
            r.user_id.as_str(),
            created,
            r.expires_at.to_rfc3339(),
            created,
        ])?;
        Ok(())
    }

    /// One event's effect on the rows. The journal is ordered, so a reservation's row exists
    /// before any event that settles it.
    fn apply(&mut self, ev: &Event) -> rusqlite::Result<()> {
        let (id, state, at) = match ev {
            Event::Reserved { reservation: r, .. }
            | Event::WaitlistOffered { reservation: r, .. } => return self.insert_row(r),
            // A compacted journal's record: the row as it stands (inserted if missing, then
            // moved forward to its state as any settle is).
            Event::Restored { reservation: r, .. } => {
                self.insert_row(r)?;
                if r.state == ReservationState::Reserved {
                    return Ok(());
                }
                (&r.id, r.state, &r.updated_at)
            }
            Event::Paid { id, at, .. } => (id, ReservationState::Paid, at),
            Event::Cancelled { id, at, .. } => (id, ReservationState::Cancelled, at),
            Event::Expired { id, at, .. } => (id, ReservationState::Expired, at),
            _ => return Ok(()),
        };
        let paid_at = (state == ReservationState::Paid).then(|| at.to_rfc3339());
        self.settle.execute(params![
            id.as_str(),
            state.as_str(),
            paid_at,
            at.to_rfc3339()
        ])?;
        Ok(())
    }
}
