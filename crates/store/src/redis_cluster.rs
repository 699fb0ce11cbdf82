//! A Redis Cluster client that keeps each master's trouble to that master's sales.
//!
//! Every call ticketrush makes names one key (a sale's keys share a hash tag, so one slot),
//! except `SCRIPT LOAD` (sent to every master) and a few keyless probes (sent to any
//! master). So the client is small: a slot map read with `CLUSTER SLOTS`, one reconnecting
//! multiplexed connection per master, created on first use, and the redirections a live
//! cluster answers with:
//!
//! - `MOVED`: the slot has a new owner (a resharding finished, or a failover). The call is
//!   sent again to the owner named, that one slot is repointed at once and the whole map is
//!   read again in the background.
//! - `ASK`: the slot is being migrated and this key is already on the target; the call is
//!   sent again to the target, preceded by `ASKING`, and the map is left as it is.
//! - `TRYAGAIN` (a multi-key call during a migration), `CLUSTERDOWN`, `MASTERDOWN`,
//!   `READONLY` (a write reached a node demoted to replica): the map is read again and the
//!   call retried after a short pause, a bounded number of times.
//!
//! A master that dies fails only the calls routed to it: they get an I/O error at once
//! (connection refused) or at the caller's timeout, and trigger a background map refresh,
//! so after a failover the slot's new master is found without a restart. Calls to other
//! masters never wait for that refresh or for the dead master's connection. (The general
//! cluster client of redis-rs serialises its recovery with every request, so one master
//! killed mid-burst stalled the node's calls to the live masters for as long as it was
//! down; that is why this module exists.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, Value,
};

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16_384;
/// Redirections (MOVED, ASK) one call may follow before its error is returned.
const ATTEMPTS_MAX: usize = 6;
/// Retries of a call the cluster asked to retry (TRYAGAIN during a slot migration,
/// CLUSTERDOWN or MASTERDOWN during a failover): `RETRY_PAUSE` apart, 1.5 s in all, within the
/// caller's 2 s bound.
const RETRIES_MAX: usize = 30;
/// Least time between two background reads of the slot map.
const REFRESH_INTERVAL_MIN: Duration = Duration::from_millis(200);
/// Pause before retrying a call the cluster asked to retry (TRYAGAIN, CLUSTERDOWN, …).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Most masters (and so connections) one client keeps.
const NODES_MAX: usize = 1_000;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{` and
/// the next `}`, when not empty) or of the whole key, modulo 16,384.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % SLOTS as u16
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Slot(u16),
    AnyMaster,
    AllMasters,
}

fn arg(cmd: &Cmd, idx: usize) -> Option<&[u8]> {
    match cmd.args_iter().nth(idx)? {
        redis::Arg::Simple(a) => Some(a),
        _ => None,
    }
}

/// The route of one command, from the few shapes ticketrush sends.
fn route_of(cmd: &Cmd) -> Route {
    let Some(name) = arg(cmd, 0) else {
        return Route::AnyMaster;
    };
    let name = name.to_ascii_uppercase();
    match name.as_slice() {
        b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO" | b"FCALL" => {
            let keys = arg(cmd, 2)
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            match (keys, arg(cmd, 3)) {
                (1.., Some(key)) => Route::Slot(slot_of(key)),
                _ => Route::AnyMaster,
            }
        }
        b"SCRIPT" => Route::AllMasters,
        b"XREAD" | b"XREADGROUP" => {
            let streams = cmd.args_iter().position(
                |a| matches!(a, redis::Arg::Simple(s) if s.eq_ignore_ascii_case(b"STREAMS")),
            );
            match streams.and_then(|i| arg(cmd, i + 1)) {
                Some(key) => Route::Slot(slot_of(key)),
                None => Route::AnyMaster,
            }
        }
        b"PING" | b"INFO" | b"TIME" | b"CLUSTER" | b"ECHO" => Route::AnyMaster,
        _ => match arg(cmd, 1) {
            Some(key) => Route::Slot(slot_of(key)),
            None => Route::AnyMaster,
        },
    }
}

fn route_of_pipeline(pipeline: &Pipeline) -> Route {
    pipeline
        .cmd_iter()
        .map(route_of)
        .find(|r| matches!(r, Route::Slot(_)))
        .unwrap_or(Route::AnyMaster)
}

/// The cluster's slot map: for each slot the index of its master in `masters` (or none).
struct SlotMap {
    masters: Vec<String>,
    owner: Vec<u16>,
}

const NO_OWNER: u16 = u16::MAX;

impl SlotMap {
    fn owner_of(&self, slot: u16) -> Option<&str> {
        let i = *self.owner.get(slot as usize)?;
        (i != NO_OWNER).then(|| self.masters[i as usize].as_str())
    }

    /// The map from a `CLUSTER SLOTS` reply; `asked` is the node asked, whose host stands in
    /// for an empty or unknown one in the reply.
    fn parse(reply: &Value, asked: &str) -> Option<SlotMap> {
        let Value::Array(ranges) = reply else {
            return None;
        };
        let asked_host = asked.rsplit_once(':').map(|(h, _)| h).unwrap_or(asked);
        let mut map = SlotMap {
            masters: Vec::new(),
            owner: vec![NO_OWNER; SLOTS],
        };
        for range in ranges {
            let Value::Array(parts) = range else {
                return None;
            };
            let int = |v: &Value| match v {
                Value::Int(n) => usize::try_from(*n).ok(),
                _ => None,
            };
            let (start, end) = (int(parts.first()?)?, int(parts.get(1)?)?);
            let Value::Array(master) = parts.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let host = if host.is_empty() || host == "?" {
                asked_host.to_string()
            } else {
                host
            };
            let addr = format!("{host}:{}", int(master.get(1)?)?);
            let index = match map.masters.iter().position(|m| *m == addr) {
                Some(i) => i,
                None => {
                    if map.masters.len() >= NODES_MAX {
                        return None;
                    }
                    map.masters.push(addr);
                    map.masters.len() - 1
                }
            };
            if start > end || end >= SLOTS {
                return None;
            }
            map.owner[start..=end].fill(index as u16);
        }
        (!map.masters.is_empty()).then_some(map)
    }
}

/// One master's connection, made on first use; a failed attempt is tried again next call.
type NodeCell = Arc<tokio::sync::OnceCell<ConnectionManager>>;

struct Router {
    /// The seed's connection settings (auth, database, TLS); a node's differ by address only.
    template: ConnectionInfo,
    seeds: Vec<String>,
    timeout: Duration,
    map: RwLock<Arc<SlotMap>>,
    nodes: Mutex<HashMap<String, NodeCell>>,
    refreshing: AtomicBool,
    last_refresh: Mutex<Option<Instant>>,
}

/// A connection to a Redis Cluster; clones share it.
#[derive(Clone)]
pub struct ClusterConn {
    router: Arc<Router>,
}

fn addr_of(info: &ConnectionInfo) -> Option<String> {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Some(format!("{host}:{port}"))
        }
        _ => None,
    }
}

fn server_error(kind: ServerErrorKind) -> impl Fn(&RedisError) -> bool {
    move |e| e.kind() == ErrorKind::Server(kind)
}

impl ClusterConn {
    /// Connects through the first seed that answers `CLUSTER SLOTS`. `seeds` are Redis URLs
    /// of nodes of one cluster; each call is bounded by `timeout` by its caller, and
    /// connecting to a node by `timeout` here.
    pub async fn connect(
        seeds: &[&str],
        timeout: Duration,
        tls: &crate::redis_store::RedisTls,
    ) -> RedisResult<ClusterConn> {
        let first = seeds
            .first()
            .ok_or_else(|| RedisError::from((ErrorKind::InvalidClientConfig, "no seed")))?;
        // The seed's settings, TLS parameters included: every node is reached with them.
        let template = tls.client(first)?.get_connection_info().clone();
        let mut seed_addrs = Vec::new();
        for s in seeds {
            let info = s.into_connection_info()?;
            seed_addrs.push(addr_of(&info).ok_or_else(|| {
                RedisError::from((ErrorKind::InvalidClientConfig, "a cluster seed must be TCP"))
            })?);
        }
        let router = Arc::new(Router {
            template,
            seeds: seed_addrs,
            timeout,
            map: RwLock::new(Arc::new(SlotMap {
                masters: Vec::new(),
                owner: vec![NO_OWNER; SLOTS],
            })),
            nodes: Mutex::new(HashMap::new()),
            refreshing: AtomicBool::new(false),
            last_refresh: Mutex::new(None),
        });
        router.refresh().await?;
        Ok(ClusterConn { router })
    }

    /// PING each known master in turn until one answers.
    pub async fn ping_any(&self) -> RedisResult<()> {
        let mut last = None;
        for addr in self.masters() {
            let attempt = async {
                let mut conn = self.router.node(&addr).await?;
                redis::cmd("PING").query_async::<()>(&mut conn).await
            };
            match tokio::time::timeout(self.router.timeout, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(RedisError::from((ErrorKind::Io, "PING timed out", addr))),
            }
        }
        self.router.refresh_soon();
        Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::Io, "no known master"))))
    }

    /// The masters in the current slot map (`host:port`).
    pub fn masters(&self) -> Vec<String> {
        self.router.map().masters.clone()
    }
}

impl Router {
    fn map(&self) -> Arc<SlotMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn node_cell(&self, addr: &str) -> NodeCell {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if nodes.len() >= NODES_MAX && !nodes.contains_key(addr) {
            // A map gone wild; start over rather than grow without bound.
            nodes.clear();
        }
        nodes.entry(addr.to_string()).or_default().clone()
    }

    async fn node(&self, addr: &str) -> RedisResult<ConnectionManager> {
        let cell = self.node_cell(addr);
        let conn = cell
            .get_or_try_init(|| async {
                let (host, port) = addr
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| {
                        RedisError::from((ErrorKind::Client, "bad node address", addr.to_string()))
                    })?;
                let target = match self.template.addr() {
                    ConnectionAddr::TcpTls {
                        insecure,
                        tls_params,
                        ..
                    } => ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: *insecure,
                        tls_params: tls_params.clone(),
                    },
                    _ => ConnectionAddr::Tcp(host, port),
                };
                let client = redis::Client::open(self.template.clone().set_addr(target))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                tokio::time::timeout(
                    self.timeout,
                    ConnectionManager::new_with_config(client, config),
                )
                .await
                .map_err(|_| {
                    RedisError::from((ErrorKind::Io, "connecting timed out", addr.to_string()))
                })?
            })
            .await?;
        Ok(conn.clone())
    }

    /// Reads the slot map from the first node that answers: the known masters, then the
    /// seeds.
    async fn refresh(&self) -> RedisResult<()> {
        let mut candidates = self.map().masters.clone();
        for s in &self.seeds {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        let mut last = None;
        for addr in candidates {
            let attempt = async {
                let mut conn = self.node(&addr).await?;
                let reply: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut conn)
                    .await?;
                SlotMap::parse(&reply, &addr).ok_or_else(|| {
                    RedisError::from((ErrorKind::Client, "unreadable CLUSTER SLOTS", addr.clone()))
                })
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(map)) => {
                    *self.map.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
                    *self.last_refresh.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                    return Ok(());
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(RedisError::from((
                        ErrorKind::Io,
                        "CLUSTER SLOTS timed out",
                        addr.clone(),
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::Io, "no cluster node answered"))))
    }

    /// Reads the map again in the background, at most once per `REFRESH_INTERVAL_MIN`; no
    /// call waits for it.
    fn refresh_soon(self: &Arc<Self>) {
        let recent = self
            .last_refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < REFRESH_INTERVAL_MIN);
        if recent || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let router = self.clone();
        tokio::spawn(async move {
            if let Err(e) = router.refresh().await {
                tracing::debug!(error = %e, "redis cluster: slot map refresh failed");
            }
            router.refreshing.store(false, Ordering::Release);
        });
    }

    /// Points one slot at `addr` (after a MOVED), until the next full read of the map.
    fn repoint(&self, slot: u16, addr: &str) {
        let mut guard = self.map.write().unwrap_or_else(|p| p.into_inner());
        let mut map = SlotMap {
            masters: guard.masters.clone(),
            owner: guard.owner.clone(),
        };
        let index = match map.masters.iter().position(|m| m == addr) {
            Some(i) => i,
            None if map.masters.len() < NODES_MAX => {
                map.masters.push(addr.to_string());
                map.masters.len() - 1
            }
            None => return,
        };
        map.owner[slot as usize] = index as u16;
        *guard = Arc::new(map);
    }

    fn pick(&self, route: Route) -> RedisResult<Vec<String>> {
        let map = self.map();
        match route {
            Route::Slot(slot) => map
                .owner_of(slot)
                .map(|a| vec![a.to_string()])
                .ok_or_else(|| {
                    RedisError::from((
                        ErrorKind::Server(ServerErrorKind::ClusterDown),
                        "no master serves the slot",
                        slot.to_string(),
                    ))
                }),
            Route::AnyMaster => map
                .masters
                .first()
                .map(|a| vec![a.clone()])
                .ok_or_else(|| RedisError::from((ErrorKind::Io, "no known master"))),
            Route::AllMasters => Ok(map.masters.clone()),
        }
    }

    /// Sends `send` (one command or a pipeline) along `route`, following redirections.
    async fn call<T, F, Fut>(self: &Arc<Self>, route: Route, send: F) -> RedisResult<T>
    where
        F: Fn(ConnectionManager, bool) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        if route == Route::AllMasters {
            // SCRIPT LOAD: every master that answers gets the script (one that is down loads it
            // on its next NOSCRIPT); the first answer is returned.
            let mut first = None;
            let mut last_error = None;
            for addr in self.pick(route)? {
                let answer = match self.node(&addr).await {
                    Ok(conn) => send(conn, false).await,
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(a) => {
                        first.get_or_insert(a);
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            return first.ok_or_else(|| {
                last_error.unwrap_or_else(|| RedisError::from((ErrorKind::Io, "no known master")))
            });
        }
        let mut redirect: Option<(String, bool)> = None;
        let (mut attempt, mut retries) = (0, 0);
        loop {
            attempt += 1;
            let (addr, asking) = match redirect.take() {
                Some(r) => r,
                None => (self.pick(route)?.remove(0), false),
            };
            let result = match self.node(&addr).await {
                Ok(conn) => send(conn, asking).await,
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if attempt >= ATTEMPTS_MAX {
                self.refresh_soon();
                return Err(err);
            }
            let moved = server_error(ServerErrorKind::Moved);
            let ask = server_error(ServerErrorKind::Ask);
            if moved(&err) || ask(&err) {
                let Some((target, slot)) = err.redirect_node() else {
                    return Err(err);
                };
                let target = if target.starts_with(':') {
                    // An empty host: the node that answered.
                    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
                    format!("{host}{target}")
                } else {
                    target.to_string()
                };
                if moved(&err) {
                    self.repoint(slot, &target);
                    self.refresh_soon();
                }
                redirect = Some((target, ask(&err)));
                continue;
            }
            let retry_later = [
                ServerErrorKind::TryAgain,
                ServerErrorKind::ClusterDown,
                ServerErrorKind::MasterDown,
                ServerErrorKind::ReadOnly,
            ]
            .into_iter()
            .any(|k| server_error(k)(&err));
            if retry_later && retries < RETRIES_MAX {
                retries += 1;
                attempt -= 1;
                self.refresh_soon();
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() {
                // The master may be gone for good (a failover): find out in the background;
                // the call itself is not repeated, since it may have been applied.
                self.refresh_soon();
            }
            return Err(err);
        }
    }
}

/// The replies of a pipeline, or the first redirection (or retry request) among them as an
/// error; other error replies stay values for the caller.
fn redirection_in(values: Vec<Value>) -> RedisResult<Vec<Value>> {
    let redirected = values.iter().position(|v| {
        matches!(v, Value::ServerError(e) if matches!(
            e.kind(),
            Some(ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly)
        ))
    });
    match redirected {
        Some(i) => Err(values
            .into_iter()
            .nth(i)
            .expect("found above")
            .extract_error()
            .expect_err("an error reply")),
        None => Ok(values),
    }
}

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let router = self.router.clone();
        Box::pin(async move {
            router
                .call(route_of(cmd), |mut conn, asking| {
                    async move {
                        if asking {
                            let mut pipe = redis::pipe();
                            pipe.cmd("ASKING").ignore().add_command(cmd.clone());
                            let mut values = conn.req_packed_commands(&pipe, 1, 1).await?;
                            values.pop().unwrap_or(Value::Nil).extract_error()
                        } else {
                            // A server's error reply arrives as a value: make it an error so
                            // that redirections are seen (the caller would convert it anyway).
                            conn.req_packed_command(cmd).await?.extract_error()
                        }
                    }
                })
                .await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let router = self.router.clone();
        Box::pin(async move {
            router
                .call(route_of_pipeline(pipeline), |mut conn, asking| {
                    async move {
                        if asking {
                            // ASKING holds for the one command after it: send each command of
                            // the pipeline behind its own ASKING.
                            let mut pipe = redis::pipe();
                            for cmd in pipeline.cmd_iter() {
                                pipe.cmd("ASKING").ignore().add_command(cmd.clone());
                            }
                            let values = conn
                                .req_packed_commands(&pipe, offset * 2 + 1, count * 2 - 1)
                                .await?;
                            redirection_in(values.into_iter().step_by(2).collect())
                        } else {
                            redirection_in(conn.req_packed_commands(pipeline, offset, count).await?)
                        }
                    }
                })
                .await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT on Redis 7.
        assert_eq!(slot_of(b"foo"), 12_182);
        assert_eq!(slot_of(b"123456789"), 12_739);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    }

    #[test]
    fn commands_route_by_their_key() {
        let key = "{sale:a}:sale";
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc").arg(2).arg(key).arg("{sale:a}:users").arg(1);
        assert_eq!(route_of(&eval), Route::Slot(slot_of(key.as_bytes())));
        let mut hget = redis::cmd("HGET");
        hget.arg(key).arg("total");
        assert_eq!(route_of(&hget), Route::Slot(slot_of(key.as_bytes())));
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("STREAMS")
            .arg(key)
            .arg(">");
        assert_eq!(route_of(&read), Route::Slot(slot_of(key.as_bytes())));
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        assert_eq!(route_of(&load), Route::AllMasters);
        assert_eq!(route_of(&redis::cmd("PING")), Route::AnyMaster);
    }
}
