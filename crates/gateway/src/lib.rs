//! The load-balancing tier in front of the nodes: a small HTTP gateway with nginx's smooth
//! weighted round-robin (`ticketrush gateway`, and the tier `ticketrush demo` starts in-process),
//! and the nginx configuration for the same tier (`ticketrush nginx-conf`).
//!
//! The gateway is deliberately lean: hyper's server towards clients, HTTP/1.1 by hand towards
//! nodes (`h1`), no router, request bodies (at most 4 KiB) read whole before forwarding so a
//! request that never reached a node can go to the next one, response bodies streamed back. It
//! does not depend on the node's crate: a tier in front of nodes has no business linking their
//! store.
//!
//! - [`wrr`] — the balancer, pure (nginx's algorithm and passive health checks).
//! - [`nginx`] — the configuration text, pure.
//! - `proxy` — one request: pick, forward, retry only what was never sent.
//! - `pool` — keep-alive connections to one node, one exchange on one, the streamed body.
//! - [`h1`] — the upstream half of HTTP/1.1, pure: request head, response head, chunked bodies
//!   (the load generator reads its answers with it too).
//! - `server` — the accept loop.
//! - `status` — what the gateway answers itself: `/dashboard`, `/gateway/stats`, `/metrics`.

pub mod h1;
pub mod limits;
pub mod nginx;
mod pool;
mod proxy;
mod server;
mod status;
pub mod wrr;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use proxy::X_NODE_ID_GATEWAY;

/// One node behind the tier: its address and its weight (1..=`limits::WEIGHT_MAX`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub addr: SocketAddr,
    pub weight: u32,
}

impl NodeSpec {
    /// Parses `ADDR=WEIGHT`, e.g. `127.0.0.1:3001=4`. ADDR is an IP address and port.
    pub fn parse(s: &str) -> Result<NodeSpec, ConfigError> {
        let (addr, weight) = s
            .rsplit_once('=')
            .ok_or_else(|| ConfigError::NodeSyntax(s.to_string()))?;
        let addr = addr
            .parse()
            .map_err(|_| ConfigError::NodeAddr(addr.to_string()))?;
        let weight = weight
            .parse::<u32>()
            .ok()
            .filter(|w| (1..=limits::WEIGHT_MAX).contains(w))
            .ok_or_else(|| ConfigError::Weight(weight.to_string()))?;
        Ok(NodeSpec { addr, weight })
    }
}

/// What a gateway balances and how it treats failures.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub nodes: Vec<NodeSpec>,
    /// Failures within `fail_timeout` that take a node out (0: never), as nginx's `max_fails`.
    pub max_fails: u32,
    /// How long a failed node stays out before it gets a request again, as nginx's
    /// `fail_timeout`.
    pub fail_timeout: Duration,
    /// From writing a request to a node to its response head; past it the client gets 504 and
    /// the node a failure (never retried: the node may have acted). `UPSTREAM_RESPONSE_TIMEOUT`
    /// unless a test needs it short.
    pub response_timeout: Duration,
}

