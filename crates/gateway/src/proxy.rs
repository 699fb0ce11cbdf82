//! One request through the gateway: read the body (bounded), pick a node, forward, and retry on
//! the next node only what never reached a node.
//!
//! The retry rule is the one that keeps a reservation from being made twice: a request goes to
//! a second node only if the first could not be connected to (refused, unreachable, timed out)
//! or handed the request back unwritten (a kept-alive connection that had just closed). Once a
//! byte of it was written, whatever happens next (the node dies, the answer times out) is
//! answered 502/504 to the client, who may retry with its `Idempotency-Key`. This is nginx's
//! `proxy_next_upstream error timeout` for non-idempotent requests; unlike nginx we apply it to
//! every method, since a node's GETs are cheap to retry from the client.
//!
//! Failures feed the balancer's passive health checks (`max_fails`, `fail_timeout`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};

use crate::h1;
use crate::limits::{
    BODY_BYTES_MAX, BODY_DRAIN_BYTES_MAX, BODY_DRAIN_TIMEOUT, BODY_READ_TIMEOUT,
    UPSTREAM_CONNECT_TIMEOUT, UPSTREAM_IDLE_PER_NODE_MAX,
};
use crate::pool::{Conn, ExchangeError, NodePool, PooledBody};
use crate::wrr::{SmoothWrr, Tried};
use crate::GatewayConfig;

/// The `X-Node-Id` of answers the gateway gives itself (502, 504, 413...): docs/API.md wants every
/// response to name who answered it.
pub const X_NODE_ID_GATEWAY: &str = "gateway";

/// What the client gets: a node's streamed body, or one of the gateway's own small answers.
pub type GatewayBody = Either<PooledBody, Full<Bytes>>;

/// The gateway's state, shared by every connection.
pub struct Shared {
    /// The keep-alive pools of `Gateway::serve` (one runtime); each thread of
    /// `Gateway::serve_threads` has pools of its own (`Worker`).
    nodes: Vec<Arc<NodePool>>,
    /// The balancer. A std mutex: a pick is a short loop over the nodes, never held across an
    /// await.
    balancer: Mutex<SmoothWrr>,
    /// Per node, whether it has failures on record (written under `balancer`'s lock), so a
    /// success on a healthy node needs no second lock.
    has_fails: Vec<AtomicBool>,
    /// Per node: requests sent to it (tries), and tries that failed. For `/gateway/stats`
    /// and `/metrics`.
    pub(crate) tries: Vec<AtomicU64>,
    pub(crate) try_failures: Vec<AtomicU64>,
    pub(crate) max_fails: u32,
    pub(crate) fail_timeout: std::time::Duration,
    /// From writing a request to a node to its response head; past it, 504.
    response_timeout: Duration,
    pub(crate) started: Instant,
    /// Set by `Gateway::begin_drain`: `/readyz` answers 503.
    pub(crate) draining: AtomicBool,
}

/// One node as the gateway sees it now.
pub(crate) struct NodeView {
    pub addr: SocketAddr,
    pub weight: u32,
    pub tries: u64,
    pub failures: u64,
    pub fails: u32,
    /// How much longer it is skipped, when it is.
    pub down_for: Option<std::time::Duration>,
}

/// Why a try on one node did not produce a response.
enum TryError {
    /// Nothing of the request was written: it may go to the next node.
    NotSent,
    /// The request was (at least partly) written; the node failed after.
    Broken,
    /// Written, and no response headers within the response timeout.
    TimedOut,
}

impl Shared {
    pub fn new(config: &GatewayConfig) -> Shared {
        let weights: Vec<u32> = config.nodes.iter().map(|n| n.weight).collect();
        Shared {
            nodes: config
                .nodes
                .iter()
                .map(|n| Arc::new(NodePool::new(n.addr)))
                .collect(),
            balancer: Mutex::new(SmoothWrr::new(
                &weights,
                config.max_fails,
                config.fail_timeout,
            )),
            has_fails: config
                .nodes
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            tries: config.nodes.iter().map(|_| AtomicU64::new(0)).collect(),
            try_failures: config.nodes.iter().map(|_| AtomicU64::new(0)).collect(),
            max_fails: config.max_fails,
            fail_timeout: config.fail_timeout,
            response_timeout: config.response_timeout,
            started: Instant::now(),
            draining: AtomicBool::new(false),
        }
    }

