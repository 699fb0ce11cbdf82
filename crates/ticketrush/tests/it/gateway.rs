//! The load-balancing tier over real nodes: the built-in gateway in-process, and a real nginx
//! running the configuration `ticketrush nginx-conf` prints.
//!
//! The spread is counted by `X-Node-Id`. Through the gateway a sequential client sees nginx's
//! exact smooth order; nginx itself runs one balancer per worker process, so its spread is
//! checked within 2 percentage points. The nginx tests need the nginx binary (scripts/test
//! installs it when missing) and fail, not skip, without it. Each nginx runs in its own prefix
//! under the temp dir and is stopped when its handle drops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use ticketrush_gateway::{Gateway, GatewayConfig, NodeSpec};
use ticketrush_store::EmbeddedStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::support::{config, wait_until, Client, TempDir};

/// A node named `id` served on `listener`, with its own store; stopped on `stop` or drop.
struct Node {
    addr: SocketAddr,
    running: ticketrush_server::Running,
    _dir: TempDir,
}

impl Node {
    async fn start(id: &str) -> Node {
        Node::start_on(id, TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    async fn start_on(id: &str, listener: TcpListener) -> Node {
        let dir = TempDir::new("gw-node");
        let (store, _) = EmbeddedStore::open(&dir.0).expect("open store");
        let app =
            ticketrush_server::Application::on(config(id), Arc::new(store), listener).unwrap();
        Node {
            addr: app.addr(),
            running: app.spawn(),
            _dir: dir,
        }
    }

    /// Stops accepting, closes its connections (they are idle between requests) and waits.
    async fn stop(self) {
        self.running.stop().await;
    }
}

/// Four nodes `n1`..`n4` with weights 1..4, the article's tier.
async fn four_nodes() -> (Vec<Node>, Vec<NodeSpec>) {
    let mut nodes = Vec::new();
    let mut specs = Vec::new();
    for i in 1..=4u32 {
        let node = Node::start(&format!("n{i}")).await;
        specs.push(NodeSpec {
            addr: node.addr,
            weight: i,
        });
        nodes.push(node);
    }
    (nodes, specs)
}

/// The gateway served in this process on a free port; stopped when dropped.
pub(crate) struct TestGateway {
    pub client: Client,
    pub addr: std::net::SocketAddr,
    _stop: oneshot::Sender<()>,
}

pub(crate) async fn start_gateway(nodes: Vec<NodeSpec>, fail_timeout: Duration) -> TestGateway {
    let gateway = Gateway::new(GatewayConfig {
        nodes,
        max_fails: 1,
        fail_timeout,
    })
    .expect("valid tier");
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
async fn sequential_node_ids(client: &Client, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let a = client.get("/healthz").await;
        assert_eq!(a.status, 200, "{a:?}");
        ids.push(node_id(&a.headers));
    }
    ids
}

fn node_id(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("x-node-id")
        .expect("every answer names its node")
        .to_str()
        .unwrap()
        .to_string()
}

fn counts(ids: &[String]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for id in ids {
        *c.entry(id.clone()).or_insert(0) += 1;
    }
    c
}

#[tokio::test]
async fn gateway_spreads_1_2_3_4_in_nginx_order_exactly() {
    let (nodes, specs) = four_nodes().await;
    let gw = start_gateway(specs, Duration::from_secs(10)).await;
    let ids = sequential_node_ids(&gw.client, 100).await;
    // nginx's smooth order for 1:2:3:4 (see wrr.rs): d c b d a c d b c d, repeating.
    let cycle = ["n4", "n3", "n2", "n4", "n1", "n3", "n4", "n2", "n3", "n4"];
    assert_eq!(&ids[..10], cycle);
    assert_eq!(&ids[10..20], cycle);
    let c = counts(&ids);
    for i in 1..=4 {
        assert_eq!(c[&format!("n{i}")], 10 * i, "{c:?}");
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test]
async fn gateway_passes_a_node_answer_through_with_its_node_id() {
    let node = Node::start("solo").await;
    let gw = start_gateway(
        vec![NodeSpec {
            addr: node.addr,
            weight: 1,
        }],
        Duration::from_secs(10),
    )
    .await;
    let created = gw.client.create_sale("GW1", 1, json!({})).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(node_id(&created.headers), "solo");
    let won = gw.client.reserve_with_key("GW1", "alice", "k-1").await;
    assert_eq!(won.status, 201, "{won:?}");
    assert_eq!(won.body["user_id"], "alice");
    let replay = gw.client.reserve_with_key("GW1", "alice", "k-1").await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body["reservation_id"], won.body["reservation_id"]);
    let lost = gw.client.reserve("GW1", "bob").await;
    assert_eq!((lost.status, lost.error()), (409, "sold_out"));
    assert_eq!(node_id(&lost.headers), "solo");
    let missing = gw.client.get("/api/v1/sales/nope").await;
    assert_eq!((missing.status, missing.error()), (404, "sale_not_found"));
    // A body over 4 KiB never reaches the node: the gateway answers as the node would.
    let big = "x".repeat(5000);
    let too_large = gw
        .client
        .post("/api/v1/sales/GW1/reservations", json!({ "user_id": big }))
        .await;
    assert_eq!(too_large.status, 413, "{too_large:?}");
    assert_eq!(too_large.error(), "payload_too_large");
    assert_eq!(
        node_id(&too_large.headers),
        ticketrush_gateway::X_NODE_ID_GATEWAY
    );
    node.stop().await;
}

/// A port on which nothing listens (bound, then released).
async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn gateway_answers_502_bad_gateway_json_when_every_node_is_down() {
    let specs = vec![
        NodeSpec {
            addr: refused_addr().await,
            weight: 1,
        },
        NodeSpec {
            addr: refused_addr().await,
            weight: 2,
        },
    ];
    let gw = start_gateway(specs, Duration::from_secs(10)).await;
    for _ in 0..3 {
        let a = gw.client.reserve("G1", "u1").await;
        assert_eq!((a.status, a.error()), (502, "bad_gateway"), "{a:?}");
        assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(node_id(&a.headers), ticketrush_gateway::X_NODE_ID_GATEWAY);
    }
}

#[tokio::test]
async fn gateway_routes_around_a_stopped_node_and_retries_it_after_the_fail_timeout() {
    let (mut nodes, specs) = four_nodes().await;
    let fail_timeout = Duration::from_secs(1);
    let gw = start_gateway(specs, fail_timeout).await;
    // Warm every node's keep-alive pool, so the stopped node's connections are pooled ones.
    sequential_node_ids(&gw.client, 20).await;
    let n4 = nodes.pop().unwrap();
    let n4_addr = n4.addr;
    n4.stop().await;
    // Every request still succeeds (sequential_node_ids asserts 200), and none is from n4.
    let ids = sequential_node_ids(&gw.client, 60).await;
    let c = counts(&ids);
    assert!(!c.contains_key("n4"), "{c:?}");
    assert_eq!(c.values().sum::<usize>(), 60);
    // The others keep their 1:2:3 ratio (within the one request that found n4 dead).
    let (n1, n2, n3) = (c["n1"] as f64, c["n2"] as f64, c["n3"] as f64);
    assert!(
        (n2 / n1 - 2.0).abs() < 0.5 && (n3 / n1 - 3.0).abs() < 0.7,
        "{c:?}"
    );
    // Bring n4 back on its port: once the fail timeout has passed the gateway tries it again.
    let listener = TcpListener::bind(n4_addr).await.expect("rebind n4's port");
    let back = Node::start_on("n4", listener).await;
    let client = gw.client.clone();
    let seen = wait_until(fail_timeout * 10, || {
        let client = client.clone();
        async move {
            let a = client.get("/healthz").await;
            assert_eq!(a.status, 200, "{a:?}");
            node_id(&a.headers) == "n4"
        }
    })
    .await;
    assert!(seen, "n4 was not tried again after its fail timeout");
    back.stop().await;
    for n in nodes {
        n.stop().await;
    }
}

/// A "node" that reads one request on each connection and closes it without answering, as a
/// node that dies mid-request would; counts the connections it was given.
async fn dying_node() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.shutdown().await;
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn gateway_never_sends_a_request_that_reached_a_node_to_a_second_one() {
    let (dying, dying_accepted) = dying_node().await;
    let (other, other_accepted) = dying_node().await;
    // Equal weights: the first pick is the first node (nginx takes the first on ties).
    let gw = start_gateway(
        vec![
            NodeSpec {
                addr: dying,
                weight: 1,
            },
            NodeSpec {
                addr: other,
                weight: 1,
            },
        ],
        Duration::from_secs(10),
    )
    .await;
    let a = gw.client.reserve("G1", "alice").await;
    assert_eq!((a.status, a.error()), (502, "bad_gateway"), "{a:?}");
    assert_eq!(dying_accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        other_accepted.load(Ordering::SeqCst),
        0,
        "a POST that reached a node was sent to another"
    );
}

/// A minimal keep-alive HTTP/1.1 "node": answers every GET with 200 `ok` on the same
/// connection; counts the connections it was given.
async fn counting_node() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer =
                            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-node-id: counted\r\n\r\nok";
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn gateway_keeps_its_connections_to_a_node_alive() {
    let (addr, accepted) = counting_node().await;
    let gw = start_gateway(vec![NodeSpec { addr, weight: 1 }], Duration::from_secs(10)).await;
    let ids = sequential_node_ids(&gw.client, 100).await;
    assert!(ids.iter().all(|id| id == "counted"));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a sequential client needs one upstream connection"
    );
    // Ten clients at once: at most ten upstream connections, reused.
    concurrent_node_ids(&gw.client, 200, 10).await;
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        n <= 11,
        "{n} upstream connections for 10 concurrent clients"
    );
}

