//! The gateway's accept loop: hyper's HTTP/1.1 server with keep-alive, a bound on connections, a
//! header-read timeout and a bounded request head, and a graceful drain on shutdown.
//!
//! It mirrors the node's `ticketrush_server::http::serve` rather than reusing it: that one serves
//! an axum `Router`, and the gateway needs neither a router nor axum's boxed bodies (a node's
//! response is streamed through as hyper gave it), nor a dependency on the node's crate.

use std::future::Future;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::limits::{HEADER_BYTES_MAX, HEADER_READ_TIMEOUT, SHUTDOWN_DRAIN};
use crate::proxy::{self, Worker};

/// Serves `listener` with at most `connections_max` open connections.
pub async fn serve(
    listener: TcpListener,
    worker: Arc<Worker>,
    connections_max: usize,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(connections_max));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(HEADER_BYTES_MAX)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let worker = worker.clone();
        let forwarded_for = proxy::forwarded_for(client);
        let service = service_fn(move |req| {
            let worker = worker.clone();
            let forwarded_for = forwarded_for.clone();
            async move {
                let resp = proxy::handle(worker, req, forwarded_for).await;
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("gateway connections still open after the drain time; closing them");
    }
}
