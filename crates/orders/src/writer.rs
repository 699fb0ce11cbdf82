//! The order writer: sale event streams → `orders`, acknowledged only after the commit.
//!
//! One loop, one step at a time: find sales and attach to their streams; claim entries another
//! writer left pending too long (it died mid-batch); read new entries; write them in one
//! upsert; acknowledge them; now and then trim what every group acknowledged and measure the
//! lag. Any failure (Redis or PostgreSQL down, slow, or refusing) leaves the entries pending,
//! drops the failed connection, waits with a bounded backoff, and re-reads this writer's own
//! pending entries before any new one, so nothing is skipped and sales never wait for the
//! writer (the scripts only refuse new reservations when a stream's backlog reaches its bound).
//!
//! All writers share one consumer group, `orders`; each is a consumer named after its node.
//! Exactly-once in effect comes from the idempotent, monotonic upsert, not from the delivery.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Script, Value};
use ticketrush_core::SaleId;
use ticketrush_store::redis_store::{events_key, Conn, SaleKeys, SALES_KEY};
use tokio::sync::watch;

use crate::events::{latest_per_reservation, parse_entries, parse_read, Entry};
use crate::{OrdersDb, OrdersError, OrdersResult};

/// The consumer group every writer joins.
pub const GROUP: &str = ticketrush_store::redis_store::ORDERS_GROUP;
/// Most entries read from one stream per step. A `reserved` entry holds a node's whole batch
/// (typically tens of reservations, at most the batch size). Fewer entries per read cost more
/// reads and statements for the same rows, CPU the nodes share (measured in BENCHMARKS.md).
pub const BATCH_MAX: usize = 256;
/// Most rows in one upsert statement: a read's rows go in statements of at most this many,
/// so each stays well inside the statement timeout (20,000 rows take about 0.3 s here).
pub const ROWS_PER_STATEMENT_MAX: usize = 20_000;
/// Most sales one writer follows (the store's own bound).
const STREAMS_MAX: usize = ticketrush_core::ledger::SALES_MAX;
/// How often new sales are looked for, and streams trimmed and measured.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between retries after a failure.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest a Redis call may take before the step fails.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub redis_url: String,
    /// Certificates for `rediss://` URLs.
    pub redis_tls: ticketrush_store::RedisTls,
    pub postgres_url: String,
    /// PEM CA certificates for a TLS `sslmode` (verify-ca, verify-full); none: system roots.
    pub postgres_ca: Option<Vec<u8>>,
    /// This writer's consumer name in the group (the node id).
    pub consumer: String,
    /// Entries pending longer than this with another consumer are taken over: that writer is
    /// taken to be dead. Longer than any upsert may take (`db::PG_TIMEOUT`).
    pub claim_idle: Duration,
    /// Wait between reads when nothing was new.
    pub poll_idle: Duration,
}

impl WriterConfig {
    pub fn new(redis_url: &str, postgres_url: &str, consumer: &str) -> WriterConfig {
        WriterConfig {
            redis_url: redis_url.into(),
            redis_tls: ticketrush_store::RedisTls::default(),
            postgres_url: postgres_url.into(),
            postgres_ca: None,
            consumer: consumer.into(),
            claim_idle: Duration::from_secs(10),
            poll_idle: Duration::from_millis(20),
        }
    }
}

/// What the writer did, for `/metrics`; written by the writer task only.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub rows_written: AtomicU64,
    pub entries_acked: AtomicU64,
    pub batches: AtomicU64,
    pub batch_rows_last: AtomicU64,
    pub failures: AtomicU64,
    /// Entries pending or not yet delivered, over all streams (at the last measurement).
    pub lag_entries: AtomicU64,
    /// Age of the oldest of them, in milliseconds.
    pub lag_ms: AtomicU64,
}

