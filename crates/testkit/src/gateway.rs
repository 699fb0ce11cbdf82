//! The gateway served in this process on a free port, and nodes to put behind it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ticketrush_gateway::{Gateway, GatewayConfig, NodeSpec};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::{config, Client, TempDir};

/// A node named `id` served on `listener`, with its own store; stopped on `stop` or drop.
pub struct GatewayNode {
    pub addr: SocketAddr,
    running: ticketrush_server::Running,
    _dir: TempDir,
}

impl GatewayNode {
    pub async fn start(id: &str) -> GatewayNode {
        GatewayNode::start_on(id, TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn start_on(id: &str, listener: TcpListener) -> GatewayNode {
        let dir = TempDir::new("gw-node");
        let (store, _) = ticketrush_orders::open_embedded(&dir.0).expect("open store");
        let app =
            ticketrush_server::Application::on(config(id), Arc::new(store), listener).unwrap();
        GatewayNode {
            addr: app.addr(),
            running: app.spawn(),
            _dir: dir,
        }
    }

    /// Stops accepting, closes its connections (they are idle between requests) and waits.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// Four nodes `n1`..`n4` with weights 1..4, the article's tier.
pub async fn four_nodes() -> (Vec<GatewayNode>, Vec<NodeSpec>) {
    let mut nodes = Vec::new();
    let mut specs = Vec::new();
    for i in 1..=4u32 {
        let node = GatewayNode::start(&format!("n{i}")).await;
        specs.push(NodeSpec {
            addr: node.addr,
            weight: i,
        });
        nodes.push(node);
    }
    (nodes, specs)
}

/// The gateway served in this process on a free port; stopped when dropped.
pub struct TestGateway {
    pub client: Client,
    pub addr: std::net::SocketAddr,
    _stop: oneshot::Sender<()>,
}

pub async fn start_gateway(nodes: Vec<NodeSpec>, fail_timeout: Duration) -> TestGateway {
    let mut config = GatewayConfig::new(nodes);
    config.fail_timeout = fail_timeout;
    serve_gateway(config).await
}

/// The gateway with any configuration, served in this process on a free port.
pub async fn serve_gateway(config: GatewayConfig) -> TestGateway {
    let gateway = Gateway::new(config).expect("valid tier");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        gateway
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    TestGateway {
        client: Client::new(addr),
        addr,
        _stop: stop,
    }
}

/// The node that answered `n` sequential `GET /healthz`, in order; every answer must be 200.
pub async fn sequential_node_ids(client: &Client, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let a = client.get("/healthz").await;
        assert_eq!(a.status, 200, "{a:?}");
        ids.push(node_id(&a.headers));
    }
    ids
}

pub fn node_id(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("x-node-id")
        .expect("every answer names its node")
        .to_str()
        .unwrap()
        .to_string()
}

pub fn counts(ids: &[String]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for id in ids {
        *c.entry(id.clone()).or_insert(0) += 1;
    }
    c
}

/// A port on which nothing listens (bound, then released).
pub async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// `n` requests from `concurrency` sequential clients; every answer must be 200.
pub async fn concurrent_node_ids(client: &Client, n: usize, concurrency: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let each = n / concurrency;
        tasks.push(tokio::spawn(async move {
            sequential_node_ids(&client, each).await
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await.expect("client task"));
    }
    ids
}
