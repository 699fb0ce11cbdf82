//! Hostile input: every endpoint answers garbage with a 4xx and the right error code
//! (`invalid_request`, or 413 `payload_too_large` past 4096 bytes), never a 5xx, a panic or a
//! dropped connection, and the node stays healthy afterwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use ticketrush_testkit::{Answer, Client, TestNode, ADMIN_TOKEN};

// ----- helpers -----

/// Asserts a refusal: the status, the error code, a message, and the node's id header.
#[track_caller]
fn assert_refused(a: &Answer, status: u16, code: &str, what: &str) {
    assert!(a.status < 500, "{what}: a 5xx: {a:?}");
    assert_eq!(a.status, status, "{what}: {a:?}");
    assert_eq!(a.error(), code, "{what}: {a:?}");
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: errors carry a message: {a:?}"
    );
    assert!(a.headers.contains_key("x-node-id"), "{what}: {a:?}");
}

/// Posts raw bytes with an optional content type.
async fn post_raw(c: &Client, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Answer {
    let mut req = c.http.post(format!("{}{path}", c.base)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if path == "/api/v1/sales" {
        req = req.bearer_auth(ADMIN_TOKEN);
    }
    c.send(req).await
}

async fn post_json(c: &Client, path: &str, body: &[u8]) -> Answer {
    post_raw(c, path, Some("application/json"), body.to_vec()).await
}

async fn create(c: &Client, id: &str, total: u64) {
    let a = c
        .create_sale(id, total, json!({"per_user_limit": 10}))
        .await;
    assert_eq!(a.status, 201, "{a:?}");
}

async fn reserved(c: &Client, sale: &str, user: &str) -> String {
    let a = c.reserve(sale, user).await;
    assert_eq!(a.status, 201, "{a:?}");
    a.body["reservation_id"].as_str().unwrap().to_string()
}

/// The node is still well: `/healthz` and `/readyz` answer 200, a normal reservation works,
/// and every sale's counts add up.
async fn assert_healthy(node: &TestNode) {
    static N: AtomicU64 = AtomicU64::new(0);
    let c = &node.client;
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.get("/readyz").await.status, 200);
    let sale = format!("after-{}", N.fetch_add(1, Ordering::Relaxed));
    create(c, &sale, 10).await;
    let id = reserved(c, &sale, "a-normal-user").await;
    assert_eq!(c.pay(&id, "a-normal-user").await.status, 200);
    let list = c.get("/api/v1/sales").await;
    assert_eq!(list.status, 200, "{list:?}");
    for s in list.body["sales"].as_array().unwrap() {
        let n = |k: &str| s[k].as_u64().unwrap();
        assert_eq!(
            n("available") + n("reserved") + n("paid"),
            n("total"),
            "invariant broken: {s}"
        );
    }
}

/// One raw HTTP/1.1 exchange: writes `request` (which should ask `Connection: close`) and
/// reads until the server closes, a reset, or 10 s. Answers the status (0 when the server
/// closed without answering) and the response text.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // A server may answer (and close) before it has read everything we send.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server neither answered nor closed within 10 s");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn raw_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Bodies no endpoint accepts, whatever it expects.
fn garbage_bodies() -> Vec<(&'static str, Vec<u8>)> {
    // Nested past any parser's recursion limit, and still within the 4096-byte limit.
    let deep = format!("{}{}", "[".repeat(2_000), "]".repeat(2_000));
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(600), "}".repeat(600));
    vec![
        ("malformed JSON", b"{\"user_id\": ".to_vec()),
        ("unclosed brace", b"{".to_vec()),
        ("not JSON", b"user_id=u1".to_vec()),
        ("empty body", Vec::new()),
        ("only whitespace", b" \r\n\t ".to_vec()),
        ("null", b"null".to_vec()),
        ("empty array", b"[]".to_vec()),
        ("array of the object", b"[{\"user_id\":\"u1\"}]".to_vec()),
        ("a string", b"\"u1\"".to_vec()),
        ("a number", b"42".to_vec()),
        ("true", b"true".to_vec()),
        ("trailing garbage", b"{\"user_id\":\"u1\"} x".to_vec()),
        (
            "two objects",
            b"{\"user_id\":\"u1\"}{\"user_id\":\"u2\"}".to_vec(),
        ),
        ("invalid UTF-8", b"{\"user_id\":\"u\xff1\"}".to_vec()),
        ("lone surrogate", b"{\"user_id\":\"\\ud800\"}".to_vec()),
        ("a NUL byte", b"{\"user_id\":\"u1\"}\x00".to_vec()),
        (
            "a byte order mark",
            b"\xef\xbb\xbf{\"user_id\":\"u1\"}".to_vec(),
        ),
        ("single quotes", b"{'user_id':'u1'}".to_vec()),
        ("a comment", b"{\"user_id\":\"u1\" /* hi */}".to_vec()),
        (
            "duplicate keys",
            b"{\"user_id\":\"u1\",\"user_id\":\"u2\"}".to_vec(),
        ),
        ("2000 nested arrays", deep.into_bytes()),
        ("600 nested objects", deep_obj.into_bytes()),
    ]
}

