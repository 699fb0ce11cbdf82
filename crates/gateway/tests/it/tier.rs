//! The built-in gateway, in-process, over real nodes: the spread (counted by `X-Node-Id`, in
//! nginx's exact smooth order for a sequential client), answers passed through, 502 when every
//! node is down, routing around a stopped node, never a request sent twice, kept-alive
//! connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use ticketrush_gateway::NodeSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use ticketrush_testkit::gateway::{
    concurrent_node_ids, counts, four_nodes, node_id, refused_addr, sequential_node_ids,
    start_gateway, GatewayNode as Node,
};
use ticketrush_testkit::wait_until;

/// The gateway in front of one node, nginx's default failure settings.
async fn gateway_to(addr: SocketAddr) -> ticketrush_testkit::gateway::TestGateway {
    start_gateway(vec![NodeSpec { addr, weight: 1 }], Duration::from_secs(10)).await
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
    let gw = gateway_to(node.addr).await;
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
    let gw = gateway_to(addr).await;
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

/// A "node" that answers by hand what a real node never sends but HTTP allows: per request
/// path, a canned answer (`answer`), the connection kept or closed after it as the answer says.
/// Counts connections accepted and connections it has seen closed by either side.
struct RawNode {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
}

/// What the raw node writes for a path, and whether it closes the connection after.
fn answer(path: &str) -> (Vec<u8>, bool) {
    match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-node-id: raw\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
                .to_vec(),
            false,
        ),
        "/until-close" => (
            b"HTTP/1.1 200 OK\r\nx-node-id: raw\r\nconnection: close\r\n\r\nread until close"
                .to_vec(),
            true,
        ),
        "/big" => {
            let mut a = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-node-id: raw\r\n\r\n",
                BIG_BODY_BYTES
            )
            .into_bytes();
            a.extend(big_body());
            (a, false)
        }
        "/then-close" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-node-id: raw\r\n\r\nok".to_vec(),
            true,
        ),
        "/garbage" => (b"HTTP/1.1 2OO OK\r\n\r\n".to_vec(), true),
        _ => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-node-id: raw\r\n\r\nok".to_vec(),
            false,
        ),
    }
}

const BIG_BODY_BYTES: usize = 1024 * 1024 + 7;

fn big_body() -> Vec<u8> {
    (0..BIG_BODY_BYTES).map(|i| (i % 251) as u8).collect()
}

impl RawNode {
    async fn start() -> RawNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (acc, end) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let end = end.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    'conn: loop {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        // Requests of these tests have no body.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            buf.drain(..end + 4);
                            let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                            let (bytes, close) = answer(&path);
                            // In pieces, so the gateway reads heads and bodies split anywhere.
                            for piece in bytes.chunks(7_777) {
                                if stream.write_all(piece).await.is_err() {
                                    break 'conn;
                                }
                            }
                            if close {
                                break 'conn;
                            }
                        }
                    }
                    drop(stream);
                    end.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawNode {
            addr,
            accepted,
            ended,
        }
    }
}