#[test]
fn gateway_and_nginx_conf_refuse_bad_flags_with_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["gateway"], "--node"),
        (&["gateway", "--node", "127.0.0.1:3001"], "ADDR=WEIGHT"),
        (&["gateway", "--node", "127.0.0.1:3001=0"], "from 1 to 100"),
        (
            &["nginx-conf", "--node", "127.0.0.1:3001=101"],
            "from 1 to 100",
        ),
        (&["nginx-conf", "--node", "localhost:3001=1"], "IP address"),
        (&["nginx-conf"], "--node"),
        (
            &["gateway", "--node", "127.0.0.1:1=1", "--max-fails", "101"],
            "--max-fails",
        ),
        (
            &[
                "gateway",
                "--node",
                "127.0.0.1:1=1",
                "--fail-timeout-seconds",
                "0",
            ],
            "--fail-timeout-seconds",
        ),
    ];
    for (args, needle) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_ticketrush"))
            .args(*args)
            .env_remove("TICKETRUSH_NODE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?} should say {needle:?}: {stderr}"
        );
    }
}

#[test]
fn gateway_and_nginx_conf_have_help() {
    for sub in ["gateway", "nginx-conf"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ticketrush"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{sub}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--node <ADDR=WEIGHT>"), "{help}");
        assert!(help.contains("TICKETRUSH_FAIL_TIMEOUT_SECONDS"), "{help}");
    }
}