/// `user_id` values the contract refuses (1–64 of `A-Z a-z 0-9 . _ - :`), as JSON bodies.
fn bad_user_bodies() -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = [
        json!(42),
        json!(-1),
        json!(4.2),
        json!(["u1"]),
        json!({"id": "u1"}),
        json!(null),
        json!(true),
        json!(""),
        json!("x".repeat(65)),
        json!("x".repeat(4_000)),
        json!("with space"),
        json!(" u1"),
        json!("u1 "),
        json!("u\u{0}1"),
        json!("u1\n"),
        json!("u\t1"),
        json!("u\u{7f}"),
        json!("é"),
        json!("u😀"),
        json!("u/1"),
        json!("../etc"),
        json!("u%201"),
        json!("<script>"),
        json!("u1;drop"),
    ]
    .into_iter()
    .map(|u| (format!("user_id {u}"), json!({ "user_id": u })))
    .collect();
    v.push(("no user_id".into(), json!({})));
    v.push(("USER_ID".into(), json!({"USER_ID": "u1"})));
    v.push((
        "unknown field".into(),
        json!({"user_id": "u1", "admin": true}),
    ));
    v.push((
        "unknown null field".into(),
        json!({"user_id": "u1", "x": null}),
    ));
    v
}

// ----- bodies -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bodies_on_every_body_endpoint_are_400_invalid_request() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let id = reserved(c, "s1", "u1").await;
    let paths = [
        "/api/v1/sales".to_string(),
        "/api/v1/sales/s1/reservations".to_string(),
        format!("/api/v1/reservations/{id}/pay"),
        format!("/api/v1/reservations/{id}/cancel"),
    ];
    for path in &paths {
        for (what, body) in garbage_bodies() {
            let a = post_json(c, path, &body).await;
            assert_refused(&a, 400, "invalid_request", &format!("{path}: {what}"));
        }
    }
    // Nothing changed: the reservation is still held, nothing else was taken.
    let r = c.get(&format!("/api/v1/reservations/{id}")).await;
    assert_eq!(r.body["state"], "reserved", "{r:?}");
    assert_eq!(c.counts("s1").await, (9, 1, 0, 10));
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_user_ids_and_wrong_types_are_400_invalid_request() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let id = reserved(c, "s1", "u1").await;
    let paths = [
        "/api/v1/sales/s1/reservations".to_string(),
        format!("/api/v1/reservations/{id}/pay"),
        format!("/api/v1/reservations/{id}/cancel"),
    ];
    for path in &paths {
        for (what, body) in bad_user_bodies() {
            let a = c.post(path, body).await;
            assert_refused(&a, 400, "invalid_request", &format!("{path}: {what}"));
        }
    }
    assert_eq!(c.counts("s1").await, (9, 1, 0, 10));
    // The edges of the alphabet and length are accepted.
    for user in ["x".repeat(64), "A-z_0.9:".to_string(), "1".to_string()] {
        reserved(c, "s1", &user).await;
    }
    assert_eq!(c.counts("s1").await, (6, 4, 0, 10));
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_without_a_json_content_type_are_400_invalid_request() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let id = reserved(c, "s1", "u1").await;
    let paths = [
        "/api/v1/sales".to_string(),
        "/api/v1/sales/s1/reservations".to_string(),
        format!("/api/v1/reservations/{id}/pay"),
        format!("/api/v1/reservations/{id}/cancel"),
    ];
    let body = br#"{"id":"s9","total":1,"user_id":"u1"}"#;
    for path in &paths {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/json-patch+json"),
            Some("application/jsonx"),
            Some("json"),
            Some(""),
        ] {
            let a = post_raw(c, path, ct, body.to_vec()).await;
            assert_refused(&a, 400, "invalid_request", &format!("{path}: {ct:?}"));
        }
        // A content type that is not even text.
        let mut req = c.http.post(format!("{}{path}", c.base)).body(body.to_vec());
        req = req.bearer_auth(ADMIN_TOKEN).header(
            "content-type",
            HeaderValue::from_bytes(b"application/json\xff").unwrap(),
        );
        assert_refused(&c.send(req).await, 400, "invalid_request", path);
    }
    // Parameters and case do not matter.
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON",
        " application/json ",
    ] {
        let a = post_raw(
            c,
            "/api/v1/sales/s1/reservations",
            Some(ct),
            br#"{"user_id":"u2"}"#.to_vec(),
        )
        .await;
        assert_eq!(a.status, 201, "{ct}: {a:?}");
    }
    assert_eq!(c.counts("s1").await, (6, 4, 0, 10));
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_4096_bytes_are_413_payload_too_large() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let id = reserved(c, "s1", "u1").await;
    let paths = [
        "/api/v1/sales".to_string(),
        "/api/v1/sales/s1/reservations".to_string(),
        format!("/api/v1/reservations/{id}/pay"),
        format!("/api/v1/reservations/{id}/cancel"),
    ];
    // A valid body padded with whitespace to a given size.
    let padded = |json: &str, size: usize| {
        let mut b = json.as_bytes().to_vec();
        b.resize(size, b' ');
        b
    };
    for path in &paths {
        for size in [4_097, 64 * 1024, 1024 * 1024] {
            let a = post_json(c, path, &padded(r#"{"user_id":"u2"}"#, size)).await;
            assert_refused(
                &a,
                413,
                "payload_too_large",
                &format!("{path}: {size} bytes"),
            );
        }
    }
    // Exactly 4096 bytes is within the limit.
    let a = post_json(
        c,
        "/api/v1/sales/s1/reservations",
        &padded(r#"{"user_id":"u2"}"#, 4_096),
    )
    .await;
    assert_eq!(a.status, 201, "{a:?}");
    let a = post_json(
        c,
        "/api/v1/sales",
        &padded(r#"{"id":"s2","total":5}"#, 4_096),
    )
    .await;
    assert_eq!(a.status, 201, "{a:?}");
    // A chunked body (no Content-Length) is cut off at the limit too.
    let mut req = b"POST /api/v1/sales/s1/reservations HTTP/1.1\r\nHost: x\r\n\
        Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    let chunk = vec![b' '; 16 * 1024];
    for _ in 0..64 {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (status, text) = raw(node.addr, &req).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    // A Content-Length far past anything: refused before reading.
    let req = b"POST /api/v1/sales/s1/reservations HTTP/1.1\r\nHost: x\r\n\
        Content-Type: application/json\r\nContent-Length: 99999999999999\r\nConnection: close\r\n\r\n{}";
    let (status, text) = raw(node.addr, req).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(c.counts("s1").await, (8, 2, 0, 10));
    assert_healthy(&node).await;
}

// ----- paths -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sale_ids_in_the_path_are_400_invalid_request() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let long = "x".repeat(65);
    let very_long = "x".repeat(4_000);
    let bad = [
        long.as_str(),
        very_long.as_str(),
        "s%201",
        "%20",
        "s1%00",
        "%00",
        "%ff",
        "s1%ff%fe",
        "%C3%A9",
        "s1%2Fx",
        "s1%0A",
        "%e2%80%ae",
        "%",
        "s1%zz",
        "s1%2",
    ];
    for id in bad {
        let a = c.get(&format!("/api/v1/sales/{id}")).await;
        assert_refused(&a, 400, "invalid_request", &format!("GET sale {id}"));
        let a = c.reserve(id, "u1").await;
        assert_refused(&a, 400, "invalid_request", &format!("reserve on {id}"));
    }
    // Valid but unknown: 404, also with a percent-encoded valid character.
    assert_refused(
        &c.get("/api/v1/sales/x:y").await,
        404,
        "sale_not_found",
        "unknown",
    );
    let a = c.get("/api/v1/sales/s%31").await;
    assert_eq!(a.status, 200, "percent-encoded '1' decodes to s1: {a:?}");
    assert_eq!(c.counts("s1").await, (10, 0, 0, 10));
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reservation_ids_in_the_path_are_404_or_400() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let id = reserved(c, "s1", "u1").await;
    let long = "r".repeat(ticketrush_core::ids::RESERVATION_ID_LEN_MAX + 1);
    let very_long = "r".repeat(4_000);
    let spaced = format!("{}%20", id);
    let bad = [
        long.as_str(),
        very_long.as_str(),
        "with%20spaces",
        spaced.as_str(),
        "%20",
        "r%00",
        "%ff",
        "r%2Fx",
        "%C3%A9",
        "r%zz",
    ];
    // Reservation ids are opaque: one that could not have been made does not exist (404);
    // only a path that is not percent-encoded UTF-8 is malformed (400).
    for rid in bad {
        let (status, code) = if rid == "%ff" {
            (400, "invalid_request")
        } else {
            (404, "reservation_not_found")
        };
        let a = c.get(&format!("/api/v1/reservations/{rid}")).await;
        assert_refused(&a, status, code, &format!("GET {rid}"));
        let a = c.pay(rid, "u1").await;
        assert_refused(&a, status, code, &format!("pay {rid}"));
        let a = c.cancel(rid, "u1").await;
        assert_refused(&a, status, code, &format!("cancel {rid}"));
    }
    assert_eq!(c.counts("s1").await, (9, 1, 0, 10));
    assert_eq!(c.pay(&id, "u1").await.status, 200);
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_paths_are_404_or_400_never_5xx() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let long = format!("/{}", "a".repeat(5_000));
    let long_sale = format!("/api/v1/sales/s1/{}", "b/".repeat(2_500));
    let paths = [
        "//api/v1/sales",
        "/api/v1//sales",
        "/api/v1/sales/s1/x/y/z",
        "/api/v1/sales/x/y/z",
        "/api/v1/reservations/x/pay/y",
        "/API/V1/SALES",
        "/api/v2/sales",
        "/api/v1/sales/s1/reservations/extra",
        "/%2e%2e/etc/passwd",
        "/%ff",
        "/buy/ticket/x",
        "/healthz/",
        long.as_str(),
        long_sale.as_str(),
    ];
    for p in paths {
        for a in [c.get(p).await, c.post(p, json!({"user_id": "u1"})).await] {
            assert!(
                a.status == 404 || a.status == 400 || a.status == 405,
                "{}: {a:?}",
                &p[..p.len().min(80)]
            );
            assert!(
                ["not_found", "invalid_request", "method_not_allowed"].contains(&a.error()),
                "{a:?}"
            );
        }
    }
    assert_refused(&c.get("//api/v1/sales").await, 404, "not_found", "//");
    assert_refused(
        &c.get("/api/v1/sales/x/y/z").await,
        404,
        "not_found",
        "x/y/z",
    );
    assert_refused(&c.get(&long).await, 404, "not_found", "5000 chars");
    // Paths a client library would normalise, sent as they are.
    for p in [
        "/../etc/passwd",
        "/api/v1/../../etc/passwd",
        "/api/v1/sales/../../../etc/passwd",
        "/./healthz/..",
    ] {
        let (status, text) = raw(node.addr, &raw_get(p)).await;
        assert!(status == 404 || status == 400, "{p}: {text}");
    }
    // A path of 12 KiB is looked up (404); a request head past the read buffer's bound
    // (HEADER_BYTES_MAX) is refused by the HTTP layer (431), as is one past 64 KiB.
    let (status, text) = raw(node.addr, &raw_get(&format!("/{}", "c".repeat(12 * 1024)))).await;
    assert_eq!(status, 404, "{}", &text[..text.len().min(300)]);
    let (status, text) = raw(node.addr, &raw_get(&format!("/{}", "c".repeat(20 * 1024)))).await;
    assert_eq!(status, 431, "{}", &text[..text.len().min(300)]);
    let (status, text) = raw(node.addr, &raw_get(&format!("/{}", "c".repeat(64 * 1024)))).await;
    assert!(
        (400..500).contains(&status),
        "{}",
        &text[..text.len().min(300)]
    );
    let (status, text) = raw(
        node.addr,
        &raw_get(&format!("/{}", "d".repeat(1024 * 1024))),
    )
    .await;
    assert!(
        status == 0 || (400..500).contains(&status),
        "{}",
        &text[..text.len().min(300)]
    );
    assert_eq!(c.counts("s1").await, (10, 0, 0, 10));
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_are_405_method_not_allowed() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let id = reserved(c, "s1", "u1").await;
    let base = &c.base;
    let cases: Vec<(Method, String)> = vec![
        (Method::DELETE, "/api/v1/sales".into()),
        (Method::PUT, "/api/v1/sales".into()),
        (Method::PATCH, "/api/v1/sales".into()),
        (Method::DELETE, "/api/v1/sales/s1".into()),
        (Method::PUT, "/api/v1/sales/s1".into()),
        (Method::POST, "/api/v1/sales/s1".into()),
        (Method::GET, "/api/v1/sales/s1/reservations".into()),
        (Method::DELETE, "/api/v1/sales/s1/reservations".into()),
        (Method::PUT, format!("/api/v1/reservations/{id}")),
        (Method::DELETE, format!("/api/v1/reservations/{id}")),
        (Method::POST, format!("/api/v1/reservations/{id}")),
        (Method::GET, format!("/api/v1/reservations/{id}/pay")),
        (Method::PUT, format!("/api/v1/reservations/{id}/pay")),
        (Method::GET, format!("/api/v1/reservations/{id}/cancel")),
        (Method::DELETE, format!("/api/v1/reservations/{id}/cancel")),
        (Method::POST, "/buy/ticket".into()),
        (Method::DELETE, "/healthz".into()),
        (Method::POST, "/readyz".into()),
        (Method::PUT, "/metrics".into()),
        (Method::from_bytes(b"BREW").unwrap(), "/api/v1/sales".into()),
    ];
    for (m, p) in cases {
        let a = c
            .send(
                c.http
                    .request(m.clone(), format!("{base}{p}"))
                    .header("content-type", "application/json")
                    .body(r#"{"user_id":"u1"}"#),
            )
            .await;
        assert_refused(&a, 405, "method_not_allowed", &format!("{m} {p}"));
        assert!(
            a.headers.contains_key("allow"),
            "{m} {p}: 405 names what is allowed: {a:?}"
        );
    }
    // Nothing was paid, cancelled or taken by any of those.
    let r = c.get(&format!("/api/v1/reservations/{id}")).await;
    assert_eq!(r.body["state"], "reserved");
    assert_eq!(c.counts("s1").await, (9, 1, 0, 10));
    assert_healthy(&node).await;
}

// ----- headers -----

#[tokio::test]
async fn request_heads_over_the_buffer_bound_are_431_and_the_node_lives_on() {
    let node = TestNode::start().await;
    let head = |bytes: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(bytes)
        )
        .into_bytes()
    };
    let (status, _) = raw(node.addr, &head(12 * 1024)).await;
    assert_eq!(status, 200, "a 12 KiB head is within the bound");
    let limit = ticketrush_server::limits::HEADER_BYTES_MAX;
    let (status, text) = raw(node.addr, &head(limit + 4096)).await;
    assert_eq!(status, 431, "{text}");
    assert_healthy(&node).await;
    node.stop().await;
}

/// One answer read from a keep-alive connection (one read: these answers are small).
async fn read_answer(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
}

/// On shutdown an idle keep-alive connection is not cut under a request on its way: the
/// request is answered, with `Connection: close`, and then the connection closes.
#[tokio::test]
async fn a_draining_node_answers_idle_keep_alive_connections_with_connection_close() {
    let dir = ticketrush_testkit::TempDir::new("drain");
    let (store, _) = ticketrush_orders::open_embedded(&dir.0).unwrap();
    let grace = ticketrush_server::limits::DRAIN_IDLE_GRACE;
    let mut node = TestNode::start_draining(
        ticketrush_testkit::config("drain"),
        std::sync::Arc::new(store),
        dir,
        grace,
    )
    .await;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(get).await.unwrap();
    let first = read_answer(&mut s).await;
    assert!(first.starts_with("http/1.1 200"), "{first}");
    assert!(!first.contains("connection: close"), "{first}");
    // Stop; once the listener is closed, the idle connection's next request is still answered.
    node.begin_stop();
    let addr = node.addr;
    assert!(
        ticketrush_testkit::wait_until(Duration::from_secs(5), || async move {
            TcpStream::connect(addr).await.is_err()
        })
        .await,
        "the listener closed"
    );
    s.write_all(get).await.unwrap();
    let second = read_answer(&mut s).await;
    assert!(second.starts_with("http/1.1 200"), "{second}");
    assert!(second.contains("connection: close"), "{second}");
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection closes after that answer");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_idempotency_keys_are_400_invalid_request() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let url = format!("{}/api/v1/sales/s1/reservations", c.base);
    let keys: Vec<(&str, HeaderValue)> = vec![
        (
            "129 characters",
            HeaderValue::from_str(&"k".repeat(129)).unwrap(),
        ),
        (
            "4000 characters",
            HeaderValue::from_str(&"k".repeat(4_000)).unwrap(),
        ),
        ("empty", HeaderValue::from_static("")),
        ("a tab", HeaderValue::from_static("k\tk")),
        ("byte 0xff", HeaderValue::from_bytes(b"k\xffk").unwrap()),
        ("byte 0x80", HeaderValue::from_bytes(b"\x80").unwrap()),
        (
            "UTF-8 é",
            HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        ),
    ];
    for (what, key) in keys {
        let a = c
            .send(
                c.http
                    .post(&url)
                    .header("Idempotency-Key", key)
                    .json(&json!({"user_id": "u1"})),
            )
            .await;
        assert_refused(&a, 400, "invalid_request", what);
    }
    // Control bytes the HTTP parser itself refuses: a 4xx, never a 5xx or a hang.
    for key in [&b"k\x01k"[..], b"k\x7fk", b"k\x00k", b"k\x1bk"] {
        let mut req = b"POST /api/v1/sales/s1/reservations HTTP/1.1\r\nHost: x\r\n\
            Content-Type: application/json\r\nContent-Length: 16\r\nConnection: close\r\n\
            Idempotency-Key: "
            .to_vec();
        req.extend_from_slice(key);
        req.extend_from_slice(b"\r\n\r\n{\"user_id\":\"u1\"}");
        let (status, text) = raw(node.addr, &req).await;
        assert!(
            status == 0 || (400..500).contains(&status),
            "{key:?}: {text}"
        );
    }
    assert_eq!(
        c.counts("s1").await,
        (10, 0, 0, 10),
        "no refused key took a ticket"
    );
    // The edges: 128 characters, spaces and punctuation, are accepted.
    let k128 = "k".repeat(128);
    for key in [k128.as_str(), "order 42 / retry #1", "a b", "~!@#$%^&*()"] {
        let a = c.reserve_with_key("s1", "u1", key).await;
        assert_eq!(a.status, 201, "{key}: {a:?}");
    }
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_authorization_headers_are_401() {
    let node = TestNode::start().await;
    let c = &node.client;
    let url = format!("{}/api/v1/sales", c.base);
    let auths: Vec<HeaderValue> = vec![
        HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        HeaderValue::from_str(&format!("Bearer {}", "t".repeat(8_000))).unwrap(),
        HeaderValue::from_str(&format!("Bearer  {ADMIN_TOKEN}")).unwrap(),
        HeaderValue::from_str(&format!("bearer {ADMIN_TOKEN}")).unwrap(),
        HeaderValue::from_str(&format!("Bearer {}", &ADMIN_TOKEN[1..])).unwrap(),
        HeaderValue::from_static("Bearer"),
        HeaderValue::from_static(""),
    ];
    for auth in auths {
        let a = c
            .send(
                c.http
                    .post(&url)
                    .header("Authorization", auth.clone())
                    .json(&json!({"id": "s1", "total": 1})),
            )
            .await;
        assert_refused(&a, 401, "unauthorized", &format!("{auth:?}"));
    }
    assert_refused(
        &c.get("/api/v1/sales/s1").await,
        404,
        "sale_not_found",
        "not created",
    );
    assert_healthy(&node).await;
}

// ----- sale definitions -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sale_definitions_are_400_invalid_request() {
    let node = TestNode::start().await;
    let c = &node.client;
    let field = |k: &str, v: Value| {
        let mut b = json!({"id": "s1", "total": 10});
        b[k] = v;
        (format!("{k} = {}", b[k]), b)
    };
    let mut cases = vec![
        field("total", json!("10")),
        field("total", json!(-1)),
        field("total", json!(1.5)),
        field("total", json!(1e20)),
        field("total", json!(null)),
        field("total", json!(true)),
        field("total", json!([10])),
        field("total", json!({"n": 10})),
        field("total", json!(u64::MAX)),
        field("per_user_limit", json!(0)),
        field("per_user_limit", json!(-1)),
        field("per_user_limit", json!(1_001)),
        field("per_user_limit", json!(4_294_967_296u64)),
        field("per_user_limit", json!("2")),
        field("per_user_limit", json!(1.5)),
        field("hold_seconds", json!("900")),
        field("hold_seconds", json!(-1)),
        field("hold_seconds", json!(0.5)),
        field("hold_seconds", json!(86_401)),
        field("hold_seconds", json!(4_294_967_296u64)),
        field("opens_at", json!("tomorrow")),
        field("opens_at", json!("")),
        field("opens_at", json!(1_700_000_000)),
        field("opens_at", json!("2027-01-01 08:00:00")),
        field("opens_at", json!("2027-02-30T00:00:00Z")),
        field("opens_at", json!("2027-01-01T25:00:00Z")),
        // Outside what an answer can write back (four-digit years in UTC).
        field("opens_at", json!("0000-01-01T00:00:00+01:00")),
        field("opens_at", json!("9999-12-31T23:59:00-01:00")),
        field("opens_at", json!("+10000-01-01T00:00:00Z")),
        field("opens_at", json!("2027-01-01T08:00:00Z\u{0}")),
        field("opens_at", json!(["2027-01-01T08:00:00Z"])),
        field("name", json!("G1\u{0}")),
        field("name", json!("line\nbreak")),
        field("name", json!("tab\there")),
        field("name", json!("del\u{7f}")),
        field("name", json!("c1\u{9b}control")),
        field("name", json!("n".repeat(257))),
        field("name", json!(42)),
        field("name", json!(["G1"])),
        field("id", json!(42)),
        field("id", json!(null)),
        field("id", json!("é")),
        field("id", json!("s1\u{0}")),
        field("id", json!("x".repeat(65))),
        field("price", json!(10)),
    ];
    cases.push(("empty object".into(), json!({})));
    cases.push(("array".into(), json!([{"id": "s1", "total": 10}])));
    for (what, body) in cases {
        let a = c.admin_post_sale(&body).await;
        assert_refused(&a, 400, "invalid_request", &what);
    }
    assert_refused(
        &c.get("/api/v1/sales/s1").await,
        404,
        "sale_not_found",
        "s1",
    );
    assert_eq!(c.get("/api/v1/sales").await.body, json!({"sales": []}));
    // Names may be any printable text, up to 256 characters.
    let name = "北京→上海 😀 «2nd»".to_string();
    let a = c
        .create_sale("unicode", 5, json!({"name": name, "opens_at": null}))
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["name"], name.as_str());
    let a = c
        .create_sale("long-name", 5, json!({"name": "n".repeat(256)}))
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(
        c.get("/api/v1/sales/unicode").await.body["name"],
        name.as_str()
    );
    assert_healthy(&node).await;
}

// ----- the prototype's endpoint -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_buy_ticket_queries_are_400_invalid_request() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let long = format!("?user_id={}&sale_id=s1", "u".repeat(65));
    for q in [
        "?user_id=%ff&sale_id=s1",
        "?user_id=a%20b&sale_id=s1",
        "?user_id=a+b&sale_id=s1",
        "?user_id=&sale_id=s1",
        "?user_id=u1&sale_id=",
        "?user_id=u1&sale_id=%00",
        "?user_id=u1&sale_id=s1%2F..",
        "?user_id=%C3%A9&sale_id=s1",
        "?user_id=u1&user_id=u2&sale_id=s1",
        long.as_str(),
    ] {
        let a = c.get(&format!("/buy/ticket{q}")).await;
        assert_refused(&a, 400, "invalid_request", q);
    }
    // Unknown parameters and odd-but-valid queries are not errors.
    for q in ["?foo=bar&sale_id=s1", "?sale_id=s1&&&", "?sale_id=s1&x=%ff"] {
        let a = c.get(&format!("/buy/ticket{q}")).await;
        assert_eq!((a.status, &a.body["code"]), (200, &json!(1)), "{q}: {a:?}");
    }
    // Only the valid ones (which name no user: each a new anonymous buyer) took tickets.
    let (available, reserved, paid, total) = c.counts("s1").await;
    assert_eq!((available + reserved, paid, total), (10, 0, 10));
    assert_eq!(reserved, 3, "three valid queries, three tickets");
    assert_healthy(&node).await;
}

