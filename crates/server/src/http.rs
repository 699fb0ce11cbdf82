//! The accept loop: hyper's HTTP/1.1 with keep-alive, a bound on connections, a bound on a
//! connection's read buffer (so on the request head: larger heads get 431), a header-read
//! timeout, and a graceful drain on shutdown: the listener closes, and each open connection
//! gets `Connection: close` on its next answer, so a request already on its way to an idle
//! keep-alive connection is answered, not cut off. After `DRAIN_IDLE_GRACE` the connections
//! still idle are closed; requests in progress get up to `SHUTDOWN_DRAIN` to finish.
//!
//! `serve` takes the listener and the shutdown signal as arguments (as mini-redis does), so
//! tests run it on `127.0.0.1:0` and stop it when they like.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::limits::{
    CONNECTIONS_MAX, DRAIN_IDLE_GRACE, HEADER_BYTES_MAX, HEADER_READ_TIMEOUT, SHUTDOWN_DRAIN,
};

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and gives open
/// connections up to `SHUTDOWN_DRAIN` to finish their requests.
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    serve_with_grace(listener, app, shutdown, DRAIN_IDLE_GRACE).await;
}

/// `serve`, keeping idle connections open for `idle_grace` after the listener closed (tests
/// that stop many nodes pass zero: idle connections close at once, as before, and their
/// pooled clients retry a request that met a closed connection before it was written).
pub async fn serve_with_grace(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
    idle_grace: std::time::Duration,
) {
    let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let graceful = GracefulShutdown::new();
    let draining = Arc::new(AtomicBool::new(false));
    let app = {
        let draining = draining.clone();
        app.layer(axum::middleware::map_response(
            move |mut r: axum::response::Response| {
                let draining = draining.load(Ordering::Relaxed);
                async move {
                    if draining {
                        r.headers_mut().insert(
                            axum::http::header::CONNECTION,
                            axum::http::HeaderValue::from_static("close"),
                        );
                    }
                    r
                }
            },
        ))
    };
    let service = TowerToHyperService::new(app.into_service::<Incoming>());
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
        let (stream, _) = tokio::select! {
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
        let conn = builder.serve_connection(TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    // Every answer from now on closes its connection; give requests on their way to idle
    // connections the grace (ending early once every connection is gone: each permit is one
    // open connection), then close what is still idle and wait for requests in progress.
    draining.store(true, Ordering::Relaxed);
    let all = u32::try_from(CONNECTIONS_MAX).expect("the bound fits in u32");
    let _ = tokio::time::timeout(idle_grace, connections.acquire_many(all)).await;
    if tokio::time::timeout(SHUTDOWN_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain time; closing them");
    }
}