async fn raw_get(gw: &std::net::SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let resp = reqwest::get(format!("http://{gw}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    let node = resp
        .headers()
        .get("x-node-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, node, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn gateway_reads_chunked_close_delimited_and_large_answers_whole() {
    let node = RawNode::start().await;
    let gw = gateway_to(node.addr).await;
    let (status, id, body) = raw_get(&gw.addr, "/chunked").await;
    assert_eq!(
        (status, id.as_str(), &body[..]),
        (200, "raw", &b"hello world"[..])
    );
    let (status, _, body) = raw_get(&gw.addr, "/big").await;
    assert_eq!(status, 200);
    assert!(
        body == big_body(),
        "the 1 MiB body came back altered ({} bytes)",
        body.len()
    );
    // Both kept their connection alive: one upstream connection so far.
    assert_eq!(node.accepted.load(Ordering::SeqCst), 1);
    let (status, _, body) = raw_get(&gw.addr, "/until-close").await;
    assert_eq!((status, &body[..]), (200, &b"read until close"[..]));
    // That connection is spent: the next request needs a new one, and gets its answer.
    let (status, _, body) = raw_get(&gw.addr, "/chunked").await;
    assert_eq!((status, &body[..]), (200, &b"hello world"[..]));
    assert_eq!(node.accepted.load(Ordering::SeqCst), 2);
    // An answer that is not HTTP is the gateway's 502, not a panic or a hang.
    let a = gw.client.get("/garbage").await;
    assert_eq!((a.status, a.error()), (502, "bad_gateway"), "{a:?}");
}

#[tokio::test]
async fn gateway_does_not_reuse_a_connection_the_node_has_closed() {
    let node = RawNode::start().await;
    let gw = gateway_to(node.addr).await;
    for round in 1..=3 {
        // Answered with keep-alive, then closed by the node while idle in the gateway's pool.
        let (status, _, body) = raw_get(&gw.addr, "/then-close").await;
        assert_eq!((status, &body[..]), (200, &b"ok"[..]), "round {round}");
        let ended = node.ended.clone();
        assert!(
            wait_until(Duration::from_secs(5), || {
                let ended = ended.clone();
                async move { ended.load(Ordering::SeqCst) >= round }
            })
            .await
        );
        // The next request must not be written to the closed connection (that would be a 502:
        // written requests are never retried); it goes on a new one.
        let a = gw.client.get("/healthz").await;
        assert_eq!(a.status, 200, "round {round}: {a:?}");
    }
    assert!(node.accepted.load(Ordering::SeqCst) >= 4);
}

/// A "node" that reads requests and never answers, keeping each connection open; counts the
/// connections it was given.
async fn silent_node() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn gateway_answers_504_when_a_node_is_silent_and_sends_the_request_nowhere_else() {
    let (silent, silent_accepted) = silent_node().await;
    let (other, other_accepted) = counting_node().await;
    let mut config = ticketrush_gateway::GatewayConfig::new(vec![
        NodeSpec {
            addr: silent,
            weight: 1,
        },
        NodeSpec {
            addr: other,
            weight: 1,
        },
    ]);
    let timeout = Duration::from_millis(300);
    config.response_timeout = timeout;
    let gw = ticketrush_testkit::gateway::serve_gateway(config).await;
    let started = std::time::Instant::now();
    let a = gw.client.reserve("G1", "alice").await;
    assert_eq!((a.status, a.error()), (504, "gateway_timeout"), "{a:?}");
    assert!(
        started.elapsed() >= timeout,
        "answered 504 before the timeout"
    );
    assert_eq!(silent_accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        other_accepted.load(Ordering::SeqCst),
        0,
        "a request that timed out on a node was sent to another"
    );
}

#[tokio::test]
async fn a_kept_connection_idle_past_the_response_timeout_still_serves_the_next_request() {
    let (addr, accepted) = counting_node().await;
    let mut config = ticketrush_gateway::GatewayConfig::new(vec![NodeSpec { addr, weight: 1 }]);
    let timeout = Duration::from_millis(200);
    config.response_timeout = timeout;
    let gw = ticketrush_testkit::gateway::serve_gateway(config).await;
    for round in 0..3 {
        let a = gw.client.get("/healthz").await;
        assert_eq!(a.status, 200, "round {round}: {a:?}");
        // The connection's timer, set for the request above, fires while it sits idle: the
        // next request on it must get a full timeout of its own, not an instant 504.
        tokio::time::sleep(timeout * 2).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the connection was not kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_threads_share_one_address_and_one_balancer_and_stop_together() {
    let (nodes, specs) = four_nodes().await;
    let gateway = ticketrush_gateway::Gateway::new(ticketrush_gateway::GatewayConfig::new(specs))
        .expect("valid tier");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = {
        let gateway = gateway.clone();
        tokio::task::spawn_blocking(move || {
            gateway.serve_threads("127.0.0.1:0".parse().unwrap(), 3, stopped)
        })
        .await
        .unwrap()
        .expect("the threads listen")
    };
    assert_ne!(serving.addr.port(), 0, "port 0 resolved");
    // A second gateway on the same port is refused, not let in to share the traffic.
    let (_, stopped_too) = tokio::sync::watch::channel(false);
    let again = {
        let gateway = gateway.clone();
        let addr = serving.addr;
        tokio::task::spawn_blocking(move || gateway.serve_threads(addr, 2, stopped_too))
            .await
            .unwrap()
    };
    assert_eq!(
        again.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::AddrInUse)
    );
    let client = ticketrush_testkit::Client::new(serving.addr);
    // Many connections at once, spread by the kernel over the three listeners: every request
    // answered, and one balancer for all of them keeps nginx's 1:2:3:4 exactly.
    let ids = concurrent_node_ids(&client, 200, 20).await;
    let c = counts(&ids);
    for i in 1..=4 {
        assert_eq!(c[&format!("n{i}")], 20 * i, "{c:?}");
    }
    stop.send(true).unwrap();
    let joined = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || serving.join()),
    )
    .await;
    assert!(joined.is_ok(), "the gateway threads did not stop");
    for n in nodes {
        n.stop().await;
    }
}
