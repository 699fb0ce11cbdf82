//! `Application`: the one way a node is started, by the binary, `demo` and the tests alike.
//! Build it from a config and a store on a listener, read `addr()`, then either `run` it until
//! a shutdown future completes, or `spawn` it and `stop` it later.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ticketrush_store::Store;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::{http, start, Node, NodeConfig, Started};

/// A node bound to its listener, not yet serving.
pub struct Application {
    started: Started,
    listener: TcpListener,
    addr: SocketAddr,
    idle_grace: Duration,
}

impl Application {
    /// Binds `addr` (port 0: the system picks) and builds the node on `store`.
    pub async fn bind(
        config: NodeConfig,
        store: Arc<dyn Store>,
        addr: SocketAddr,
    ) -> std::io::Result<Application> {
        let listener = TcpListener::bind(addr).await?;
        Application::on(config, store, listener)
    }

    /// Builds the node on `store`, to serve on a listener the caller bound.
    pub fn on(
        config: NodeConfig,
        store: Arc<dyn Store>,
        listener: TcpListener,
    ) -> std::io::Result<Application> {
        let addr = listener.local_addr()?;
        Ok(Application {
            started: start(config, store),
            listener,
            addr,
            idle_grace: crate::limits::DRAIN_IDLE_GRACE,
        })
    }

    /// How long idle keep-alive connections stay open once the listener closed (see
    /// `http::serve_with_grace`); tests that stop many nodes use zero.
    pub fn with_idle_grace(mut self, grace: Duration) -> Application {
        self.idle_grace = grace;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.started.node
    }

    /// Serves until `shutdown` completes, drains, then stops the background tasks.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let router = self.started.router.clone();
        http::serve_with_grace(self.listener, router, shutdown, self.idle_grace).await;
        self.started.shutdown().await;
    }

    /// Serves in a task until `Running::stop`.
    pub fn spawn(self) -> Running {
        let addr = self.addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// A node serving in its own task.
pub struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Tells the node to stop (it closes its listener and drains) without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Stops the node and waits until it has drained and its tasks have ended.
    pub async fn stop(mut self) {
        self.begin_stop();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}