// ----- the wire -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_garbage_never_gets_a_5xx_and_the_node_lives_on() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let requests: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /healthz HTTP/1.1\r\nNo colon here\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /api/v1/sales/s 1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        "GET /api/v1/sales/é HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            .as_bytes()
            .to_vec(),
        b"POST /api/v1/sales/s1/reservations HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 5\r\nContent-Length: 16\r\n\
          Connection: close\r\n\r\n{\"user_id\":\"u1\"}"
            .to_vec(),
        b"POST /api/v1/sales/s1/reservations HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: -1\r\nConnection: close\r\n\r\n"
            .to_vec(),
        b"POST /api/v1/sales/s1/reservations HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          zz\r\n{}\r\n0\r\n\r\n"
            .to_vec(),
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "h".repeat(1024 * 1024)
        )
        .into_bytes(),
        {
            let mut r = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
            for i in 0..500 {
                r.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
            }
            r.extend_from_slice(b"Connection: close\r\n\r\n");
            r
        },
    ];
    for req in &requests {
        let (status, text) = raw(node.addr, req).await;
        let shown = String::from_utf8_lossy(&req[..req.len().min(80)]).into_owned();
        assert!(
            status == 0 || (400..500).contains(&status),
            "{shown:?}: {}",
            &text[..text.len().min(300)]
        );
    }
    // A request cut off mid-headers or mid-body, then closed: nothing taken.
    for partial in [
        &b"POST /api/v1/sales/s1/reservations HTTP/1.1\r\nHost: x\r\nContent-Le"[..],
        b"POST /api/v1/sales/s1/reservations HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"user_id\"",
    ] {
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        s.write_all(partial).await.unwrap();
        drop(s);
    }
    // A valid request after garbage on a fresh connection is served.
    let (status, text) = raw(
        node.addr,
        b"POST /api/v1/sales/s1/reservations HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 16\r\nConnection: close\r\n\r\n\
          {\"user_id\":\"u1\"}",
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-node-id: test-node"),
        "{text}"
    );
    assert_eq!(c.counts("s1").await, (9, 1, 0, 10));
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_barrage_of_garbage_leaves_the_node_healthy() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 1_000).await;
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let bodies = garbage_bodies();
            let (what, body) = &bodies[i % bodies.len()];
            let path = match i % 3 {
                0 => "/api/v1/sales/s1/reservations",
                1 => "/api/v1/reservations/0123456789abcdefghjkmnpqrs/pay",
                _ => "/api/v1/sales",
            };
            let a = post_json(&c, path, body).await;
            assert_refused(&a, 400, "invalid_request", what);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(c.counts("s1").await, (1_000, 0, 0, 1_000));
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_to_large_bodies_reach_the_client() {
    // Regression: a node that answered (413, 401, 400, 404, 405) before reading a large body
    // closed the socket with the body unread; the kernel then reset the connection and the
    // client, still sending, saw "broken pipe" or "incomplete message" instead of the answer.
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "s1", 10).await;
    let big: &'static [u8] = Box::leak(vec![b' '; 1024 * 1024].into_boxed_slice());
    let cases: [(u16, Method, &str, Option<&str>); 7] = [
        (413, Method::POST, "/api/v1/sales/s1/reservations", None),
        (
            413,
            Method::POST,
            "/api/v1/reservations/0123456789abcdefghjkmnpqrs/pay",
            None,
        ),
        (401, Method::POST, "/api/v1/sales", None),
        (400, Method::POST, "/api/v1/sales/%ff/reservations", None),
        (
            400,
            Method::POST,
            "/api/v1/sales/s1/reservations",
            Some("k\tk"),
        ),
        (404, Method::POST, "/no/such/path", None),
        (405, Method::DELETE, "/api/v1/sales", None),
    ];
    for (want, method, path, key) in cases {
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (c, method) = (c.clone(), method.clone());
            tasks.push(tokio::spawn(async move {
                let mut req = c
                    .http
                    .request(method, format!("{}{path}", c.base))
                    .header("content-type", "application/json")
                    .body(big);
                if let Some(key) = key {
                    req = req.header("Idempotency-Key", key);
                }
                req.send().await.map(|r| r.status().as_u16())
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                Ok(status) => assert_eq!(status, want, "{path}"),
                Err(e) => panic!("{path}: the answer ({want}) was lost: {e:?}"),
            }
        }
    }
    // A body far larger than the node reads through is refused, and the connection closed.
    let (status, text) = raw(
        node.addr,
        b"POST /api/v1/sales/s1/reservations HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 99999999999999\r\n\r\n{}",
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    // A client waiting for 100 Continue gets the refusal without sending its body.
    let (status, text) = raw(
        node.addr,
        b"POST /api/v1/sales/s1/reservations HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 1048576\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert_eq!(c.counts("s1").await, (10, 0, 0, 10));
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_is_408_within_the_body_timeout() {
    let node = TestNode::start().await;
    create(&node.client, "slow", 5).await;
    // Headers promise 20 bytes; none follow. The node must answer, not wait forever.
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(
        b"POST /api/v1/sales/slow/reservations HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 20\r\n\r\n",
    )
    .await
    .unwrap();
    let limit = ticketrush_server::limits::BODY_READ_TIMEOUT + Duration::from_secs(5);
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(limit, s.read(&mut buf))
        .await
        .expect("the node answered within the body timeout")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("invalid_request"), "{head}");
    assert_healthy(&node).await;
    node.stop().await;
}
