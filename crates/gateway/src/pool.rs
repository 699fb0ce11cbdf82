//! Keep-alive connections to one node: a bounded stack of idle connections, the exchange of one
//! request on a connection (written and read by the request's own task, `h1` doing the bytes),
//! and the response body that gives its connection back when it has been read.
//!
//! Why not a pooled client (hyper-util's): the gateway needs to know, for every failure,
//! whether any byte of the request reached the node (only then may it try another node), and
//! it needs the connect step separate from the send step (a refused connect marks the node
//! failed). Here both are plain: a write that fails before its first byte is `NotSent`.
//!
//! A connection is idle only between requests, so the stack holds what the busiest moment
//! needed, up to `UPSTREAM_IDLE_PER_NODE_MAX`. Idle connections older than
//! `UPSTREAM_IDLE_TIMEOUT` are dropped when met (the node closes idle connections itself after
//! its header timeout; we must stop reusing them before that), and one the node has closed is
//! seen at checkout: the runtime's readiness for it says so, and a read then finds the end.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::h1::{self, Chunked, Decoded, Framing, Head, Parsed};
use crate::limits::{UPSTREAM_IDLE_PER_NODE_MAX, UPSTREAM_IDLE_TIMEOUT, UPSTREAM_READ_BYTES};

/// One node's address and its idle connections.
pub struct NodePool {
    pub addr: SocketAddr,
    /// Idle connections, most recently used at the back. A std mutex: held for a push or a pop,
    /// never across an await.
    idle: Mutex<VecDeque<(Conn, Instant)>>,
}

/// One keep-alive connection to a node and what has been read from it but not yet used.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// Bounds each exchange's wait for the response head: one timer for the connection's life,
    /// moved only when it fires (about once per response timeout), rather than a timer put in
    /// and taken out of the runtime's wheel for every request.
    watchdog: Pin<Box<Sleep>>,
}

/// Why an exchange produced no response head.
pub enum ExchangeError {
    /// Not a byte of the request was written: it may go to another node.
    NotSent,
    /// The request was (at least partly) written, then the connection failed or the answer was
    /// not HTTP.
    Broken(String),
    /// Written, and no response head within the timeout.
    TimedOut,
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
            if conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request, unless the stack is full.
    pub fn checkin(&self, conn: Conn) {
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

    /// A new connection to the node (no timeout here: the caller bounds it).
    pub async fn connect(&self) -> io::Result<Conn> {
        let stream = TcpStream::connect(self.addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            watchdog: Box::pin(tokio::time::sleep(Duration::ZERO)),
        })
    }
}

impl Conn {
    /// Whether an idle connection can take a request: nothing arrived on it since its last
    /// answer, neither bytes nobody asked for nor the node's close. Costs no system call unless
    /// the runtime saw the socket become readable.
    fn is_open(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes `request` (head and body, whole) and reads the response head, within `timeout`.
    /// Informational answers are skipped.
    pub async fn exchange(
        &mut self,
        request: &[u8],
        method: &Method,
        timeout: Duration,
    ) -> Result<Head, ExchangeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let Conn {
            stream,
            buf,
            watchdog,
        } = self;
        let mut exchange = pin!(exchange(stream, buf, request, method));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = exchange.as_mut().poll(cx) {
                return Poll::Ready(done);
            }
            // The watchdog fires at an earlier exchange's deadline (or at once, on a new
            // connection): only then is it moved, to this one's.
            while watchdog.as_mut().poll(cx).is_ready() {
                if tokio::time::Instant::now() >= deadline {
                    return Poll::Ready(Err(ExchangeError::TimedOut));
                }
                watchdog.as_mut().reset(deadline);
            }
            Poll::Pending
        })
        .await
    }

    /// Reads more of the answer into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < UPSTREAM_READ_BYTES / 4 {
            self.buf.reserve(UPSTREAM_READ_BYTES);
        }
        pin!(self.stream.read_buf(&mut self.buf)).poll(cx)
    }
}

/// `Conn::exchange` without its timeout.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    request: &[u8],
    method: &Method,
) -> Result<Head, ExchangeError> {
    {
        let mut written = 0;
        while written < request.len() {
            match stream.write(&request[written..]).await {
                Ok(0) | Err(_) if written == 0 => return Err(ExchangeError::NotSent),
                Ok(0) => return Err(ExchangeError::Broken("the node stopped reading".into())),
                Ok(n) => written += n,
                Err(e) => return Err(ExchangeError::Broken(e.to_string())),
            }
        }
        loop {
            if !buf.is_empty() {
                match h1::parse_response(buf, method) {
                    Ok(Parsed::Done(head)) => return Ok(head),
                    Ok(Parsed::Informational) => continue,
                    Ok(Parsed::Partial) => {}
                    Err(e) => return Err(ExchangeError::Broken(e.to_string())),
                }
            }
            buf.reserve(UPSTREAM_READ_BYTES);
            match stream.read_buf(buf).await {
                Ok(0) => {
                    return Err(ExchangeError::Broken(
                        "the node closed the connection before answering".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(ExchangeError::Broken(e.to_string())),
            }
        }
    }
}

/// A node's response body, streamed to the client. When the body has been read to its end the
/// connection goes back to its pool (if the node keeps it alive); if the client goes away
/// mid-body, the connection is dropped (closed) instead, as its remaining bytes are unread.
pub struct PooledBody {
    state: BodyState,
    /// `Some` until the body ends or fails.
    lease: Option<(Conn, Arc<NodePool>)>,
    keep_alive: bool,
}

enum BodyState {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl PooledBody {
    pub fn new(head: &Head, conn: Conn, pool: Arc<NodePool>) -> PooledBody {
        let state = match head.framing {
            Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(Chunked::default()),
            Framing::UntilClose => BodyState::UntilClose,
        };
        let mut body = PooledBody {
            state,
            lease: Some((conn, pool)),
            keep_alive: head.keep_alive,
        };
        // An empty body (204, HEAD, Content-Length: 0) may never be polled.
        body.end_if_done();
        body
    }

    /// Once the body is complete: the connection goes back to the pool if it can carry another
    /// request (kept alive, nothing unread on it), else it is closed.
    fn end_if_done(&mut self) {
        if !matches!(self.state, BodyState::Done) {
            return;
        }
        if let Some((conn, pool)) = self.lease.take() {
            if self.keep_alive && conn.buf.is_empty() {
                pool.checkin(conn);
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.state = BodyState::Done;
        self.lease = None;
        Poll::Ready(Some(Err(e)))
    }
}

fn ended_early() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the node closed the connection mid-body",
    )
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some((conn, _)) = this.lease.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                BodyState::Done => {
                    this.end_if_done();
                    return Poll::Ready(None);
                }
                BodyState::Length(left) => {
                    if !conn.buf.is_empty() {
                        let take = conn
                            .buf
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        let data = conn.buf.split_to(take).freeze();
                        *left -= take as u64;
                        if *left == 0 {
                            this.state = BodyState::Done;
                            this.end_if_done();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyState::Chunked(dec) => match dec.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End) => {
                        this.state = BodyState::Done;
                        continue;
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(io::Error::new(io::ErrorKind::InvalidData, e)),
                },
                BodyState::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            // The buffer holds nothing more of the body: read.
            let Some((conn, _)) = this.lease.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, BodyState::UntilClose) => {
                    this.state = BodyState::Done;
                    this.keep_alive = false;
                }
                Ok(0) => return this.fail(ended_early()),
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
