//! The `orders` table in both of its homes, and what keeps it true.
//!
//! Every reservation has one row in docs/API.md's `orders` table ([`schema`], defined once):
//! in SQLite in an embedded node's data dir ([`sqlite`], following the journal as the store's
//! `JournalFollower`; [`verify`] compares the two when a journal is damaged), or in PostgreSQL
//! in a cluster ([`postgres`], written by the [`writer`] from the sales' Redis streams). Both
//! homes are read through one interface, [`OrderRows`] (a sale's rows once the table has caught
//! up with the truth), by one [`audit`].
//!
//! The cluster's pipeline:
//! The Redis scripts append an event to a sale's stream in the same atomic step as each change
//! (`crates/store/lua/holds.lua`, `emit_reservation`); every reservation event carries the
//! whole record, so one event is enough to write a row. The [`writer`] reads the streams
//! through one consumer group shared by every writer, writes a batch with one multi-row upsert,
//! and acknowledges the entries only after the commit. The upsert is idempotent (the
//! reservation id is the key) and monotonic (a final state is never overwritten, a `reserved`
//! row is only ever replaced by a final one), so duplicate or reordered delivery converges to
//! the same rows.
//!
//! [`postgres::OrdersDb`] is the table there: created if missing, the upsert and the reads the
//! audit needs.

pub mod audit;
pub mod events;
pub mod postgres;
pub mod schema;
pub mod sqlite;
pub mod tls;
pub mod verify;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ticketrush_core::{Reservation, SaleId};
use ticketrush_store::embedded::{OpenError, Options, Recovery};
use ticketrush_store::{BoxFuture, EmbeddedStore};

pub use audit::{audit, EmbeddedRows, PostgresRows};
pub use postgres::OrdersDb;
pub use sqlite::SqliteOrders;
pub use writer::{OrderWriter, WriterConfig, WriterStats};

/// Errors of the pipeline; each carries what failed, for the log.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0} did not answer within {1:?}")]
    Timeout(&'static str, std::time::Duration),
    #[error("{0}")]
    Bad(String),
    /// Connecting to Redis failed (as the store reports it).
    #[error("{0}")]
    Store(String),
}

pub type OrdersResult<T> = Result<T, OrdersError>;

/// The rows of a sale as the orders table holds them once it caught up (or gave up waiting).
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// `None`: the table could not be read in full (the audit then checks the truth alone).
    pub rows: Option<Vec<Reservation>>,
    /// Why the rows may lack changes the truth has (the table is behind), if they may.
    pub behind: Option<String>,
}

/// The orders table, wherever it lives, as the audit reads it.
pub trait OrderRows: Send + Sync {
    /// The rows of `sale` once the table holds every change made before this call, waiting at
    /// most `within` for it to catch up.
    fn rows_caught_up<'a>(
        &'a self,
        sale: &'a SaleId,
        within: Duration,
    ) -> BoxFuture<'a, OrdersResult<Rows>>;
}

/// `EmbeddedStore::open` with the orders table following the journal: how a node, `demo`,
/// `audit` and the tests open a data dir.
pub fn open_embedded(dir: &Path) -> Result<(EmbeddedStore, Recovery), OpenError> {
    EmbeddedStore::open(dir, embedded_options())
}

/// The options of `open_embedded` (the orders table, automatic compaction, the system
/// clock), to change one of them.
pub fn embedded_options() -> Options {
    Options {
        orders: Some(Arc::new(SqliteOrders)),
        ..Options::default()
    }
}
