//! What the embedded store needs of the table that follows its journal.
//!
//! On one machine the journal is the event log, and the orders table
//! (`ticketrush_orders::SqliteOrders`, in the data dir) is a copy of it kept by a follower: it
//! reads whole blocks up to the point the journal writer has made durable and writes their
//! rows together with the journal offset reached. The store does not know how the table is
//! written; it needs three things of it, and this trait is them:
//! - how far the table has got (`progress`), read before `open` changes anything on disk, so
//!   that a journal that lost acknowledged history (the table is ahead of it) is refused;
//! - that the table apply the journal again from its start (`replay_from_start`), before a
//!   compaction or a salvaged journal makes the old offsets meaningless;
//! - a running follower (`follow`) that says how far it has written and reads a sale's rows.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ticketrush_core::{Reservation, SaleId};
use tokio::sync::watch;

/// The table that copies the journal, as the store sees it.
pub trait JournalFollower: Send + Sync + 'static {
    /// How far into the journal the table in `dir` was written (`None`: no table yet).
    fn progress(&self, dir: &std::path::Path) -> Result<Option<u64>, String>;

    /// Makes the table in `dir` apply the journal again from its start (its rows converge:
    /// a row is inserted once and its state only moves forward). Nothing when there is none.
    fn replay_from_start(&self, dir: &std::path::Path) -> Result<(), String>;

    /// Starts following the journal.
    fn follow(&self, from: Follow) -> Result<Box<dyn Following>, FollowError>;
}

/// Where a follower starts.
pub struct Follow {
    /// The data dir: the table lives in it beside the journal (`embedded::JOURNAL_FILE`,
    /// format 2).
    pub dir: PathBuf,
    /// Where the journal's history ends at open: a table written further refuses to start.
    pub data_end: u64,
    /// The journal was just rewritten from the first version's format: the table's offset
    /// means nothing, and every event is applied again.
    pub converted: bool,
    /// The journal's durable length in bytes, published after every fsync: the follower
    /// never reads past it, so no row exists for an event that is not durable.
    pub durable: watch::Receiver<u64>,
}

/// Why a follower could not start.
#[derive(Debug)]
pub enum FollowError {
    /// The table was written from journal history up to byte `table`, past the journal's end.
    Ahead {
        table: u64,
    },
    Failed(String),
}

/// A running follower.
pub trait Following: Send + Sync {
    /// Journal bytes whose rows are written.
    fn written(&self) -> u64;

    /// Every row of a sale as the table has it now.
    fn rows_of(&self, sale: &SaleId) -> Result<Vec<Reservation>, String>;

    /// Writes what is durable, then stops.
    fn stop(&mut self);

    /// Waits (bounded) until the rows of everything durable up to `durable_bytes` are written.
    fn wait_caught_up(&self, durable_bytes: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.written() < durable_bytes {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}
