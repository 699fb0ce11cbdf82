//! The Redis store: the global truth of every sale in Redis, changed only by Lua scripts.
//!
//! Cluster mode runs many nodes on one Redis. Each operation of the [`Store`] trait is one
//! script call, so it is atomic in Redis and costs one round trip; a batch of reservations is
//! one call however many items it holds. The scripts (`crates/store/lua/`) implement the same
//! rules as [`Ledger`](ticketrush_core::Ledger): every reservation decided against the sale's
//! one pool, the per-user limit and idempotency in the same step as the deduction, expiry back
//! to the pool (and the first version's leases, taken back once they lapse).
//! Their clock is Redis's `TIME`, so every node measures deadlines against one clock.
//!
//! Key layout: every key of a sale carries the hash tag `{sale:ID}`, so a sale lives in one
//! Redis Cluster slot and every script touches one slot. The one key outside a sale,
//! `ticketrush:sales` (the set of sale ids, for listing and the reaper), is written in its own
//! command before the sale's script runs, so a listed id whose sale does not exist is skipped.
//!
//! A reservation id carries its sale (`<26 random base32>.<sale id>`): finding a reservation
//! by id alone then needs no index outside the sale's slot.
//!
//! Durability is Redis's: with `appendonly yes` and `appendfsync always`, Redis fsyncs its
//! AOF before it answers, so a 2xx the node gives after the script answered survives a Redis
//! restart. Every call is bounded by `op_timeout`: a Redis that is down or stalled makes the
//! node answer 503 quickly, and the connection manager reconnects by itself.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use ticketrush_core::line::{QUEUE_ENTRIES_MAX, WAITLIST_ENTRIES_MAX};
use ticketrush_core::sale::ADMISSION_WINDOW_MS;
use ticketrush_core::{
    IdempotencyKey, LedgerError, QueueEntry, QueueId, Reservation, ReservationId, ReservationState,
    ReserveItem, ReserveOutcome, SaleId, SaleSpec, SaleView, UnixMs, UserId, WaitState,
    WaitlistEntry, WaitlistId,
};

use crate::redis_cluster::ClusterConn;
use crate::{
    BatchOutcome, BoxFuture, QueueAnswer, ReapReport, Snapshot, Store, StoreError, StoreResult,
    WaitlistAnswer,
};

/// The set of every sale id; not in any sale's slot.
pub const SALES_KEY: &str = "ticketrush:sales";

/// Longest a node waits for Redis on any call before answering "unavailable". Long enough
/// for a script under load with `appendfsync always`, short enough that clients see a quick
/// 503 instead of a hang when Redis is gone.
pub const OP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);

/// Most entries a sale's stream may hold while an order writer is attached before new
/// reservations are refused (503): the writer's queue has a bound too. An entry is one node
/// batch (tens of reservations, at most a batch size) or one payment, cancellation or expiry,
/// so this is a few million waiting reservations at most. Without a writer the scripts keep
/// only the most recent 100,000 entries.
pub const EVENTS_BACKLOG_MAX: u64 = 200_000;

/// The consumer group every order writer joins.
pub const ORDERS_GROUP: &str = "orders";

/// Reservations per HSCAN page when the audit reads a sale.
const SCAN_PAGE: u64 = 10_000;
/// Reads of a live sale before the snapshot gives up.
const SNAPSHOT_ATTEMPTS_MAX: usize = 5;

/// How the Redis store is set up.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub op_timeout: Duration,
    pub events_backlog_max: u64,
    /// Order writers follow this cluster (`serve --postgres`): a sale created here starts
    /// with its stream kept for them (the writer flag and the consumer group), so no event is
    /// trimmed before a writer reads it, even if PostgreSQL is down when the sale begins.
    pub orders: bool,
    /// Certificates for `rediss://` URLs (a private CA, a client certificate).
    pub tls: RedisTls,
    /// Replicas that must confirm each write (a sale created, a batch of reservations, a
    /// payment or cancellation) before it is acknowledged, with Redis's `WAIT`; 0 = none.
    pub wait_replicas: u32,
}

/// What a `rediss://` connection trusts and shows: `ca`, PEM certificates the server's must
/// chain to (instead of the system's roots); `client`, a PEM certificate and key for mutual
/// TLS. Ignored for `redis://` URLs (`Conn::connect` refuses the combination).
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    /// A client for `url`: with these certificates for `rediss://`, plain otherwise.
    pub(crate) fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        if !url.starts_with("rediss://") {
            return redis::Client::open(url);
        }
        // redis-rs builds its rustls configuration with the process's default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: self
                    .client
                    .as_ref()
                    .map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                root_cert: self.ca.clone(),
            },
        )
    }
}

/// Longest a write waits for its replicas (`WAIT`'s timeout) before it is answered 503.
pub const WAIT_REPLICAS_TIMEOUT: Duration = Duration::from_millis(500);

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            op_timeout: OP_TIMEOUT_DEFAULT,
            events_backlog_max: EVENTS_BACKLOG_MAX,
            orders: false,
            wait_replicas: 0,
            tls: RedisTls::default(),
        }
    }
}

/// The scripts, each the shared prelude (and, but for `reserve_batch`, the hold helpers)
/// followed by its own body. `Script` keeps the SHA1 and calls EVALSHA, loading the script
/// again when Redis answers NOSCRIPT (after a restart).
struct Scripts {
    create_sale: Script,
    reserve_batch: Script,
    settle: Script,
    reap: Script,
    lookup: Script,
    queue_join: Script,
    queue_entry: Script,
    waitlist: Script,
}

