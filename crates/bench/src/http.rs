//! The generator's hyper client, for what is not the load's hot path (the `--queue` journey, a
//! read of a sale): one hyper `client::conn::http1` connection per keep-alive socket, nothing
//! pooled. The load's own connections (`conn.rs`) speak HTTP/1.1 by hand.
//!
//! A pool (reqwest, hyper-util's legacy client) takes a lock and a map lookup per request and
//! may open connections behind our back; the generator wants exactly C sockets, each driven by
//! its own task, one request at a time, so the connection count is what the flag says.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::args::Target;

/// Longest wait to connect, or for a read of the sale.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Read buffer of a load connection: several answers' worth.
pub const READ_BUF_BYTES: usize = 8 * 1024;
/// Largest answer body read: the list of every sale (`GET /api/v1/sales`, about 250 bytes a
/// sale, at most 1,024 sales) with room to spare.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// One HTTP/1 connection's two halves: the caller polls `conn` itself (in the same task as its
/// requests, see `conn.rs`), so no request costs a wake-up of another task.
pub type Sender = SendRequest<Full<Bytes>>;
pub type Driver =
    hyper::client::conn::http1::Connection<TokioIo<tokio::net::TcpStream>, Full<Bytes>>;

/// Opens one keep-alive connection, bounded by `CONNECT_TIMEOUT`.
pub async fn connect(target: &Target) -> std::io::Result<(Sender, Driver)> {
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(target.authority.as_str()),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    // A fixed read buffer (answers are a few hundred bytes) spares hyper's adaptive one its
    // growth; small requests are flattened into one buffer for one plain `write`.
    hyper::client::conn::http1::Builder::new()
        .read_buf_exact_size(Some(READ_BUF_BYTES))
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)
}

/// A GET on a fresh connection: (status, body), bounded in time and size.
pub async fn get(target: &Target, path: &str) -> anyhow::Result<(u16, Bytes)> {
    let fut = async {
        let stream = tokio::net::TcpStream::connect(target.authority.as_str()).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, target.authority.as_str())
            .body(Empty::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
            .to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{target}{path}: no answer within {CONNECT_TIMEOUT:?}"))?
}