impl WriterStats {
    /// The Prometheus text of these figures.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let rows = [
            (
                "ticketrush_orders_rows_written_total",
                "counter",
                "Order rows upserted into PostgreSQL.",
                &self.rows_written,
            ),
            (
                "ticketrush_orders_entries_acked_total",
                "counter",
                "Stream entries acknowledged after their commit.",
                &self.entries_acked,
            ),
            (
                "ticketrush_orders_batches_total",
                "counter",
                "Upserts committed.",
                &self.batches,
            ),
            (
                "ticketrush_orders_batch_rows_last",
                "gauge",
                "Rows in the last upsert.",
                &self.batch_rows_last,
            ),
            (
                "ticketrush_orders_failures_total",
                "counter",
                "Writer steps that failed (Redis or PostgreSQL); retried.",
                &self.failures,
            ),
            (
                "ticketrush_orders_lag_entries",
                "gauge",
                "Events pending or not yet delivered to a writer.",
                &self.lag_entries,
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ticketrush_orders_lag_seconds Age of the oldest event not yet written.\n# TYPE ticketrush_orders_lag_seconds gauge\nticketrush_orders_lag_seconds {:.3}",
            self.lag_ms.load(Relaxed) as f64 / 1000.0
        );
    }
}

/// A followed stream.
struct Stream {
    sale: SaleId,
    key: String,
    /// Re-read this consumer's own pending entries (after a start or a failure) before new ones.
    own_pending: bool,
}

/// The running writer task; stops when `stop` is called or dropped.
pub struct OrderWriter {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    pub stats: Arc<WriterStats>,
}

impl OrderWriter {
    pub fn start(config: WriterConfig) -> OrderWriter {
        let stats = Arc::new(WriterStats::default());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run(config, stats.clone(), rx));
        OrderWriter { stop, task, stats }
    }

    /// Stops after the step in progress (entries not yet committed stay pending).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Loop {
    config: WriterConfig,
    stats: Arc<WriterStats>,
    redis: Option<Conn>,
    db: Option<OrdersDb>,
    streams: Vec<Stream>,
    last_housekeeping: Option<Instant>,
    last_claim: Option<Instant>,
    trim: Script,
    attach: Script,
}