impl Scripts {
    fn load() -> Scripts {
        let full = |body: &str| Script::new(&format!("{PRELUDE}\n{HOLDS}\n{body}"));
        Scripts {
            create_sale: full(include_str!("../lua/create_sale.lua")),
            // The hot path: only what it uses, since a script defines its functions anew on
            // every call.
            reserve_batch: Script::new(&format!(
                "{PRELUDE}\n{}",
                include_str!("../lua/reserve_batch.lua")
            )),
            settle: full(include_str!("../lua/settle.lua")),
            reap: full(include_str!("../lua/reap.lua")),
            lookup: full(include_str!("../lua/lookup.lua")),
            queue_join: full(include_str!("../lua/queue_join.lua")),
            queue_entry: full(include_str!("../lua/queue_entry.lua")),
            waitlist: full(include_str!("../lua/waitlist.lua")),
        }
    }
}

const PRELUDE: &str = include_str!("../lua/prelude.lua");
const HOLDS: &str = include_str!("../lua/holds.lua");

/// The keys of one sale, all under the hash tag `{sale:ID}` (one Redis Cluster slot). Only
/// the scripts in `lua/` write them; Rust reads a few by name.
pub struct SaleKeys {
    /// The sale's hash: spec, pool and counts.
    pub sale: String,
    /// First-version leases (read and taken back, never written anew).
    pub leases: String,
    /// Tickets held per user (the per-user limit).
    pub users: String,
    /// Idempotency keys.
    pub idem: String,
    /// Reservation records by id.
    pub res: String,
    /// Hold deadlines (the reaper's index).
    pub due: String,
    /// The event stream the order writers follow.
    pub events: String,
    /// The waiting room's entries and each user's latest.
    pub queue: String,
    /// The pre-queue (sorted by id: the shuffle).
    pub qpre: String,
    /// The waitlist's entries and each user's latest.
    pub wl: String,
    /// The waitlist's waiting entries in arrival order.
    pub wlq: String,
    /// Hold deadlines of whole batches (one member per `reserve_batch` call).
    pub dueb: String,
}

impl SaleKeys {
    pub fn of(sale: &SaleId) -> SaleKeys {
        let tag = format!("{{sale:{sale}}}");
        SaleKeys {
            sale: format!("{tag}:sale"),
            leases: format!("{tag}:leases"),
            users: format!("{tag}:users"),
            idem: format!("{tag}:idem"),
            res: format!("{tag}:res"),
            due: format!("{tag}:due"),
            events: format!("{tag}:events"),
            queue: format!("{tag}:queue"),
            qpre: format!("{tag}:qpre"),
            wl: format!("{tag}:wl"),
            wlq: format!("{tag}:wlq"),
            dueb: format!("{tag}:dueb"),
        }
    }

    /// KEYS[1..12] of every script, in `lua/prelude.lua`'s order.
    pub fn in_script_order(&self) -> [&str; 12] {
        [
            &self.sale,
            &self.leases,
            &self.users,
            &self.idem,
            &self.res,
            &self.due,
            &self.events,
            &self.queue,
            &self.qpre,
            &self.wl,
            &self.wlq,
            &self.dueb,
        ]
    }
}

/// The key of a sale's event stream (the order writer reads it).
pub fn events_key(sale: &SaleId) -> String {
    format!("{{sale:{sale}}}:events")
}

/// The sale a reservation id belongs to, from its suffix (see the module docs).
pub fn sale_of(id: &ReservationId) -> Option<SaleId> {
    let (_, sale) = id.as_str().split_once('.')?;
    SaleId::parse(sale).ok()
}

/// A connection to a single Redis (the manager reconnects by itself) or to a Redis Cluster
/// ([`ClusterConn`]: routes each command by its key's slot, follows MOVED and ASK, refreshes
/// its slot map and reconnects by itself, one master's failure confined to that master's
/// calls). Every script touches one sale's keys, all in one slot, and every plain command
/// one key, so both run the same calls.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConn),
}