    /// Every node's figures and health, now.
    pub(crate) fn node_views(&self) -> Vec<NodeView> {
        let now = Instant::now();
        let balancer = self.balancer();
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, pool)| NodeView {
                addr: pool.addr,
                weight: balancer.weight(i),
                tries: self.tries[i].load(Ordering::Relaxed),
                failures: self.try_failures[i].load(Ordering::Relaxed),
                fails: balancer.fails(i),
                down_for: balancer.down_for(i, now),
            })
            .collect()
    }

    fn balancer(&self) -> std::sync::MutexGuard<'_, SmoothWrr> {
        self.balancer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pick(&self, tried: Tried) -> Option<usize> {
        self.balancer().pick(tried, Instant::now())
    }

    fn failed(&self, node: usize) {
        self.try_failures[node].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut balancer = self.balancer();
        balancer.failed(node, now);
        self.has_fails[node].store(true, Ordering::Relaxed);
        if balancer.is_down(node, now) {
            tracing::warn!(node = %self.nodes[node].addr, "node failed; skipped until its fail timeout");
        }
    }

    fn succeeded(&self, node: usize) {
        if self.has_fails[node].load(Ordering::Relaxed) {
            let mut balancer = self.balancer();
            balancer.succeeded(node);
            self.has_fails[node].store(balancer.fails(node) != 0, Ordering::Relaxed);
        }
    }
}

/// The client's address as an `X-Forwarded-For` value, made once per connection rather than
/// formatted for every request.
pub fn forwarded_for(client: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&client.ip().to_string()).expect("an IP address is a valid header value")
}

/// What one runtime serves with: the shared state and its own keep-alive pools. A connection
/// to a node is registered with the runtime that opened it, so a runtime per thread keeps its
/// connections to itself: their readiness is then never another thread's wake-up.
pub struct Worker {
    pub shared: Arc<Shared>,
    pools: Vec<Arc<NodePool>>,
}

impl Worker {
    /// The worker of the shared pools (one multi-threaded runtime).
    pub fn shared_pools(shared: Arc<Shared>) -> Worker {
        let pools = shared.nodes.clone();
        Worker { shared, pools }
    }

    /// A worker with pools of its own (one of `Gateway::serve_threads`).
    pub fn own_pools(shared: Arc<Shared>) -> Worker {
        let pools = shared
            .nodes
            .iter()
            .map(|p| Arc::new(NodePool::new(p.addr)))
            .collect();
        Worker { shared, pools }
    }
}

/// Answers one client request. `client` is the connection's `forwarded_for` value.
pub async fn handle(
    worker: Arc<Worker>,
    req: Request<Incoming>,
    client: HeaderValue,
) -> Response<GatewayBody> {
    let shared = &worker.shared;
    if let Some(own) = crate::status::answer(shared, &req) {
        return own;
    }
    let (mut parts, body) = req.into_parts();
    // One id per request, the client's if usable: the node logs and returns the same one.
    let request_id = match parts.headers.get(&X_REQUEST_ID) {
        Some(v) if usable_request_id(v) => v.clone(),
        _ => new_request_id(),
    };
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    let mut resp = match read_body(&parts.headers, body).await {
        Ok(body) => forward(&worker, &Upstream::new(&parts, &body, &client)).await,
        Err(refusal) => refusal,
    };
    if resp.status().is_server_error() {
        tracing::debug!(request_id = ?request_id, status = resp.status().as_u16(), "answered with an error");
    }
    resp.headers_mut().entry(X_REQUEST_ID).or_insert(request_id);
    resp
}

/// `X-Request-Id`, as the nodes read and return it.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether a client's request id is passed on as it is (1–128 printable ASCII characters).
fn usable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// A new request id: `gw-`, this process's start time and a counter, in hex (unique per
/// gateway). Written by hand: a formatter was 3 % of the gateway's instructions per request.
fn new_request_id() -> HeaderValue {
    static START: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 3 + 16 + 1 + 16];
    id[..3].copy_from_slice(b"gw-");
    let mut len = 3 + push_hex(&mut id[3..], *START);
    id[len] = b'-';
    len += 1;
    len += push_hex(&mut id[len..], n);
    HeaderValue::from_bytes(&id[..len]).expect("hex is header-safe")
}