#[test]
fn nginx_conf_reads_its_flags_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .arg("nginx-conf")
        .env("TICKETRUSH_NODE", "127.0.0.1:3001=1,127.0.0.1:3002=4")
        .env("TICKETRUSH_MAX_FAILS", "3")
        .env("TICKETRUSH_FAIL_TIMEOUT_SECONDS", "20")
        .env("TICKETRUSH_LISTEN", "127.0.0.1:9000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let conf = String::from_utf8(out.stdout).unwrap();
    assert!(conf.contains("server 127.0.0.1:3002 weight=4 max_fails=3 fail_timeout=20s;"));
    assert!(conf.contains("listen 127.0.0.1:9000 "));
}

// ---- nginx ----------------------------------------------------------------------------------

/// The nginx binary: on PATH, or where distributions put it.
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(
            [
                "/usr/sbin/nginx",
                "/usr/local/sbin/nginx",
                "/usr/local/nginx/sbin/nginx",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed (looked on PATH and in /usr/sbin): run scripts/test, \
                 which installs it, or `apt-get install -y nginx-light`"
            )
        })
}

/// The configuration `ticketrush nginx-conf` prints for this tier, written into `prefix`.
fn write_conf(
    prefix: &Path,
    listen: SocketAddr,
    nodes: &[NodeSpec],
    fail_timeout_s: u64,
) -> PathBuf {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ticketrush"));
    cmd.args(["nginx-conf", "--listen", &listen.to_string()]);
    for n in nodes {
        cmd.args(["--node", &format!("{}={}", n.addr, n.weight)]);
    }
    cmd.args(["--fail-timeout-seconds", &fail_timeout_s.to_string()]);
    let out = cmd.env_remove("TICKETRUSH_NODE").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = prefix.join("ticketrush.conf");
    std::fs::write(&file, out.stdout).unwrap();
    file
}

