//! Keep-alive connections to one node: a bounded stack of idle hyper `client::conn::http1`
//! connections, and the response body that gives its connection back when it has been read.
//!
//! Why not hyper-util's pooled client: the gateway needs to know, for every failure, whether
//! any byte of the request reached the node (only then may it try another node), and it needs
//! the connect step separate from the send step (a refused connect marks the node failed). With
//! raw connections both are plain: `try_send_request` hands back a request it never wrote.
//!
//! A connection is idle only between requests, so the stack holds what the busiest moment
//! needed, up to `UPSTREAM_IDLE_PER_NODE_MAX`. Idle connections older than
//! `UPSTREAM_IDLE_TIMEOUT` are dropped when met (the node closes idle connections itself after
//! its header timeout; we must stop reusing them before that).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::limits::{UPSTREAM_IDLE_PER_NODE_MAX, UPSTREAM_IDLE_TIMEOUT};

/// The request body type sent to nodes: the client's body, read whole (≤ 4 KiB).
pub type UpstreamRequestBody = Full<Bytes>;
pub type Conn = SendRequest<UpstreamRequestBody>;

/// One node's address and its idle connections.
pub struct NodePool {
    pub addr: SocketAddr,
    /// Idle connections, most recently used at the back. A std mutex: held for a push or a pop,
    /// never across an await.
    idle: Mutex<VecDeque<(Conn, Instant)>>,
}

impl NodePool {
    pub fn new(addr: SocketAddr) -> NodePool {
        NodePool {
            addr,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// The most recently used idle connection that is still open and not too old.
    pub fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = idle.pop_back() {
            if now.saturating_duration_since(since) >= UPSTREAM_IDLE_TIMEOUT {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request, unless the stack is full or the connection closed.
    pub fn checkin(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while idle.front().is_some_and(|(_, since)| {
            now.saturating_duration_since(*since) >= UPSTREAM_IDLE_TIMEOUT
        }) {
            idle.pop_front();
        }
        if idle.len() < UPSTREAM_IDLE_PER_NODE_MAX {
            idle.push_back((conn, now));
        }
        debug_assert!(idle.len() <= UPSTREAM_IDLE_PER_NODE_MAX);
    }

    /// A new connection to the node (no timeout here: the caller bounds it). The connection's
    /// I/O runs on its own task, which ends when the node closes it or every handle is dropped.
    pub async fn connect(&self) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(self.addr).await?;
        let _ = stream.set_nodelay(true);
        let (conn, driver) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(node = %addr, error = %e, "upstream connection ended");
            }
        });
        Ok(conn)
    }
}

/// A node's response body, streamed to the client. When the body has been read to its end the
/// connection goes back to its pool; if the client goes away mid-body, the connection is
/// dropped (closed) instead, as its remaining bytes are unread.
pub struct PooledBody {
    inner: Incoming,
    /// `Some` until the connection is given back or dropped.
    lease: Option<(Conn, Arc<NodePool>)>,
}

impl PooledBody {
    pub fn new(inner: Incoming, conn: Conn, pool: Arc<NodePool>) -> PooledBody {
        let mut body = PooledBody {
            inner,
            lease: Some((conn, pool)),
        };
        // An empty body (204, HEAD, Content-Length: 0) may never be polled.
        body.give_back_if_done();
        body
    }

    fn give_back_if_done(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }

    fn give_back(&mut self) {
        if let Some((conn, pool)) = self.lease.take() {
            pool.checkin(conn);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) => self.give_back_if_done(),
            Poll::Ready(Some(Err(_))) => self.lease = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // The server may have seen `is_end_stream` and never polled for the end.
        self.give_back_if_done();
    }
}