/// Writes `n` in lowercase hex, without leading zeros, at the start of `out`; answers how many
/// digits.
fn push_hex(out: &mut [u8], n: u64) -> usize {
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    for (i, d) in out[..digits].iter_mut().enumerate() {
        let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
        *d = b"0123456789abcdef"[nibble as usize];
    }
    digits
}

/// A request as every node gets it, written once however many nodes are tried: the head
/// (`h1::write_request_head`) and the body, in one buffer for one write.
struct Upstream {
    bytes: Vec<u8>,
    method: Method,
}

impl Upstream {
    fn new(parts: &Parts, body: &[u8], client: &HeaderValue) -> Upstream {
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut bytes = Vec::with_capacity(512 + body.len());
        h1::write_request_head(
            &mut bytes,
            &parts.method,
            target,
            &parts.headers,
            client,
            body.len(),
        );
        bytes.extend_from_slice(body);
        Upstream {
            bytes,
            method: parts.method.clone(),
        }
    }
}

/// Tries nodes in the balancer's order until one answers or a try fails past the point of no
/// return. At most one try per node.
async fn forward(worker: &Worker, req: &Upstream) -> Response<GatewayBody> {
    let shared = &*worker.shared;
    let mut tried = Tried::default();
    for _ in 0..shared.nodes.len() {
        let Some(node) = shared.pick(tried) else {
            break;
        };
        tried.insert(node);
        shared.tries[node].fetch_add(1, Ordering::Relaxed);
        match try_node(&worker.pools[node], req, shared.response_timeout).await {
            Ok(resp) => {
                shared.succeeded(node);
                return resp;
            }
            Err(TryError::NotSent) => shared.failed(node),
            Err(TryError::Broken) => {
                shared.failed(node);
                return error(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the node failed while answering; the request may have been processed",
                );
            }
            Err(TryError::TimedOut) => {
                shared.failed(node);
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway_timeout",
                    "the node did not answer in time; the request may have been processed",
                );
            }
        }
    }
    error(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        "no node could take the request: every node is down or refused the connection",
    )
}

/// One try on one node: idle connections first (one that takes no byte of the request is
/// dropped and the next is tried), then a new connection.
async fn try_node(
    pool: &Arc<NodePool>,
    req: &Upstream,
    response_timeout: Duration,
) -> Result<Response<GatewayBody>, TryError> {
    for _ in 0..=UPSTREAM_IDLE_PER_NODE_MAX {
        let Some(conn) = pool.checkout() else {
            break;
        };
        match send(pool, conn, req, response_timeout).await {
            Err(TryError::NotSent) => {}
            done => return done,
        }
    }
    let conn = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, pool.connect()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(node = %pool.addr, error = %e, "cannot connect");
            return Err(TryError::NotSent);
        }
        Err(_) => {
            tracing::debug!(node = %pool.addr, "connect timed out");
            return Err(TryError::NotSent);
        }
    };
    send(pool, conn, req, response_timeout).await
}

async fn send(
    pool: &Arc<NodePool>,
    mut conn: Conn,
    req: &Upstream,
    response_timeout: Duration,
) -> Result<Response<GatewayBody>, TryError> {
    match conn
        .exchange(&req.bytes, &req.method, response_timeout)
        .await
    {
        Ok(head) => Ok(downstream_response(head, conn, pool.clone())),
        Err(ExchangeError::NotSent) => Err(TryError::NotSent),
        Err(ExchangeError::Broken(e)) => {
            tracing::debug!(node = %pool.addr, error = %e, "request failed after it was sent");
            Err(TryError::Broken)
        }
        // Dropping `conn` here closes it: its answer may still come, and must not be read as
        // the next request's.
        Err(ExchangeError::TimedOut) => Err(TryError::TimedOut),
    }
}

