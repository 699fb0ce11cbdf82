//! `X-Request-Id`: one id per request, to follow it across the gateway and the node. Taken from
//! the request when it carries a usable one (1–`REQUEST_ID_LEN_MAX` printable ASCII characters;
//! the gateway adds one when the client did not), made here otherwise, and returned on the
//! response. Every answer of 500 or more is logged with it (at most `ERROR_LINES_PER_SECOND` a
//! second, the rest counted in the next line: an outage must not become a log flood), so a
//! client's 503 can be found in the logs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest request id taken from a client; a longer or unprintable one is replaced.
pub const REQUEST_ID_LEN_MAX: usize = 128;
/// Error lines logged per second at most.
const ERROR_LINES_PER_SECOND: u64 = 10;

/// A new id: this process's random prefix, `-`, and a counter in hex (unique per process; no
/// syscall, no formatting machinery: this runs on every request without an id).
pub fn new_request_id() -> HeaderValue {
    static PREFIX: LazyLock<[u8; 8]> = LazyLock::new(|| {
        let r = crate::node::new_random_id();
        let mut p = [0u8; 8];
        p.copy_from_slice(&r.as_str().as_bytes()[..8]);
        p
    });
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Relaxed);
    let mut buf = [0u8; 8 + 1 + 16];
    buf[..8].copy_from_slice(&*PREFIX);
    buf[8] = b'-';
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
        buf[9 + i] = b"0123456789abcdef"[nibble as usize];
    }
    HeaderValue::from_bytes(&buf[..9 + digits]).expect("base32 and hex are header-safe")
}

/// Whether a client's id is usable as it is.
pub fn usable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= REQUEST_ID_LEN_MAX && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// The node's whole HTTP service, in front of the router (one hand-written service, not axum
/// layers: each layer, and the outer router an axum middleware needs around the inner one, cost
/// a boxed future or a route lookup per request; together about 3,000 instructions):
/// the request id (see the module doc), the reservation hot path (`reservations::hot_path`: a
/// body within the limit, answered before any routing), the router with the body drain of
/// `body::drain_unread` for everything else, and the node's `X-Node-Id` on every answer.
#[derive(Clone)]
pub struct NodeService(Arc<Inner>);

struct Inner {
    node: Arc<crate::node::Node>,
    node_id: HeaderValue,
    router: axum::Router,
}

impl NodeService {
    pub fn new(node: Arc<crate::node::Node>, node_id: HeaderValue, router: axum::Router) -> Self {
        NodeService(Arc::new(Inner {
            node,
            node_id,
            router,
        }))
    }

    /// Answers one request.
    pub async fn answer(&self, req: Request) -> Response {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if usable(v) => v.clone(),
            _ => new_request_id(),
        };
        let method = req.method().clone();
        // A reference count, not a copy: the path is only read if the answer is an error.
        let uri = req.uri().clone();
        let hot = crate::routes::reservations::hot_path(&req)
            .filter(|_| !crate::body::may_outlast_handler(req.body()))
            .map(str::to_owned);
        let mut resp = match hot {
            Some(sale) => {
                crate::routes::reservations::reserve_at(&self.0.node, Ok(sale), req).await
            }
            None => crate::body::drain_unread(req, self.0.router.clone()).await,
        };
        if resp.status().is_server_error() {
            log_error(&id, &method, uri.path(), resp.status().as_u16());
        }
        let headers = resp.headers_mut();
        headers.insert(X_REQUEST_ID, id);
        headers.insert(crate::routes::X_NODE_ID, self.0.node_id.clone());
        resp
    }
}

type BoxAnswer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<B> hyper::service::Service<axum::http::Request<B>> for NodeService
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxAnswer;

    fn call(&self, req: axum::http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.answer(req.map(axum::body::Body::new)).await) })
    }
}

fn log_error(id: &HeaderValue, method: &axum::http::Method, path: &str, status: u16) {
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if WINDOW.swap(second, Relaxed) != second {
        LOGGED.store(0, Relaxed);
    }
    if LOGGED.fetch_add(1, Relaxed) >= ERROR_LINES_PER_SECOND {
        SUPPRESSED.fetch_add(1, Relaxed);
        return;
    }
    let suppressed = SUPPRESSED.swap(0, Relaxed);
    tracing::warn!(
        request_id = %String::from_utf8_lossy(id.as_bytes()),
        %method,
        path,
        status,
        suppressed_before = suppressed,
        "request answered with a server error"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_unique_usable_and_hex_counted() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert!(usable(id), "{id:?}");
            let s = id.to_str().unwrap();
            let (prefix, n) = s.split_once('-').unwrap();
            assert_eq!(prefix.len(), 8);
            assert!(u64::from_str_radix(n, 16).is_ok(), "{s}");
        }
        assert!(!usable(&HeaderValue::from_static("has space")));
        assert!(!usable(&HeaderValue::from_bytes(&[b'x'; 129]).unwrap()));
    }
}