impl Conn {
    /// Connects to `urls`: one Redis URL, or several separated by commas (nodes of one Redis
    /// Cluster: seeds, tried in order). A single Redis or a cluster is found out with `INFO
    /// cluster`; every call is bounded by `timeout`. The store and the order writer both
    /// connect through this.
    pub async fn connect(urls: &str, timeout: Duration, tls: &RedisTls) -> StoreResult<Conn> {
        let seeds: Vec<&str> = urls.split(',').map(str::trim).collect();
        if tls.is_set() && !seeds.iter().all(|s| s.starts_with("rediss://")) {
            return Err(StoreError::Unavailable(
                "TLS certificates were given for a redis:// URL; use rediss://".into(),
            ));
        }
        let mut last = None;
        for url in &seeds {
            match Self::connect_to(url, &seeds, timeout, tls).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Unavailable("no redis url".into())))
    }

    async fn connect_to(
        url: &str,
        seeds: &[&str],
        timeout: Duration,
        tls: &RedisTls,
    ) -> StoreResult<Conn> {
        let client = tls
            .client(url)
            .map_err(|e| StoreError::Unavailable(format!("bad redis url: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let single = tokio::time::timeout(
            timeout * 2,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| StoreError::Unavailable("redis did not answer".into()))?
        .map_err(unavailable)?;
        let mut probe = single.clone();
        let info: String = tokio::time::timeout(
            timeout,
            redis::cmd("INFO").arg("cluster").query_async(&mut probe),
        )
        .await
        .map_err(|_| StoreError::Unavailable("redis did not answer".into()))?
        .map_err(unavailable)?;
        if !info.contains("cluster_enabled:1") {
            return Ok(Conn::Single(single));
        }
        // This node first: it answered, the others are fallbacks.
        let mut ordered = vec![url];
        ordered.extend(seeds.iter().copied().filter(|s| s != &url));
        let cluster =
            tokio::time::timeout(timeout * 2, ClusterConn::connect(&ordered, timeout, tls))
                .await
                .map_err(|_| StoreError::Unavailable("redis cluster did not answer".into()))?
                .map_err(unavailable)?;
        Ok(Conn::Cluster(cluster))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Whether Redis answers: PING on a single server; on a cluster, on any master (a node
    /// with one master down still sells the other masters' sales, so it stays ready).
    pub async fn ping(&self) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => redis::cmd("PING").query_async(&mut c.clone()).await,
            Conn::Cluster(c) => c.ping_any().await,
        }
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub struct RedisStore {
    conn: Conn,
    scripts: Scripts,
    config: RedisConfig,
    /// Calls made to Redis (script calls and plain commands), for `/metrics` and benchmarks.
    calls: AtomicU64,
    /// Reaper passes so far: where the next pass starts in the list of sales.
    reap_turn: AtomicU64,
    /// When each sale next needs a reaper pass (Redis clock, ms), as its last pass answered:
    /// a pass skips the sales not due, so a store of many sales costs a call per sale only
    /// when a hold of it is due, not every pass (bounded by `SALES_MAX` entries).
    next_reap: std::sync::Mutex<std::collections::HashMap<SaleId, i64>>,
    /// The last list of sale ids read (see `sale_ids`); at most `SALES_MAX`.
    known_sales: std::sync::Mutex<Vec<SaleId>>,
}

impl RedisStore {
    /// Connects to Redis, finding out by itself whether it is a single server or a node of a
    /// Redis Cluster (then that node is the seed the cluster's map is read from). Fails if
    /// Redis cannot be reached now; once connected, the connection recovers by itself after
    /// Redis (or a master) goes away and comes back.
    pub async fn connect(config: RedisConfig) -> StoreResult<RedisStore> {
        let conn = Conn::connect(&config.url, config.op_timeout, &config.tls).await?;
        Ok(RedisStore {
            conn,
            scripts: Scripts::load(),
            config,
            calls: AtomicU64::new(0),
            reap_turn: AtomicU64::new(0),
            next_reap: std::sync::Mutex::new(std::collections::HashMap::new()),
            known_sales: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// Calls made to Redis since start.
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    /// Runs one Redis call within the operation timeout.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> StoreResult<T> {
        self.calls.fetch_add(1, Relaxed);
        match tokio::time::timeout(self.config.op_timeout, call).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis did not answer within {:?}",
                self.config.op_timeout
            ))),
        }
    }

    /// `run` for a script that changes what a client is told (a sale created, reservations,
    /// a payment or cancellation): with `wait_replicas`, answered only once that many replicas
    /// have the change.
    async fn run_write(
        &self,
        script: &Script,
        sale: &SaleId,
        args: &[&str],
    ) -> StoreResult<Vec<String>> {
        let wanted = self.config.wait_replicas;
        if wanted == 0 {
            return self.run(script, sale, args).await;
        }
        // The script and its WAIT in one pipeline: one node, one connection, WAIT right after
        // the write it must cover (a redirection, a map refresh or a reconnect between two
        // separate calls could send WAIT somewhere that never saw the write).
        let mut evalsha = redis::cmd("EVALSHA");
        let keys = SaleKeys::of(sale);
        let keys = keys.in_script_order();
        evalsha.arg(script.get_hash()).arg(keys.len());
        for k in keys {
            evalsha.arg(k);
        }
        for a in args {
            evalsha.arg(*a);
        }
        let mut pipe = redis::pipe();
        pipe.add_command(evalsha)
            .cmd("WAIT")
            .arg(wanted)
            .arg(WAIT_REPLICAS_TIMEOUT.as_millis() as u64);
        let mut conn = self.conn.clone();
        for attempt in 0..2 {
            self.calls.fetch_add(1, Relaxed);
            let answer = tokio::time::timeout(
                self.config.op_timeout,
                pipe.query_async::<(Vec<String>, i64)>(&mut conn),
            )
            .await;
            match answer {
                Ok(Ok((reply, confirmed))) => {
                    if confirmed < i64::from(wanted) {
                        return Err(StoreError::NotReplicated(format!(
                            "{confirmed} of {wanted} replica(s) confirmed within {WAIT_REPLICAS_TIMEOUT:?}"
                        )));
                    }
                    return script_reply(reply);
                }
                Ok(Err(e))
                    if attempt == 0
                        && e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    // A restarted or promoted master without the script: load it, once.
                    let _: String = self.bounded(script.load_async(&mut conn)).await?;
                }
                // Whatever else happened, the write may have been applied and is not known to
                // be replicated: never acknowledged, never confirmed by a lookup.
                Ok(Err(e)) => return Err(StoreError::NotReplicated(format!("redis: {e}"))),
                Err(_) => {
                    return Err(StoreError::NotReplicated(format!(
                        "redis did not answer within {:?}",
                        self.config.op_timeout
                    )))
                }
            }
        }
        Err(StoreError::NotReplicated(
            "the script could not be loaded".into(),
        ))
    }

    /// Calls a script on a sale's keys; answers the fields after 'OK', or the refusal.
    async fn run(&self, script: &Script, sale: &SaleId, args: &[&str]) -> StoreResult<Vec<String>> {
        let mut inv = script.prepare_invoke();
        for k in SaleKeys::of(sale).in_script_order() {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
        script_reply(reply)
    }

    async fn sale_view(&self, id: &SaleId) -> StoreResult<Option<SaleView>> {
        let key = &SaleKeys::of(id).sale;
        let mut conn = self.conn.clone();
        let fields: Vec<Option<String>> = self
            .bounded(
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(&["spec", "pool", "leased", "reserved", "paid"])
                    .query_async(&mut conn),
            )
            .await?;
        parse_view(&fields)
    }

    /// Every sale id. On a cluster the list lives on one master: while it is down, the last
    /// list read stands in, so the reaper and reads of the other masters' sales go on.
    async fn sale_ids(&self) -> StoreResult<Vec<SaleId>> {
        let mut conn = self.conn.clone();
        let read = self
            .bounded(
                redis::cmd("SMEMBERS")
                    .arg(SALES_KEY)
                    .query_async::<Vec<String>>(&mut conn),
            )
            .await;
        let mut known = self.known_sales.lock().unwrap_or_else(|p| p.into_inner());
        match read {
            Ok(ids) => {
                let mut ids: Vec<SaleId> =
                    ids.iter().filter_map(|s| SaleId::parse(s).ok()).collect();
                ids.sort();
                known.clone_from(&ids);
                Ok(ids)
            }
            Err(_) if !known.is_empty() => Ok(known.clone()),
            Err(e) => Err(e),
        }
    }

    /// Every reservation of a sale, read with HSCAN in bounded pages (not one huge reply).
    async fn all_reservations(&self, sale: &SaleId) -> StoreResult<Vec<Reservation>> {
        let key = &SaleKeys::of(sale).res;
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut conn = self.conn.clone();
            let (next, page): (u64, Vec<(String, String)>) = self
                .bounded(
                    redis::cmd("HSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(SCAN_PAGE)
                        .query_async(&mut conn),
                )
                .await?;
            for (id, record) in page {
                let id = ReservationId::parse(&id)
                    .map_err(|_| StoreError::Unavailable(format!("bad stored id {id:?}")))?;
                out.push(parse_record(id, sale, &record)?);
            }
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    async fn do_snapshot(&self, sale: &SaleId) -> StoreResult<Option<Snapshot>> {
        for _ in 0..SNAPSHOT_ATTEMPTS_MAX {
            let Some(before) = self.sale_view(sale).await? else {
                return Ok(None);
            };
            let reservations = self.all_reservations(sale).await?;
            let after = self.sale_view(sale).await?;
            if after.as_ref() == Some(&before) {
                // HSCAN may return an entry twice when the hash is rehashed meanwhile.
                let mut reservations = reservations;
                reservations.sort_by(|a, b| a.id.cmp(&b.id));
                reservations.dedup_by(|a, b| a.id == b.id);
                return Ok(Some(Snapshot {
                    view: before,
                    reservations,
                }));
            }
        }
        Err(StoreError::Unavailable(
            "the sale kept changing while it was read; audit it when no node is selling".into(),
        ))
    }

    async fn do_create_sale(&self, spec: SaleSpec) -> StoreResult<SaleView> {
        let mut conn = self.conn.clone();
        let (known, count): (bool, usize) = self
            .bounded(
                redis::pipe()
                    .cmd("SISMEMBER")
                    .arg(SALES_KEY)
                    .arg(spec.id.as_str())
                    .cmd("SCARD")
                    .arg(SALES_KEY)
                    .query_async(&mut conn),
            )
            .await?;
        if !known && count >= ticketrush_core::ledger::SALES_MAX {
            return Err(LedgerError::TooManySales.into());
        }
        // Listed first: a crash between the two leaves an id without a sale, which listing
        // skips, rather than a sale nobody lists or reaps.
        let _: i64 = self
            .bounded(
                redis::cmd("SADD")
                    .arg(SALES_KEY)
                    .arg(spec.id.as_str())
                    .query_async(&mut conn),
            )
            .await?;
        let spec_json = serde_json::to_string(&spec).expect("a sale spec serialises");
        let total = spec.total.to_string();
        let limit = spec.per_user_limit.to_string();
        let hold_ms = spec.hold_ms().to_string();
        let group = if self.config.orders { ORDERS_GROUP } else { "" };
        let opens_ms = spec.opens_at.0.to_string();
        let admit = spec
            .queue
            .as_ref()
            .map_or(String::new(), |q| q.admit_per_second.to_string());
        self.run_write(
            &self.scripts.create_sale,
            &spec.id,
            &[
                &spec_json, &total, &limit, &hold_ms, group, &opens_ms, &admit,
            ],
        )
        .await?;
        Ok(SaleView {
            available: spec.total,
            reserved: 0,
            paid: 0,
            spec,
        })
    }

    async fn do_reserve_batch(
        &self,
        sale_id: &SaleId,
        items: Vec<ReserveItem>,
    ) -> StoreResult<BatchOutcome> {
        let backlog = self.config.events_backlog_max.to_string();
        let count = items.len().to_string();
        // The ids and the users each contiguous (the script reads them in slices), then the
        // keys that are given, each after its item's number.
        let keyed: Vec<(String, &str)> = (1..)
            .zip(&items)
            .filter_map(|(j, it)| Some((j.to_string(), it.idempotency_key.as_ref()?.as_str())))
            .collect();
        let mut args: Vec<&str> = Vec::with_capacity(2 + 2 * items.len() + 2 * keyed.len());
        args.push(&backlog);
        args.push(&count);
        args.extend(items.iter().map(|it| it.id.as_str()));
        args.extend(items.iter().map(|it| it.user_id.as_str()));
        for (number, key) in &keyed {
            args.push(number);
            args.push(key);
        }
        let reply = self
            .run_write(&self.scripts.reserve_batch, sale_id, &args)
            .await?;
        batch_outcome(sale_id, items, &reply)
    }

    /// One reaper pass over every sale, starting one sale further each pass so a sale with
    /// many due holds cannot starve the ones after it. A sale whose pass fails is skipped (the
    /// next pass tries again); the pass fails only if every sale did.
    async fn do_reap(&self, max: usize) -> StoreResult<ReapReport> {
        let mut report = ReapReport::default();
        let max_s = max.to_string();
        let sales = self.sale_ids().await?;
        let start = self.reap_turn.fetch_add(1, Relaxed) as usize;
        let now = self.now().0;
        let mut last_error = None;
        let mut failed = 0;
        for i in 0..sales.len() {
            let sale = &sales[(start + i) % sales.len()];
            let due = self
                .next_reap
                .lock()
                .expect("next_reap lock")
                .get(sale)
                .is_none_or(|t| *t <= now);
            if !due {
                continue;
            }
            let counts = match self.run(&self.scripts.reap, sale, &[&max_s]).await {
                Ok(r) if r.len() == 3 => {
                    let next = parse_num(&r[2])?;
                    self.next_reap
                        .lock()
                        .expect("next_reap lock")
                        .insert(sale.clone(), next);
                    (parse_num(&r[0])?, parse_num(&r[1])?)
                }
                Ok(r) => return Err(bad_reply("reap", &r)),
                Err(e) => {
                    failed += 1;
                    last_error = Some(e);
                    continue;
                }
            };
            report.expired += counts.0 as usize;
            report.leases_reclaimed += counts.1 as usize;
            if report.expired >= max {
                break;
            }
        }
        match last_error {
            Some(e) if failed == sales.len() => Err(e),
            _ => Ok(report),
        }
    }

    async fn settle(
        &self,
        id: &ReservationId,
        user_id: &UserId,
        action: &str,
    ) -> StoreResult<Reservation> {
        let sale = sale_of(id).ok_or(LedgerError::ReservationNotFound)?;
        let r = self
            .run_write(
                &self.scripts.settle,
                &sale,
                &[id.as_str(), user_id.as_str(), action],
            )
            .await?;
        let record = r.first().ok_or_else(|| bad_reply("settle", &r))?;
        parse_record(id.clone(), &sale, record)
    }
}

/// A queue script's answer after 'OK': user, rank ('' before the draw), size, now.
fn queue_answer(queue_id: QueueId, fields: &[String], created: bool) -> StoreResult<QueueAnswer> {
    let [user, rank, size, now] = fields else {
        return Err(bad_reply("queue", fields));
    };
    let user_id = UserId::parse(user).map_err(|_| bad_reply("queue", fields))?;
    let rank = match rank.as_str() {
        "" => None,
        r => Some(parse_num(r)?.max(0) as u64),
    };
    Ok(QueueAnswer {
        entry: QueueEntry {
            queue_id,
            user_id,
            rank,
            size: parse_num(size)?.max(0) as u64,
        },
        created,
        now: UnixMs(parse_num(now)?),
    })
}

/// The waitlist script's answer after 'OK': id, user, state, position ('' unless waiting),
/// created.
fn waitlist_answer(fields: &[String]) -> StoreResult<Option<WaitlistAnswer>> {
    let [id, user, state, position, created] = fields else {
        return if fields.is_empty() {
            Ok(None)
        } else {
            Err(bad_reply("waitlist", fields))
        };
    };
    let bad = || bad_reply("waitlist", fields);
    let state = match state.as_str() {
        "waiting" => WaitState::Waiting,
        "offered" => WaitState::Offered,
        "withdrawn" => WaitState::Withdrawn,
        _ => return Err(bad()),
    };
    Ok(Some(WaitlistAnswer {
        entry: WaitlistEntry {
            waitlist_id: WaitlistId::parse(id).map_err(|_| bad())?,
            user_id: UserId::parse(user).map_err(|_| bad())?,
            state,
            position: match position.as_str() {
                "" => None,
                p => Some(parse_num(p)?.max(0) as u64),
            },
        },
        created: created == "1",
    }))
}

/// A script's answer: the fields after 'OK', or its refusal.
fn script_reply(reply: Vec<String>) -> StoreResult<Vec<String>> {
    let mut it = reply.into_iter();
    match it.next().as_deref() {
        Some("OK") => Ok(it.collect()),
        Some("E") => Err(refusal(it.next().as_deref().unwrap_or(""))),
        other => Err(StoreError::Unavailable(format!(
            "unexpected script reply {other:?}"
        ))),
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn bad_reply(what: &str, reply: &[String]) -> StoreError {
    StoreError::Unavailable(format!("unexpected {what} reply: {reply:?}"))
}

/// Maps a script's refusal code to the domain's error.
fn refusal(code: &str) -> StoreError {
    let e = match code {
        "SALE_EXISTS" => LedgerError::SaleExists,
        "SALE_NOT_FOUND" => LedgerError::SaleNotFound,
        "RESERVATION_NOT_FOUND" => LedgerError::ReservationNotFound,
        "FORBIDDEN" => LedgerError::Forbidden,
        "EXPIRED" => LedgerError::Expired,
        "CANCELLED" => LedgerError::Cancelled,
        "ALREADY_PAID" => LedgerError::AlreadyPaid,
        "NO_QUEUE" => LedgerError::NoQueue,
        "NOT_SOLD_OUT" => LedgerError::NotSoldOut,
        "LIMIT_REACHED" => LedgerError::LimitReached,
        "LINE_FULL" => LedgerError::LineFull,
        "WAITLIST_NOT_FOUND" => LedgerError::WaitlistNotFound,
        "BACKLOG" => {
            return StoreError::Refused(
                "the order events backlog is full; the order writer is behind".into(),
            )
        }
        other => return StoreError::Unavailable(format!("unknown script refusal {other:?}")),
    };
    StoreError::Ledger(e)
}

fn parse_num(s: &str) -> StoreResult<i64> {
    s.parse()
        .map_err(|_| StoreError::Unavailable(format!("not a number in a reply: {s:?}")))
}

fn parse_view(fields: &[Option<String>]) -> StoreResult<Option<SaleView>> {
    let [Some(spec), Some(pool), Some(leased), Some(reserved), Some(paid)] = fields else {
        return Ok(None);
    };
    let spec: SaleSpec = serde_json::from_str(spec)
        .map_err(|e| StoreError::Unavailable(format!("stored sale spec unreadable: {e}")))?;
    let n = |s: &str| parse_num(s).map(|v| v.max(0) as u64);
    Ok(Some(SaleView {
        spec,
        available: n(pool)? + n(leased)?,
        reserved: n(reserved)?,
        paid: n(paid)?,
    }))
}

/// Parses a stored record: `state created_ms expires_ms paid_ms updated_ms user`.
pub fn parse_record(id: ReservationId, sale: &SaleId, record: &str) -> StoreResult<Reservation> {
    let bad = || StoreError::Unavailable(format!("stored reservation unreadable: {record:?}"));
    let mut f = record.splitn(6, ' ');
    let mut next = || f.next().ok_or_else(bad);
    let state = ReservationState::parse(next()?).ok_or_else(bad)?;
    let created_at = UnixMs(parse_num(next()?)?);
    let expires_at = UnixMs(parse_num(next()?)?);
    let paid_ms = parse_num(next()?)?;
    let updated_at = UnixMs(parse_num(next()?)?);
    let user_id = UserId::parse(next()?).map_err(|_| bad())?;
    Ok(Reservation {
        id,
        sale_id: sale.clone(),
        user_id,
        state,
        created_at,
        expires_at,
        paid_at: (paid_ms > 0).then_some(UnixMs(paid_ms)),
        updated_at,
    })
}

/// `reserve_batch.lua`'s answer (after 'OK'): created, expires, available, one letter per
/// item, then an extra element for each 'A' and 'P' in order. Anything else is refused whole.
fn batch_outcome(
    sale_id: &SaleId,
    items: Vec<ReserveItem>,
    reply: &[String],
) -> StoreResult<BatchOutcome> {
    let [created, expires, available, letters, extra @ ..] = reply else {
        return Err(bad_reply("reserve_batch", reply));
    };
    if letters.len() != items.len() {
        return Err(bad_reply("reserve_batch", reply));
    }
    let created = UnixMs(parse_num(created)?);
    let expires = UnixMs(parse_num(expires)?);
    let available = parse_num(available)?.max(0) as u64;
    let mut extra = extra.iter();
    let outcomes = items
        .into_iter()
        .zip(letters.bytes())
        .map(|(item, letter)| outcome(sale_id, item, letter, &mut extra, created, expires))
        .collect::<StoreResult<Vec<_>>>()?;
    if extra.next().is_some() {
        return Err(bad_reply("reserve_batch", reply));
    }
    Ok(BatchOutcome {
        outcomes,
        available,
    })
}

/// One item's answer of `reserve_batch.lua`: its letter, and for 'A' and 'P' the next of the
/// reply's extra elements.
fn outcome<'a>(
    sale_id: &SaleId,
    item: ReserveItem,
    letter: u8,
    extra: &mut impl Iterator<Item = &'a String>,
    created_at: UnixMs,
    expires_at: UnixMs,
) -> StoreResult<ReserveOutcome> {
    let mut next_extra = || {
        extra
            .next()
            .ok_or_else(|| StoreError::Unavailable("reserve_batch answer too short".into()))
    };
    match letter {
        b'R' => Ok(ReserveOutcome::Reserved(Reservation {
            id: item.id,
            sale_id: sale_id.clone(),
            user_id: item.user_id,
            state: ReservationState::Reserved,
            created_at,
            expires_at,
            paid_at: None,
            updated_at: created_at,
        })),
        b'L' => Ok(ReserveOutcome::LimitReached),
        b'N' => Ok(ReserveOutcome::NoStock),
        // The call was applied before (re-sent after a lost reply): the item's reservation.
        b'A' => Ok(ReserveOutcome::Reserved(parse_record(
            item.id.clone(),
            sale_id,
            next_extra()?,
        )?)),
        b'P' => {
            let answer = next_extra()?;
            let (id, record) = answer
                .split_once(' ')
                .ok_or_else(|| StoreError::Unavailable(format!("bad item answer {answer:?}")))?;
            let id = ReservationId::parse(id)
                .map_err(|_| StoreError::Unavailable(format!("bad reservation id {id:?}")))?;
            Ok(ReserveOutcome::Replayed(parse_record(id, sale_id, record)?))
        }
        other => Err(StoreError::Unavailable(format!(
            "bad item answer {:?}",
            char::from(other)
        ))),
    }
}

fn now_ms() -> UnixMs {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    UnixMs(d.as_millis() as i64)
}

impl Store for RedisStore {
    /// The node's clock, for `opens_at`; deadlines are measured by the scripts on Redis's.
    fn now(&self) -> UnixMs {
        now_ms()
    }

    fn create_sale(&self, spec: SaleSpec) -> BoxFuture<'_, StoreResult<SaleView>> {
        Box::pin(self.do_create_sale(spec))
    }

    fn sale<'a>(&'a self, id: &'a SaleId) -> BoxFuture<'a, StoreResult<Option<SaleView>>> {
        Box::pin(self.sale_view(id))
    }

    fn sales(&self) -> BoxFuture<'_, StoreResult<Vec<SaleView>>> {
        Box::pin(async move {
            let mut views = Vec::new();
            for id in self.sale_ids().await? {
                if let Some(v) = self.sale_view(&id).await? {
                    views.push(v);
                }
            }
            Ok(views)
        })
    }

    fn reserve_batch<'a>(
        &'a self,
        sale_id: &'a SaleId,
        items: Vec<ReserveItem>,
    ) -> BoxFuture<'a, StoreResult<BatchOutcome>> {
        Box::pin(self.do_reserve_batch(sale_id, items))
    }

    fn find_idempotent<'a>(
        &'a self,
        sale_id: &'a SaleId,
        user_id: &'a UserId,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, StoreResult<Option<Reservation>>> {
        Box::pin(async move {
            let r = self
                .run(
                    &self.scripts.lookup,
                    sale_id,
                    &[user_id.as_str(), key.as_str()],
                )
                .await?;
            let [id, record] = r.as_slice() else {
                return Ok(None);
            };
            let id = ReservationId::parse(id).map_err(|_| bad_reply("lookup", &r))?;
            parse_record(id, sale_id, record).map(Some)
        })
    }

    fn reservation<'a>(
        &'a self,
        id: &'a ReservationId,
    ) -> BoxFuture<'a, StoreResult<Option<Reservation>>> {
        Box::pin(async move {
            let Some(sale) = sale_of(id) else {
                return Ok(None);
            };
            let mut conn = self.conn.clone();
            let record: Option<String> = self
                .bounded(
                    redis::cmd("HGET")
                        .arg(&SaleKeys::of(&sale).res)
                        .arg(id.as_str())
                        .query_async(&mut conn),
                )
                .await?;
            record
                .map(|r| parse_record(id.clone(), &sale, &r))
                .transpose()
        })
    }

    fn pay<'a>(
        &'a self,
        id: &'a ReservationId,
        user_id: &'a UserId,
    ) -> BoxFuture<'a, StoreResult<Reservation>> {
        Box::pin(self.settle(id, user_id, "pay"))
    }

    fn cancel<'a>(
        &'a self,
        id: &'a ReservationId,
        user_id: &'a UserId,
    ) -> BoxFuture<'a, StoreResult<Reservation>> {
        Box::pin(self.settle(id, user_id, "cancel"))
    }

    fn reap(&self, max: usize) -> BoxFuture<'_, StoreResult<ReapReport>> {
        Box::pin(self.do_reap(max))
    }

    fn snapshot<'a>(&'a self, sale_id: &'a SaleId) -> BoxFuture<'a, StoreResult<Option<Snapshot>>> {
        Box::pin(self.do_snapshot(sale_id))
    }

    fn queue_join<'a>(
        &'a self,
        sale_id: &'a SaleId,
        queue_id: QueueId,
        user_id: UserId,
    ) -> BoxFuture<'a, StoreResult<QueueAnswer>> {
        Box::pin(async move {
            let window = ADMISSION_WINDOW_MS.to_string();
            let max = QUEUE_ENTRIES_MAX.to_string();
            let r = self
                .run_write(
                    &self.scripts.queue_join,
                    sale_id,
                    &[queue_id.as_str(), user_id.as_str(), &window, &max],
                )
                .await?;
            let (id, rest) = r.split_first().ok_or_else(|| bad_reply("queue_join", &r))?;
            let [rank, size, now, created] = rest else {
                return Err(bad_reply("queue_join", &r));
            };
            let id = QueueId::parse(id).map_err(|_| bad_reply("queue_join", &r))?;
            let fields = [
                user_id.as_str().to_string(),
                rank.clone(),
                size.clone(),
                now.clone(),
            ];
            queue_answer(id, &fields, created == "1")
        })
    }

    fn queue_entry<'a>(
        &'a self,
        sale_id: &'a SaleId,
        queue_id: &'a QueueId,
    ) -> BoxFuture<'a, StoreResult<Option<QueueAnswer>>> {
        Box::pin(async move {
            let r = self
                .run(&self.scripts.queue_entry, sale_id, &[queue_id.as_str()])
                .await?;
            if r.is_empty() {
                return Ok(None);
            }
            queue_answer(queue_id.clone(), &r, false).map(Some)
        })
    }

    fn waitlist_join<'a>(
        &'a self,
        sale_id: &'a SaleId,
        waitlist_id: WaitlistId,
        user_id: UserId,
    ) -> BoxFuture<'a, StoreResult<WaitlistAnswer>> {
        Box::pin(async move {
            let max = WAITLIST_ENTRIES_MAX.to_string();
            let r = self
                .run_write(
                    &self.scripts.waitlist,
                    sale_id,
                    &["join", waitlist_id.as_str(), user_id.as_str(), &max],
                )
                .await?;
            waitlist_answer(&r)?.ok_or_else(|| bad_reply("waitlist", &r))
        })
    }

    fn waitlist_entry<'a>(
        &'a self,
        sale_id: &'a SaleId,
        waitlist_id: &'a WaitlistId,
    ) -> BoxFuture<'a, StoreResult<Option<WaitlistEntry>>> {
        Box::pin(async move {
            let r = self
                .run(
                    &self.scripts.waitlist,
                    sale_id,
                    &["get", waitlist_id.as_str(), "", "0"],
                )
                .await;
            match r {
                Err(StoreError::Ledger(LedgerError::SaleNotFound)) => Ok(None),
                r => Ok(waitlist_answer(&r?)?.map(|a| a.entry)),
            }
        })
    }

    fn waitlist_withdraw<'a>(
        &'a self,
        sale_id: &'a SaleId,
        waitlist_id: &'a WaitlistId,
        user_id: &'a UserId,
    ) -> BoxFuture<'a, StoreResult<WaitlistEntry>> {
        Box::pin(async move {
            let r = self
                .run_write(
                    &self.scripts.waitlist,
                    sale_id,
                    &["withdraw", waitlist_id.as_str(), user_id.as_str(), "0"],
                )
                .await?;
            waitlist_answer(&r)?
                .map(|a| a.entry)
                .ok_or_else(|| bad_reply("waitlist", &r))
        })
    }

    fn round_trips(&self) -> Option<u64> {
        Some(self.calls())
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move { self.bounded(self.conn.ping()).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_sale_share_one_hash_tag() {
        let keys = SaleKeys::of(&SaleId::parse("G1:2nd").unwrap());
        for k in keys.in_script_order() {
            assert!(k.starts_with("{sale:G1:2nd}:"), "{k}");
        }
        assert_eq!(keys.events, events_key(&SaleId::parse("G1:2nd").unwrap()));
    }

    #[test]
    fn reservation_ids_name_their_sale() {
        let id = ReservationId::parse("abcdefghjkmnpqrstvwxyz0123.G1.x").unwrap();
        assert_eq!(sale_of(&id).unwrap().as_str(), "G1.x");
        let plain = ReservationId::parse("abcdefghjkmnpqrstvwxyz0123").unwrap();
        assert!(sale_of(&plain).is_none());
    }

    #[test]
    fn records_round_trip_through_their_text_form() {
        let sale = SaleId::parse("S").unwrap();
        let id = ReservationId::parse("r1.S").unwrap();
        let r = parse_record(id.clone(), &sale, "paid 10 20 15 15 u-1").unwrap();
        assert_eq!(r.state, ReservationState::Paid);
        assert_eq!(r.paid_at, Some(UnixMs(15)));
        assert_eq!(r.user_id.as_str(), "u-1");
        let r = parse_record(id.clone(), &sale, "reserved 10 20 0 10 u-1").unwrap();
        assert_eq!(r.paid_at, None);
        assert!(parse_record(id.clone(), &sale, "bogus 1 2 3 4 u").is_err());
        assert!(parse_record(id, &sale, "reserved 1 2").is_err());
    }

    #[test]
    fn a_batch_answer_is_one_letter_per_item_and_an_extra_per_replay() {
        let sale = SaleId::parse("S").unwrap();
        let item = |n: u32| ReserveItem {
            id: ReservationId::parse(&format!("r{n}.S")).unwrap(),
            user_id: UserId::parse(&format!("u{n}")).unwrap(),
            idempotency_key: None,
        };
        let items: Vec<ReserveItem> = (1..=5).map(item).collect();
        let reply = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let ok = reply(&[
            "10",
            "20",
            "7",
            "RPALN",
            "r0.S paid 1 2 3 3 u2",
            "reserved 10 20 0 10 u3",
        ]);
        let out = batch_outcome(&sale, items.clone(), &ok).unwrap();
        assert_eq!(out.available, 7);
        let [ReserveOutcome::Reserved(r), ReserveOutcome::Replayed(p), ReserveOutcome::Reserved(a), ReserveOutcome::LimitReached, ReserveOutcome::NoStock] =
            &out.outcomes[..]
        else {
            panic!("{:?}", out.outcomes);
        };
        assert_eq!(
            (r.id.as_str(), r.created_at, r.expires_at),
            ("r1.S", UnixMs(10), UnixMs(20))
        );
        assert_eq!((p.id.as_str(), p.state), ("r0.S", ReservationState::Paid));
        assert_eq!((a.id.as_str(), a.user_id.as_str()), ("r3.S", "u3"));
        // Too few or too many extras, a letter per item short, an unknown letter: refused.
        for bad in [
            reply(&["10", "20", "7", "RPALN", "r0.S paid 1 2 3 3 u2"]),
            reply(&["10", "20", "7", "RRRLN", "reserved 10 20 0 10 u3"]),
            reply(&["10", "20", "7", "RRRL"]),
            reply(&["10", "20", "7", "RRRLX"]),
            reply(&["10", "20", "7"]),
        ] {
            assert!(
                batch_outcome(&sale, items.clone(), &bad).is_err(),
                "{bad:?}"
            );
        }
    }
}
