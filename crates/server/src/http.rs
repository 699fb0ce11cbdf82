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

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::Response;
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
    let service = TowerToHyperService::new(app.into_service::<Incoming>());
    serve_with_grace(listener, service, shutdown, DRAIN_IDLE_GRACE).await;
}

/// `serve` for any hyper service (the node's is `request_id::NodeService`), keeping idle
/// connections open for `idle_grace` after the listener closed (tests that stop many nodes pass
/// zero: idle connections close at once, as before, and their pooled clients retry a request
/// that met a closed connection before it was written).
pub async fn serve_with_grace<S>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()>,
    idle_grace: std::time::Duration,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let graceful = GracefulShutdown::new();
    let draining = Arc::new(AtomicBool::new(false));
    let service = Draining {
        app,
        draining: draining.clone(),
    };
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

/// The accept loop's service: `app`, and `Connection: close` on every answer made once the
/// drain began (checked as the answer is ready, so a request in progress when it began gets it
/// too). A plain wrapper, not an axum `map_response` layer, which boxed a future per request.
#[derive(Clone)]
struct Draining<S> {
    app: S,
    draining: Arc<AtomicBool>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Draining<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Answer {
            inner: self.app.call(req),
            draining: self.draining.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// `Draining`'s answer.
    struct Answer<F> {
        #[pin]
        inner: F,
        draining: Arc<AtomicBool>,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Answer<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut resp) = std::task::ready!(this.inner.poll(cx));
        if this.draining.load(Ordering::Relaxed) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(resp))
    }
}