impl GatewayConfig {
    /// The tier with nginx's defaults: `max_fails=1`, `fail_timeout=10s`.
    pub fn new(nodes: Vec<NodeSpec>) -> GatewayConfig {
        GatewayConfig {
            nodes,
            max_fails: limits::MAX_FAILS_DEFAULT,
            fail_timeout: Duration::from_secs(limits::FAIL_TIMEOUT_SECONDS_DEFAULT),
            response_timeout: limits::UPSTREAM_RESPONSE_TIMEOUT,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::NoNodes);
        }
        if self.nodes.len() > limits::NODES_MAX {
            return Err(ConfigError::TooManyNodes(self.nodes.len()));
        }
        if let Some(n) = self
            .nodes
            .iter()
            .find(|n| !(1..=limits::WEIGHT_MAX).contains(&n.weight))
        {
            return Err(ConfigError::Weight(n.weight.to_string()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0:?} is not ADDR=WEIGHT (for example 127.0.0.1:3001=4)")]
    NodeSyntax(String),
    #[error("{0:?} is not an IP address and port (for example 127.0.0.1:3001)")]
    NodeAddr(String),
    #[error("weight {0:?} is not a whole number from 1 to {max}", max = limits::WEIGHT_MAX)]
    Weight(String),
    #[error("at least one --node ADDR=WEIGHT is needed")]
    NoNodes,
    #[error("{0} nodes given; at most {max} are supported", max = limits::NODES_MAX)]
    TooManyNodes(usize),
}

/// A gateway ready to serve: the balancer and one keep-alive pool per node. Cheap to clone
/// (shared state); serve it on any number of listeners.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<proxy::Shared>,
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Result<Gateway, ConfigError> {
        config.validate()?;
        Ok(Gateway {
            shared: Arc::new(proxy::Shared::new(&config)),
        })
    }

    /// Marks the gateway as stopping: its own `/readyz` answers 503 from now on, while
    /// requests are still forwarded.
    pub fn begin_drain(&self) {
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting and gives open
    /// requests up to `limits::SHUTDOWN_DRAIN` to finish.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let worker = Arc::new(proxy::Worker::shared_pools(self.shared.clone()));
        server::serve(listener, worker, limits::CONNECTIONS_MAX, shutdown).await;
    }

    /// Serves on `addr` as nginx's workers do: `threads` threads, each with a current-thread
    /// runtime, its own listener on the same address (`SO_REUSEPORT`: the kernel spreads new
    /// connections over them) and its own keep-alive pools, so a request never leaves the
    /// thread that accepted its connection. The balancer and the figures stay shared. Stops
    /// when `stop` turns true (or its sender is dropped), as `serve` does on its shutdown.
    /// Answers once every thread listens (the address bound, port 0 resolved), or with the
    /// first bind error; threads already started then stop with `stop`.
    pub fn serve_threads(
        &self,
        addr: SocketAddr,
        threads: usize,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Serving> {
        // `SO_REUSEPORT` would let this gateway share a port that another process (a gateway
        // still running) listens on, splitting the traffic between them without a word: the
        // port is first claimed alone, so a taken port is an error as with a plain listener
        // (and port 0 gets its number).
        let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
        let threads = threads.max(1);
        let connections_max = limits::CONNECTIONS_MAX.div_ceil(threads);
        let mut serving = Serving {
            addr,
            threads: Vec::new(),
        };
        for i in 0..threads {
            let (bound_tx, bound_rx) = std::sync::mpsc::channel();
            let worker = Arc::new(proxy::Worker::own_pools(self.shared.clone()));
            let (at, stop) = (serving.addr, stop.clone());
            let thread = std::thread::Builder::new()
                .name(format!("gateway-{i}"))
                .spawn(move || {
                    if let Err(e) = serve_thread(at, worker, connections_max, stop, &bound_tx) {
                        let _ = bound_tx.send(Err(e));
                    }
                })?;
            serving.threads.push(thread);
            match bound_rx.recv() {
                Ok(Ok(bound)) => serving.addr = bound,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(std::io::Error::other("a gateway thread ended at start")),
            }
        }
        Ok(serving)
    }
}

/// One thread of `serve_threads`: its runtime and listener (the bound address sent on `bound`
/// once it listens), served until `stop`. A failure to start is answered to the caller.
fn serve_thread(
    at: SocketAddr,
    worker: Arc<proxy::Worker>,
    connections_max: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
    bound: &std::sync::mpsc::Sender<std::io::Result<SocketAddr>>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = reuseport_listener(at)?;
        let _ = bound.send(listener.local_addr());
        let shutdown = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        server::serve(listener, worker, connections_max, shutdown).await;
        Ok(())
    })
}

/// A listener on `addr` that other listeners may share (`SO_REUSEPORT`).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(limits::LISTEN_BACKLOG)
}

/// The threads of `Gateway::serve_threads`.
pub struct Serving {
    /// The address every thread listens on.
    pub addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Serving {
    /// Waits for every thread to finish (after `stop` turned true and the drain).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_spec_parses_addr_and_weight() {
        assert_eq!(
            NodeSpec::parse("127.0.0.1:3001=4"),
            Ok(NodeSpec {
                addr: "127.0.0.1:3001".parse().unwrap(),
                weight: 4
            })
        );
        assert_eq!(NodeSpec::parse("[::1]:80=100").map(|n| n.weight), Ok(100));
    }

    #[test]
    fn node_spec_refuses_what_is_not_addr_equals_weight() {
        use ConfigError::*;
        assert!(matches!(
            NodeSpec::parse("127.0.0.1:3001"),
            Err(NodeSyntax(_))
        ));
        assert!(matches!(
            NodeSpec::parse("localhost:3001=1"),
            Err(NodeAddr(_))
        ));
        assert!(matches!(NodeSpec::parse("127.0.0.1=1"), Err(NodeAddr(_))));
        for w in ["0", "101", "-1", "x", ""] {
            let s = format!("127.0.0.1:3001={w}");
            assert!(matches!(NodeSpec::parse(&s), Err(Weight(_))), "{s}");
        }
    }

    #[test]
    fn config_needs_between_one_and_max_nodes() {
        assert_eq!(
            GatewayConfig::new(vec![]).validate(),
            Err(ConfigError::NoNodes)
        );
        let node = NodeSpec::parse("127.0.0.1:1=1").unwrap();
        let many = vec![node; limits::NODES_MAX + 1];
        assert!(matches!(
            GatewayConfig::new(many).validate(),
            Err(ConfigError::TooManyNodes(_))
        ));
    }
}