async fn run(config: WriterConfig, stats: Arc<WriterStats>, mut stop: watch::Receiver<bool>) {
    let mut lp = Loop {
        config,
        stats,
        redis: None,
        db: None,
        streams: Vec::new(),
        last_housekeeping: None,
        last_claim: None,
        trim: Script::new(include_str!("../lua/trim.lua")),
        attach: Script::new(include_str!("../lua/attach.lua")),
    };
    let mut backoff = Duration::from_millis(100);
    let mut last_error_log: Option<Instant> = None;
    while !*stop.borrow() {
        let wait = match lp.step().await {
            Ok(true) => {
                backoff = Duration::from_millis(100);
                continue;
            }
            Ok(false) => lp.config.poll_idle,
            Err(e) => {
                lp.stats.failures.fetch_add(1, Relaxed);
                // One line per few seconds while an outage lasts, not one per retry.
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(error = %e, "order writer step failed; retrying");
                    last_error_log = Some(Instant::now());
                }
                lp.recover(&e);
                let w = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                w
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn redis_call<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> OrdersResult<T> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(OrdersError::Timeout("redis", REDIS_TIMEOUT)),
    }
}

impl Loop {
    /// After a failure: drop a broken PostgreSQL connection, and re-read own pending entries.
    /// A stream whose group is gone (deleted by hand) is forgotten, so the next discovery
    /// attaches to it again instead of every read failing.
    fn recover(&mut self, e: &OrdersError) {
        if matches!(e, OrdersError::Redis(r) if r.to_string().contains("NOGROUP")) {
            self.streams.clear();
        }
        if matches!(
            e,
            OrdersError::Postgres(_)
                | OrdersError::Timeout("upsert" | "postgres connect" | "create table", _)
        ) || self.db.as_ref().is_some_and(OrdersDb::is_closed)
        {
            self.db = None;
        }
        for s in &mut self.streams {
            s.own_pending = true;
        }
    }

    async fn redis(&mut self) -> OrdersResult<Conn> {
        if let Some(c) = &self.redis {
            return Ok(c.clone());
        }
        let conn = Conn::connect(
            &self.config.redis_url,
            REDIS_TIMEOUT,
            &self.config.redis_tls,
        )
        .await
        .map_err(|e| OrdersError::Store(e.to_string()))?;
        self.redis = Some(conn.clone());
        Ok(conn)
    }

    /// One step; answers whether it wrote or acknowledged anything (then it goes again at once).
    async fn step(&mut self) -> OrdersResult<bool> {
        let mut conn = self.redis().await?;
        // Attach to new sales first, without PostgreSQL: from then on their events are kept
        // for the writers however long PostgreSQL stays away.
        if self
            .last_housekeeping
            .is_none_or(|t| t.elapsed() >= HOUSEKEEPING_EVERY)
        {
            // On a cluster the list of sales and each stream live on their own masters: one
            // that is down must not stop the rows of the others (a step fails only when
            // nothing could be read, below).
            if let Err(e) = self.discover(&mut conn).await {
                if !conn.is_cluster() {
                    return Err(e);
                }
                tracing::debug!(error = %e, "order writer: the list of sales is unreadable");
            }
            self.measure_and_trim(&mut conn).await?;
            self.last_housekeeping = Some(Instant::now());
        }
        if self.db.is_none() {
            self.db = Some(
                OrdersDb::connect(
                    &self.config.postgres_url,
                    self.config.postgres_ca.as_deref(),
                )
                .await?,
            );
        }
        if self.streams.is_empty() {
            return Ok(false);
        }
        let mut worked = false;
        if self
            .last_claim
            .is_none_or(|t| t.elapsed() >= self.config.claim_idle / 2)
        {
            for i in 0..self.streams.len() {
                let claimed = match self.claim(&mut conn, i).await {
                    Ok(c) => c,
                    Err(_) if conn.is_cluster() => continue,
                    Err(e) => return Err(e),
                };
                worked |= self.commit(&mut conn, i, claimed).await?;
            }
            self.last_claim = Some(Instant::now());
        }
        let read = self.read(&mut conn).await?;
        for (key, entries) in read {
            let Some(i) = self.streams.iter().position(|s| s.key == key) else {
                continue;
            };
            if entries.is_empty() {
                self.streams[i].own_pending = false;
                continue;
            }
            worked |= self.commit(&mut conn, i, entries).await?;
        }
        Ok(worked)
    }

    /// Follows every sale Redis lists that it does not follow yet.
    async fn discover(&mut self, conn: &mut Conn) -> OrdersResult<()> {
        let ids: Vec<String> =
            redis_call(redis::cmd("SMEMBERS").arg(SALES_KEY).query_async(conn)).await?;
        for id in ids {
            let Ok(sale) = SaleId::parse(&id) else {
                continue;
            };
            if self.streams.len() >= STREAMS_MAX || self.streams.iter().any(|s| s.sale == sale) {
                continue;
            }
            let keys = SaleKeys::of(&sale);
            let attached: i64 = redis_call(
                self.attach
                    .key(&keys.sale)
                    .key(&keys.events)
                    .arg(GROUP)
                    .invoke_async(conn),
            )
            .await?;
            if attached == 1 {
                self.streams.push(Stream {
                    key: events_key(&sale),
                    sale,
                    own_pending: true,
                });
            }
        }
        Ok(())
    }

    async fn measure_and_trim(&mut self, conn: &mut Conn) -> OrdersResult<()> {
        let (mut waiting, mut lag_ms) = (0u64, 0u64);
        for s in &self.streams {
            let r: Vec<String> = match redis_call(self.trim.key(&s.key).invoke_async(conn)).await {
                Ok(r) => r,
                // A cluster master that is down: its streams are measured next time.
                Err(_) if conn.is_cluster() => continue,
                Err(e) => return Err(e),
            };
            let n = |i: usize| r.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            waiting += n(0).max(0) as u64;
            if n(1) > 0 {
                lag_ms = lag_ms.max((n(2) - n(1)).max(0) as u64);
            }
        }
        self.stats.lag_entries.store(waiting, Relaxed);
        self.stats.lag_ms.store(lag_ms, Relaxed);
        Ok(())
    }

    /// Takes over entries another writer has held unacknowledged for `claim_idle`.
    async fn claim(&mut self, conn: &mut Conn, i: usize) -> OrdersResult<Vec<Entry>> {
        let idle_ms = self.config.claim_idle.as_millis() as u64;
        let reply: Value = redis_call(
            redis::cmd("XAUTOCLAIM")
                .arg(&self.streams[i].key)
                .arg(GROUP)
                .arg(&self.config.consumer)
                .arg(idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(BATCH_MAX)
                .query_async(conn),
        )
        .await?;
        // [next cursor, entries, deleted ids]
        let Value::Array(parts) = &reply else {
            return Ok(Vec::new());
        };
        Ok(parts.get(1).map(parse_entries).unwrap_or_default())
    }

    /// Reads new entries of every stream (own pending ones first where due): in one
    /// XREADGROUP on a single Redis; on a cluster, which refuses one call across slots, one
    /// per stream.
    async fn read(&mut self, conn: &mut Conn) -> OrdersResult<Vec<(String, Vec<Entry>)>> {
        let query = |streams: &[&Stream]| {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(GROUP)
                .arg(&self.config.consumer)
                .arg("COUNT")
                .arg(BATCH_MAX)
                .arg("STREAMS");
            for s in streams {
                cmd.arg(&s.key);
            }
            for s in streams {
                cmd.arg(if s.own_pending { "0" } else { ">" });
            }
            cmd
        };
        let all: Vec<&Stream> = self.streams.iter().collect();
        if !conn.is_cluster() {
            let reply: Value = redis_call(query(&all).query_async(conn)).await?;
            return Ok(parse_read(&reply));
        }
        // A master that is down (or failing over) holds up only its own sales' rows: the other
        // streams are read; the step fails only when no stream could be.
        let mut out = Vec::new();
        let mut failed = None;
        for s in all {
            match redis_call(query(&[s]).query_async::<Value>(conn)).await {
                Ok(reply) => {
                    let mut read = parse_read(&reply);
                    if read.is_empty() {
                        // Nothing of this stream (a nil reply): an empty read, so
                        // own_pending clears.
                        read.push((s.key.clone(), Vec::new()));
                    }
                    out.extend(read);
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Relaxed);
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Writes the rows of `entries` in one upsert, then acknowledges them all.
    async fn commit(
        &mut self,
        conn: &mut Conn,
        i: usize,
        entries: Vec<Entry>,
    ) -> OrdersResult<bool> {
        if entries.is_empty() {
            return Ok(false);
        }
        let sale = self.streams[i].sale.clone();
        let mut rows = Vec::with_capacity(entries.len());
        for e in &entries {
            match e.rows(&sale) {
                Ok(r) => rows.extend(r),
                // A malformed entry can never be written; acknowledging it keeps it from
                // blocking the stream, and the log (and the audit) tell.
                Err(err) => {
                    tracing::error!(error = %err, sale = %sale, "skipping an unreadable event")
                }
            }
        }
        let rows = latest_per_reservation(rows);
        let db = self.db.as_ref().expect("connected in step");
        for chunk in rows.chunks(ROWS_PER_STATEMENT_MAX) {
            db.upsert(chunk).await?;
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let _: i64 = redis_call(
            redis::cmd("XACK")
                .arg(&self.streams[i].key)
                .arg(GROUP)
                .arg(&ids)
                .query_async(conn),
        )
        .await?;
        self.stats
            .rows_written
            .fetch_add(rows.len() as u64, Relaxed);
        self.stats
            .entries_acked
            .fetch_add(entries.len() as u64, Relaxed);
        self.stats.batches.fetch_add(1, Relaxed);
        self.stats.batch_rows_last.store(rows.len() as u64, Relaxed);
        Ok(true)
    }
}

/// Events of a sale not yet written by the writers: pending in the group or not yet delivered.
/// `None` when no writer ever attached to the sale's stream. For `audit`, which waits for 0.
/// (It runs the writers' trim step, which only drops what every group acknowledged.)
pub async fn backlog(
    redis_url: &str,
    tls: &ticketrush_store::RedisTls,
    sale: &SaleId,
) -> OrdersResult<Option<u64>> {
    let mut conn = Conn::connect(redis_url, REDIS_TIMEOUT, tls)
        .await
        .map_err(|e| OrdersError::Store(e.to_string()))?;
    let trim = Script::new(include_str!("../lua/trim.lua"));
    let r: Vec<String> = redis_call(trim.key(events_key(sale)).invoke_async(&mut conn)).await?;
    let n = |i: usize| r.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok((n(4) > 0).then_some(n(0)))
}
