//! The order pipeline: every reservation reaches the PostgreSQL `orders` table, once in effect.
//!
//! The Redis scripts append an event to a sale's stream in the same atomic step as each change
//! (`crates/store/lua/prelude.lua`, `emit_reservation`); every reservation event carries the
//! whole record, so one event is enough to write a row. The [`writer`] reads the streams
//! through one consumer group shared by every writer, writes a batch with one multi-row upsert,
//! and acknowledges the entries only after the commit. The upsert is idempotent (the
//! reservation id is the key) and monotonic (a final state is never overwritten, a `reserved`
//! row is only ever replaced by a final one), so duplicate or reordered delivery converges to
//! the same rows.
//!
//! [`db::OrdersDb`] is the table: its schema (docs/API.md's contract, created if missing), the upsert
//! and the reads the audit needs.

pub mod db;
pub mod events;
pub mod tls;
pub mod writer;

pub use db::OrdersDb;
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