/// Reads the client's body whole, within `BODY_BYTES_MAX` and `BODY_READ_TIMEOUT`, or answers
/// the refusal the node would give (413, 408, 400).
async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, Response<GatewayBody>> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_BYTES_MAX as u64) {
        let drained = drain(body).await;
        return Err(too_large(drained));
    }
    let limited = Limited::new(body, BODY_BYTES_MAX);
    match tokio::time::timeout(BODY_READ_TIMEOUT, collect(limited)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(false)),
        Ok(Err(_)) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body could not be read",
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request",
            "the request body did not arrive in time",
        )),
    }
}

/// The whole body. A small body arrives as one frame: that frame's bytes are used as they are,
/// without copying them into a buffer list.
async fn collect(
    mut body: Limited<Incoming>,
) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    let first = match body.frame().await {
        None => return Ok(Bytes::new()),
        Some(frame) => frame?.into_data().unwrap_or_default(),
    };
    if body.is_end_stream() {
        return Ok(first);
    }
    let mut all = bytes::BytesMut::from(first);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            all.extend_from_slice(&data);
        }
    }
    Ok(all.freeze())
}

/// Reads and throws away a refused body (bounded), so the client sees the answer rather than a
/// reset. Answers whether the body was read to its end.
async fn drain(mut body: Incoming) -> bool {
    let deadline = tokio::time::Instant::now() + BODY_DRAIN_TIMEOUT;
    let mut read: u64 = 0;
    while read <= BODY_DRAIN_BYTES_MAX {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Ok(None) => return true,
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
    false
}

fn too_large(body_read: bool) -> Response<GatewayBody> {
    let mut resp = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than 4096 bytes",
    );
    if !body_read {
        // The rest of the body is still on the wire: this connection cannot carry another
        // request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The node's response for the client: its status and end-to-end headers (`X-Node-Id`
/// included, hop-by-hop ones already dropped by `h1`), its body streamed, the connection
/// returned to the pool once the body is read.
fn downstream_response(head: h1::Head, conn: Conn, pool: Arc<NodePool>) -> Response<GatewayBody> {
    let body = PooledBody::new(&head, conn, pool);
    let mut resp = Response::new(Either::Left(body));
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    resp
}

/// One of the gateway's own answers, in the API's error shape.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response<GatewayBody> {
    let body = format!(r#"{{"error":"{code}","message":"{message}"}}"#);
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        HeaderName::from_static("x-node-id"),
        HeaderValue::from_static(X_NODE_ID_GATEWAY),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_request_is_written_once_head_then_body() {
        let req = Request::builder()
            .method("POST")
            .uri("http://example.com/api/v1/sales/G1/reservations?x=1")
            .header("x-forwarded-for", "10.0.0.1")
            .header("content-length", "2")
            .header("transfer-encoding", "chunked")
            .header("idempotency-key", "k1")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let client = forwarded_for("192.0.2.7:5555".parse().unwrap());
        let up = Upstream::new(&parts, b"{}", &client);
        assert_eq!(up.method, Method::POST);
        assert_eq!(
            String::from_utf8(up.bytes).unwrap(),
            "POST /api/v1/sales/G1/reservations?x=1 HTTP/1.1\r\nidempotency-key: k1\r\n\
             x-forwarded-for: 10.0.0.1, 192.0.2.7\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn request_ids_are_hex_and_distinct() {
        let mut out = [0u8; 16];
        for (n, hex) in [
            (0u64, "0"),
            (0xa, "a"),
            (0x1f, "1f"),
            (u64::MAX, "ffffffffffffffff"),
        ] {
            let len = push_hex(&mut out, n);
            assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), hex);
        }
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        let a = a.to_str().unwrap();
        assert!(a.starts_with("gw-") && usable_request_id(&HeaderValue::from_str(a).unwrap()));
        assert_eq!(a.split('-').count(), 3, "{a}");
    }

    #[test]
    fn own_errors_are_api_json_from_the_gateway() {
        let resp = error(StatusCode::BAD_GATEWAY, "bad_gateway", "all down");
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["x-node-id"], X_NODE_ID_GATEWAY);
        assert_eq!(resp.headers()["content-type"], "application/json");
    }
}