/// An nginx master process in the foreground with its own prefix; stopped (workers included)
/// when dropped.
struct Nginx {
    child: Child,
    prefix: TempDir,
}

impl Nginx {
    fn start(prefix: TempDir, conf: &Path) -> Nginx {
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&prefix.0)
            .arg("-c")
            .arg(conf)
            .arg("-e")
            .arg(prefix.0.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        Nginx { child, prefix }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.0.join("error.log")).unwrap_or_default()
    }

    /// Panics with nginx's error log if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("nginx exited ({status}): {}", self.error_log());
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers and exits. A SIGKILL'd master would leave its
        // workers running, so that is only the fallback, followed by the workers themselves.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nginx_accepts_the_generated_configuration() {
    let prefix = TempDir::new("nginx-t");
    let nodes: Vec<NodeSpec> = (1..=4)
        .map(|i| NodeSpec::parse(&format!("127.0.0.1:{}={i}", 3000 + i)).unwrap())
        .collect();
    let conf = write_conf(&prefix.0, "127.0.0.1:8000".parse().unwrap(), &nodes, 10);
    let out = Command::new(nginx_binary())
        .arg("-t")
        .arg("-p")
        .arg(&prefix.0)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(prefix.0.join("error.log"))
        .output()
        .expect("run nginx -t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "nginx -t refused the configuration: {stderr}"
    );
    assert!(stderr.contains("syntax is ok"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_spreads_1_2_3_4_within_2_points_and_routes_around_a_dead_node() {
    let (mut nodes, specs) = four_nodes().await;
    let prefix = TempDir::new("nginx");
    let listen = refused_addr().await;
    let conf = write_conf(&prefix.0, listen, &specs, 10);
    let mut nginx = Nginx::start(prefix, &conf);
    let client = Client::new(listen);
    let probe = client.clone();
    let up = wait_until(Duration::from_secs(10), || {
        let probe = probe.clone();
        async move {
            probe
                .http
                .get(format!("{}/healthz", probe.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    nginx.assert_running();
    assert!(
        up,
        "nginx did not answer within 10 s: {}",
        nginx.error_log()
    );

    let ids = concurrent_node_ids(&client, 2000, 8).await;
    let c = counts(&ids);
    for i in 1..=4 {
        let share = c.get(&format!("n{i}")).copied().unwrap_or(0) as f64 / ids.len() as f64;
        let expected = i as f64 / 10.0;
        assert!(
            (share - expected).abs() <= 0.02,
            "n{i} got {:.1} % instead of {:.0} % ({c:?})",
            share * 100.0,
            expected * 100.0
        );
    }

    // A dead node is routed around: every request still succeeds, none from the dead one.
    nodes.pop().unwrap().stop().await;
    let ids = concurrent_node_ids(&client, 400, 8).await;
    let c = counts(&ids);
    assert!(!c.contains_key("n4"), "{c:?}");
    assert_eq!(c.values().sum::<usize>(), 400);
    nginx.assert_running();
    drop(nginx);
    for n in nodes {
        n.stop().await;
    }
}

/// `n` requests from `concurrency` sequential clients; every answer must be 200.
async fn concurrent_node_ids(client: &Client, n: usize, concurrency: usize) -> Vec<String> {
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
