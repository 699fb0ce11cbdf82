//! Crashes: the real binary killed with SIGKILL and restarted on the same data dir.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use ticketrush_testkit::{wait_until, Client, TempDir, ADMIN_TOKEN};

/// The real `ticketrush serve` on a free port with its own data dir.
pub(crate) async fn spawn_node(dir: &Path) -> (Child, Client) {
    let dir = dir.to_str().expect("a UTF-8 temp path");
    spawn_serve(&["--data-dir", dir]).await
}

/// The real `ticketrush serve` on a free port with `extra` flags; answers the child and a
/// client for it once it printed its address.
pub(crate) async fn spawn_serve(extra: &[&str]) -> (Child, Client) {
    spawn_serve_without_token(&[&["--admin-token", ADMIN_TOKEN], extra].concat()).await
}

/// `spawn_serve` without the test's admin token (the caller gives one its own way).
pub(crate) async fn spawn_serve_without_token(extra: &[&str]) -> (Child, Client) {
    spawn_serve_logging(extra, "warn", Stdio::inherit()).await
}

/// `serve EXTRA` at log level `log`, its stderr going to `stderr` (piped: the test reads the
/// logs), no admin token from the environment.
pub(crate) async fn spawn_serve_logging(
    extra: &[&str],
    log: &str,
    stderr: Stdio,
) -> (Child, Client) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("TICKETRUSH_LOG", log)
        .env_remove("TICKETRUSH_ADMIN_TOKEN")
        // Stop at once on SIGTERM unless a test asks for a drain (`--drain-seconds`).
        .env("TICKETRUSH_DRAIN_SECONDS", "0")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ticketrush");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("node printed its address in time")
        .unwrap()
        .expect("a line on stdout");
    // "ticketrush listening on http://127.0.0.1:PORT as NODE"
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    (child, Client::new(addr.parse().unwrap()))
}

async fn sigkill(child: &mut Child) {
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_reservations_survive_sigkill_mid_burst() {
    let dir = TempDir::new("crash");
    let (mut child, c) = spawn_node(&dir.0).await;
    assert_eq!(c.create_sale("crash", 5_000, json!({})).await.status, 201);

    // 64 clients reserve for distinct users in a loop and record every 201 they get.
    let acked: Arc<Mutex<Vec<Value>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for w in 0..64 {
        let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        clients.spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 200 {
                let user = format!("w{w}-{i}");
                i += 1;
                let sent = c
                    .http
                    .post(format!("{}/api/v1/sales/crash/reservations", c.base))
                    .json(&json!({"user_id": user}))
                    .send()
                    .await;
                let Ok(resp) = sent else { break };
                if resp.status().as_u16() != 201 {
                    continue;
                }
                if let Ok(body) = resp.json::<Value>().await {
                    acked.lock().unwrap().push(body);
                }
            }
        });
    }
    // Kill it in the middle of the burst: once some answers are out, with requests in flight.
    let mid = wait_until(Duration::from_secs(30), || {
        let n = acked.lock().unwrap().len();
        async move { n >= 500 }
    })
    .await;
    assert!(mid, "the burst got going");
    sigkill(&mut child).await;
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 500);

    let (mut child, c) = spawn_node(&dir.0).await;
    for r in &acked {
        let id = r["reservation_id"].as_str().unwrap();
        let got = c.get(&format!("/api/v1/reservations/{id}")).await;
        assert_eq!(got.status, 200, "acknowledged reservation {id} lost");
        assert_eq!(got.body["state"], "reserved");
        assert_eq!(got.body["user_id"], r["user_id"]);
    }
    let (available, reserved, paid, total) = c.counts("crash").await;
    assert_eq!(
        available + reserved + paid,
        total,
        "counts add up after recovery"
    );
    assert!(
        reserved >= acked.len() as u64,
        "no acknowledged hold is missing"
    );
    // Nothing was held outside the journal: every unsold ticket is still on sale.
    assert_eq!(available, total - reserved);
    assert_eq!(c.reserve("crash", "after-restart").await.status, 201);
    sigkill(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_expiry() {
    let dir = TempDir::new("expiry");
    let (mut child, c) = spawn_node(&dir.0).await;
    assert_eq!(
        c.create_sale("short", 1, json!({"hold_seconds": 1}))
            .await
            .status,
        201
    );
    let r = c.reserve("short", "u1").await;
    assert_eq!(r.status, 201);
    let id = r.body["reservation_id"].as_str().unwrap().to_string();
    sigkill(&mut child).await;

    let (mut child, c) = spawn_node(&dir.0).await;
    let expired = wait_until(Duration::from_secs(4), || {
        let (c, id) = (c.clone(), id.clone());
        async move { c.get(&format!("/api/v1/reservations/{id}")).await.body["state"] == "expired" }
    })
    .await;
    assert!(expired, "the hold expired after the restart");
    assert_eq!(c.counts("short").await, (1, 0, 0, 1));
    assert_eq!(
        c.reserve("short", "u2").await.status,
        201,
        "and its ticket is sold again"
    );
    sigkill(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_sigkill() {
    let dir = TempDir::new("paid");
    let (mut child, c) = spawn_node(&dir.0).await;
    assert_eq!(c.create_sale("p", 3, json!({})).await.status, 201);
    let r = c.reserve("p", "payer").await;
    let id = r.body["reservation_id"].as_str().unwrap().to_string();
    assert_eq!(c.pay(&id, "payer").await.status, 200);
    sigkill(&mut child).await;

    let (mut child, c) = spawn_node(&dir.0).await;
    let got = c.get(&format!("/api/v1/reservations/{id}")).await;
    assert_eq!(got.body["state"], "paid");
    assert!(got.body["paid_at"].is_string());
    assert_eq!(c.counts("p").await, (2, 0, 1, 3));
    sigkill(&mut child).await;
}
