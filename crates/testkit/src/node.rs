//! Test helpers: a node on `127.0.0.1:0` with its own data dir, and a small HTTP client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ticketrush_core::NodeId;
use ticketrush_server::NodeConfig;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A fresh, empty directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ticketrush-it-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn config(node_id: &str) -> NodeConfig {
    NodeConfig {
        node_id: NodeId::parse(node_id).unwrap(),
        admin_token: ADMIN_TOKEN.to_string(),
        batch_size_max: ticketrush_server::limits::BATCH_SIZE_DEFAULT,
        batch_wait: ticketrush_server::limits::BATCH_WAIT_DEFAULT,
        pending_max: ticketrush_server::limits::PENDING_DEFAULT,
        default_sale: None,
        user_auth: None,
    }
}

/// A node served in this process on a free loopback port.
pub struct TestNode {
    pub addr: SocketAddr,
    pub client: Client,
    running: ticketrush_server::Running,
    pub dir: TempDir,
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(config("test-node")).await
    }

    pub async fn start_with(config: NodeConfig) -> TestNode {
        Self::start_embedded(config, ticketrush_orders::embedded_options()).await
    }

    /// A node whose embedded store decides by `clock` (expiry, the reaper): a test moves the
    /// clock past a deadline instead of waiting for it.
    pub async fn start_with_clock(
        config: NodeConfig,
        clock: ticketrush_store::ManualClock,
    ) -> TestNode {
        let options = ticketrush_store::embedded::Options {
            clock: Arc::new(clock),
            ..ticketrush_orders::embedded_options()
        };
        Self::start_embedded(config, options).await
    }

    /// A node on an embedded store of its own, opened with `options`.
    async fn start_embedded(
        config: NodeConfig,
        options: ticketrush_store::embedded::Options,
    ) -> TestNode {
        let dir = TempDir::new("node");
        let (store, _) =
            ticketrush_store::EmbeddedStore::open(&dir.0, options).expect("open store");
        Self::start_on(config, Arc::new(store), dir).await
    }

    /// A node on a store of the test's choosing (a Redis store, or one shared by many nodes).
    pub async fn start_on(
        config: NodeConfig,
        store: Arc<dyn ticketrush_store::Store>,
        dir: TempDir,
    ) -> TestNode {
        Self::start_draining(config, store, dir, std::time::Duration::ZERO).await
    }

    /// A node whose shutdown keeps idle connections open for `grace` (see `http::serve`).
    pub async fn start_draining(
        config: NodeConfig,
        store: Arc<dyn ticketrush_store::Store>,
        dir: TempDir,
        grace: std::time::Duration,
    ) -> TestNode {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let app = ticketrush_server::Application::bind(config, store, loopback)
            .await
            .unwrap()
            .with_idle_grace(grace);
        let addr = app.addr();
        TestNode {
            addr,
            client: Client::new(addr),
            running: app.spawn(),
            dir,
        }
    }

    /// Signals the node to stop (it stops accepting and drains) without waiting.
    pub fn begin_stop(&mut self) {
        self.running.begin_stop();
    }

    /// Stops serving and waits for the node's tasks to finish.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// A thin JSON client for one node.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

/// A response reduced to what tests look at.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("request failed");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("read body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    /// Posts any body to the sale creation endpoint as the admin.
    pub async fn admin_post_sale(&self, body: &Value) -> Answer {
        self.send(
            self.http
                .post(format!("{}/api/v1/sales", self.base))
                .bearer_auth(ADMIN_TOKEN)
                .json(body),
        )
        .await
    }

    /// Creates a sale as the admin; `extra` fields are merged into the body.
    pub async fn create_sale(&self, id: &str, total: u64, extra: Value) -> Answer {
        let mut body = json!({"id": id, "total": total});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        self.admin_post_sale(&body).await
    }

    pub async fn reserve(&self, sale: &str, user: &str) -> Answer {
        self.post(
            &format!("/api/v1/sales/{sale}/reservations"),
            json!({"user_id": user}),
        )
        .await
    }

    pub async fn reserve_with_key(&self, sale: &str, user: &str, key: &str) -> Answer {
        self.send(
            self.http
                .post(format!("{}/api/v1/sales/{sale}/reservations", self.base))
                .header("Idempotency-Key", key)
                .json(&json!({"user_id": user})),
        )
        .await
    }

    pub async fn pay(&self, id: &str, user: &str) -> Answer {
        self.post(
            &format!("/api/v1/reservations/{id}/pay"),
            json!({"user_id": user}),
        )
        .await
    }

    pub async fn cancel(&self, id: &str, user: &str) -> Answer {
        self.post(
            &format!("/api/v1/reservations/{id}/cancel"),
            json!({"user_id": user}),
        )
        .await
    }

    /// Joins a sale's waiting room.
    pub async fn join_queue(&self, sale: &str, user: &str) -> Answer {
        self.post(
            &format!("/api/v1/sales/{sale}/queue"),
            json!({"user_id": user}),
        )
        .await
    }

    /// A place in a sale's waiting room.
    pub async fn queue_entry(&self, sale: &str, queue_id: &str) -> Answer {
        self.get(&format!("/api/v1/sales/{sale}/queue/{queue_id}"))
            .await
    }

    /// Reserves with an admission token (a sale with a waiting room).
    pub async fn reserve_admitted(&self, sale: &str, user: &str, token: &str) -> Answer {
        self.send(
            self.http
                .post(format!("{}/api/v1/sales/{sale}/reservations", self.base))
                .header("Admission-Token", token)
                .json(&json!({"user_id": user})),
        )
        .await
    }

    pub async fn join_waitlist(&self, sale: &str, user: &str) -> Answer {
        self.post(
            &format!("/api/v1/sales/{sale}/waitlist"),
            json!({"user_id": user}),
        )
        .await
    }

    pub async fn waitlist_entry(&self, sale: &str, waitlist_id: &str) -> Answer {
        self.get(&format!("/api/v1/sales/{sale}/waitlist/{waitlist_id}"))
            .await
    }

    /// The sale's counts: (available, reserved, paid, total).
    pub async fn counts(&self, sale: &str) -> (u64, u64, u64, u64) {
        let a = self.get(&format!("/api/v1/sales/{sale}")).await;
        assert_eq!(a.status, 200, "{a:?}");
        let n = |k: &str| a.body[k].as_u64().unwrap();
        (n("available"), n("reserved"), n("paid"), n("total"))
    }
}

/// Polls `check` until it answers true or `deadline` passes; answers whether it did.
pub async fn wait_until<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
