//! The `orders` table in PostgreSQL (a cluster's home of it): the table of `crate::schema`,
//! the batch upsert, and reads for the audit.
//!
//! One statement writes a whole batch: `INSERT … SELECT FROM unnest(arrays) ON CONFLICT`,
//! measured against COPY into a staging table in BENCHMARKS.md; unnest needs no temporary
//! table and no second statement, and is as fast at the batch sizes the writer uses. Times
//! travel as Unix milliseconds and become `timestamptz` in SQL.

use std::time::Duration;

use ticketrush_core::{Reservation, ReservationId, ReservationState, SaleId, UnixMs, UserId};
use tokio_postgres::{Client, NoTls};

use crate::{OrdersError, OrdersResult};

/// docs/API.md's table (`crate::schema`), created if missing. The state check keeps anything
/// but the four states out. Under an advisory lock: two nodes starting at once would otherwise
/// race on `IF NOT EXISTS` (PostgreSQL then refuses one with a duplicate key in its catalog).
fn schema_sql() -> String {
    format!(
        "BEGIN;\nSELECT pg_advisory_xact_lock(7131734);\n{}COMMIT;\n",
        crate::schema::create_table(crate::schema::Dialect::Postgres)
    )
}

/// The upsert of a batch. A conflicting row changes only from `reserved` to a final state:
/// final states are final, and an older event arriving late cannot move a row back.
const UPSERT: &str = "
INSERT INTO orders (reservation_id, sale_id, user_id, state, created_at, expires_at, paid_at, updated_at)
SELECT r, s, u, st,
       to_timestamp(c / 1000.0), to_timestamp(e / 1000.0),
       to_timestamp(nullif(p, 0) / 1000.0), to_timestamp(m / 1000.0)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[], $8::int8[])
     AS t(r, s, u, st, c, e, p, m)
ON CONFLICT (reservation_id) DO UPDATE
   SET state = EXCLUDED.state, paid_at = EXCLUDED.paid_at, updated_at = EXCLUDED.updated_at
 WHERE orders.state = 'reserved' AND EXCLUDED.state <> 'reserved'
";

const ROWS_OF_SALE: &str = "
SELECT reservation_id, sale_id, user_id, state,
       (extract(epoch FROM created_at) * 1000)::int8,
       (extract(epoch FROM expires_at) * 1000)::int8,
       (extract(epoch FROM paid_at) * 1000)::int8,
       (extract(epoch FROM updated_at) * 1000)::int8
FROM orders WHERE sale_id = $1
";

/// Longest wait for PostgreSQL to accept a connection or answer a statement. A stalled server
/// then costs the writer a retry, not a hang; the entries stay pending meanwhile.
pub const PG_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the database holding `orders`.
pub struct OrdersDb {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for OrdersDb {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

async fn bounded<T>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> OrdersResult<T> {
    match tokio::time::timeout(PG_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(OrdersError::Timeout(what, PG_TIMEOUT)),
    }
}

/// Runs a connection until it closes.
async fn drive<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "postgres connection closed");
    }
}

impl OrdersDb {
    /// Connects (bounded by `PG_TIMEOUT`) and creates the table if missing. TLS follows the
    /// URL's `sslmode` (`crate::tls`), verified against `ca` (PEM) or the system's roots.
    pub async fn connect(url: &str, ca: Option<&[u8]>) -> OrdersResult<OrdersDb> {
        let (url, mode) = crate::tls::split_sslmode(url)
            .map_err(|e| OrdersError::Bad(format!("bad postgres url: {e}")))?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| OrdersError::Bad(format!("bad postgres url: {e}")))?;
        config.connect_timeout(PG_TIMEOUT);
        let tls = crate::tls::client_config(mode, ca).map_err(OrdersError::Bad)?;
        let (client, connection) = match tls {
            None => {
                let (client, conn) = bounded("postgres connect", config.connect(NoTls)).await?;
                (client, tokio::spawn(drive(conn)))
            }
            Some((pg_mode, rustls_config)) => {
                config.ssl_mode(pg_mode);
                let connector = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_config);
                let (client, conn) = bounded("postgres connect", config.connect(connector)).await?;
                (client, tokio::spawn(drive(conn)))
            }
        };
        let db = OrdersDb { client, connection };
        // The server gives up on a statement a little before the client does, so a statement
        // the writer abandoned does not keep running (and holding row locks) behind its retry.
        let limit_ms = PG_TIMEOUT.as_millis() - 500;
        let set = format!("SET statement_timeout = {limit_ms}");
        bounded("create table", db.client.batch_execute(&set)).await?;
        bounded("create table", db.client.batch_execute(&schema_sql())).await?;
        Ok(db)
    }

    /// Whether the connection is gone (the writer then makes a new one).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Writes a batch of rows in one statement (one implicit transaction). Rows must have
    /// distinct ids (see `events::latest_per_reservation`). Answers rows inserted or changed.
    pub async fn upsert(&self, rows: &[Reservation]) -> OrdersResult<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let sales: Vec<&str> = rows.iter().map(|r| r.sale_id.as_str()).collect();
        let users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
        let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
        let created: Vec<i64> = rows.iter().map(|r| r.created_at.0).collect();
        let expires: Vec<i64> = rows.iter().map(|r| r.expires_at.0).collect();
        let paid: Vec<i64> = rows.iter().map(|r| r.paid_at.map_or(0, |t| t.0)).collect();
        let updated: Vec<i64> = rows.iter().map(|r| r.updated_at.0).collect();
        bounded(
            "upsert",
            self.client.execute(
                UPSERT,
                &[
                    &ids, &sales, &users, &states, &created, &expires, &paid, &updated,
                ],
            ),
        )
        .await
    }

    /// Every row of a sale, as reservations (the same shape), for the audit.
    pub async fn rows_of(&self, sale: &SaleId) -> OrdersResult<Vec<Reservation>> {
        let rows = bounded("select", self.client.query(ROWS_OF_SALE, &[&sale.as_str()])).await?;
        rows.iter()
            .map(|row| {
                let bad = |what: &str| OrdersError::Bad(format!("order row with a bad {what}"));
                let id: &str = row.get(0);
                let state =
                    ReservationState::parse(row.get::<_, &str>(3)).ok_or_else(|| bad("state"))?;
                Ok(Reservation {
                    id: ReservationId::parse(id).map_err(|_| bad("reservation_id"))?,
                    sale_id: SaleId::parse(row.get(1)).map_err(|_| bad("sale_id"))?,
                    user_id: UserId::parse(row.get(2)).map_err(|_| bad("user_id"))?,
                    state,
                    created_at: UnixMs(row.get(4)),
                    expires_at: UnixMs(row.get(5)),
                    paid_at: row.get::<_, Option<i64>>(6).map(UnixMs),
                    updated_at: UnixMs(row.get(7)),
                })
            })
            .collect()
    }

    /// Runs a statement as is: for tests and operators' tools (deleting a row to see the
    /// audit fail, for one).
    pub async fn execute(&self, sql: &str) -> OrdersResult<u64> {
        bounded("statement", self.client.execute(sql, &[])).await
    }
}
