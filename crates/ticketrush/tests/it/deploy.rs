//! What an operator relies on when deploying, over the real binary: the drain on SIGTERM
//! (`/readyz` 503 while requests are still answered, nothing acknowledged lost), JSON logs
//! that parse line by line and name the request id of every error, request ids passed through
//! the gateway, and the admin token kept off the command line and out of the logs.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use ticketrush_testkit::redis_server::RedisServer;
use ticketrush_testkit::{wait_until, Client, TempDir, ADMIN_TOKEN};

fn sigterm(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -TERM {pid}");
}

/// `serve ARGS` at log level info with its stderr piped for the test to read.
async fn serve_logging(args: &[&str]) -> (Child, Client) {
    crate::crash::spawn_serve_logging(args, "info", Stdio::piped()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_readyz_first_then_stops_and_loses_nothing() {
    let dir = TempDir::new("drain");
    let data = dir.0.to_str().unwrap().to_string();
    let (mut child, c) =
        crate::crash::spawn_serve(&["--data-dir", &data, "--drain-seconds", "3"]).await;
    assert_eq!(c.create_sale("d", 1_000_000, json!({})).await.status, 201);
    assert_eq!(c.get("/readyz").await.status, 200);

    // Buyers until the node is gone; each remembers what was acknowledged and when.
    let stop = Arc::new(AtomicBool::new(false));
    let mut buyers = Vec::new();
    for w in 0..4 {
        let (c, stop) = (c.clone(), stop.clone());
        buyers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failures = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let req = c
                    .http
                    .post(format!("{}/api/v1/sales/d/reservations", c.base))
                    .json(&json!({"user_id": format!("w{w}-{i}")}));
                match req.send().await {
                    Ok(r) if r.status() == 201 => {
                        let body: Value = r.json().await.unwrap();
                        acked.push((
                            Instant::now(),
                            body["reservation_id"].as_str().unwrap().to_string(),
                        ));
                    }
                    Ok(r) => panic!("answered {}", r.status()),
                    Err(e) => {
                        failures.push((Instant::now(), e.is_connect()));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                i += 1;
            }
            (acked, failures)
        }));
    }
    assert!(
        wait_until(Duration::from_secs(10), || async {
            c.counts("d").await.1 >= 200
        })
        .await
    );
    sigterm(&child);
    let signalled = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || async {
            c.get("/readyz").await.status == 503
        })
        .await,
        "/readyz did not turn 503 after SIGTERM"
    );
    let not_ready = Instant::now();
    let a = c.get("/readyz").await;
    assert!(
        a.body["message"].as_str().unwrap().contains("draining"),
        "{a:?}"
    );
    let exited = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the node stopped within 20 s of SIGTERM")
        .unwrap();
    assert!(exited.success(), "{exited}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "the node stopped before its drain time"
    );
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut failures) = (Vec::new(), Vec::new());
    for b in buyers {
        let (a, f) = b.await.unwrap();
        acked.extend(a);
        failures.extend(f);
    }
    // While not ready, the node still sold, and no request failed.
    let window = not_ready..not_ready + Duration::from_secs(2);
    let sold_while_draining = acked.iter().filter(|(t, _)| window.contains(t)).count();
    assert!(sold_while_draining > 0, "nothing sold while draining");
    let failed_while_draining: Vec<_> = failures
        .iter()
        .filter(|(t, _)| window.contains(t))
        .collect();
    assert!(
        failed_while_draining.is_empty(),
        "{failed_while_draining:?}"
    );

    // Every acknowledged reservation is there after a restart.
    let (_again, c2) = crate::crash::spawn_serve(&["--data-dir", &data]).await;
    for (_, id) in &acked {
        assert_eq!(
            c2.get(&format!("/api/v1/reservations/{id}")).await.status,
            200,
            "acknowledged {id} lost"
        );
    }
}

/// `serve --log-format json` over Redis: every line it writes while selling, and while Redis is
/// down and requests fail, is one JSON object; a failed request's line names the request id
/// the client sent, and the answer carries it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line_and_name_the_failed_request() {
    let mut redis = RedisServer::start();
    let (mut child, c) = serve_logging(&[
        "--admin-token",
        ADMIN_TOKEN,
        "--redis",
        &redis.url(),
        "--log-format",
        "json",
    ])
    .await;
    let stderr = child.stderr.take().unwrap();
    let collected = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push(l);
        }
        all
    });
    assert_eq!(c.create_sale("j", 1_000, json!({})).await.status, 201);
    for i in 0..50 {
        assert_eq!(c.reserve("j", &format!("u{i}")).await.status, 201);
    }
    redis.kill();
    let r = c
        .http
        .post(format!("{}/api/v1/sales/j/reservations", c.base))
        .header("x-request-id", "trace-me-42")
        .json(&json!({"user_id": "late"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    sigterm(&child);
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("stopped");
    let lines = collected.await.unwrap();
    assert!(lines.len() >= 3, "{lines:?}");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        for field in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(field).is_some(), "no {field} in {l}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("trace-me-42") && l.contains("server error")),
        "no error line names the request id: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_passes_request_ids_on_and_makes_one_when_missing() {
    let node = ticketrush_testkit::TestNode::start().await;
    let gw = ticketrush_testkit::gateway::start_gateway(
        vec![ticketrush_gateway::NodeSpec {
            addr: node.addr,
            weight: 1,
        }],
        Duration::from_secs(10),
    )
    .await;
    let r = gw
        .client
        .http
        .get(format!("{}/healthz", gw.client.base))
        .header("x-request-id", "from-the-client")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "from-the-client");
    assert_eq!(
        r.headers()["x-node-id"],
        "test-node",
        "answered by the node"
    );
    let r = gw
        .client
        .http
        .get(format!("{}/healthz", gw.client.base))
        .send()
        .await
        .unwrap();
    let made = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(made.starts_with("gw-"), "{made}");
    // The gateway's own readiness, and its drain.
    assert_eq!(gw.client.get("/readyz").await.status, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_stays_off_the_command_line_and_out_of_the_logs() {
    // A generated token goes to DATA_DIR/admin-token, mode 0600; the log names the file only.
    let dir = TempDir::new("token");
    let data = dir.0.to_str().unwrap();
    let (child, c) = serve_logging(&["--data-dir", data]).await;
    let file = dir.0.join("admin-token");
    let token = std::fs::read_to_string(&file).expect("the token file");
    let token = token.trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let r = c
        .http
        .post(format!("{}/api/v1/sales", c.base))
        .bearer_auth(&token)
        .json(&json!({"id": "t", "total": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    sigterm(&child);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!logs.contains(&token), "the token is in the log: {logs}");
    assert!(
        logs.contains("admin-token"),
        "the log does not name the file: {logs}"
    );

    // --admin-token-file: the file's first line is the token.
    let file = dir.0.join("given");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let data2 = TempDir::new("token2");
    let (_child, c) = crate::crash::spawn_serve_without_token(&[
        "--data-dir",
        data2.0.to_str().unwrap(),
        "--admin-token-file",
        file.to_str().unwrap(),
    ])
    .await;
    let r = c
        .http
        .post(format!("{}/api/v1/sales", c.base))
        .bearer_auth("from-a-file")
        .json(&json!({"id": "t2", "total": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// The systemd unit in docs/DEPLOYMENT.md is one `systemd-analyze verify` accepts (with
/// `ExecStart` pointed at the binary under test). Skipped, saying so, where systemd is absent.
#[test]
fn the_systemd_unit_in_the_docs_verifies() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: the unit is not checked");
        return;
    };
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/DEPLOYMENT.md"),
    )
    .unwrap();
    let start = doc.find("```ini\n").expect("an ini block in DEPLOYMENT.md") + 7;
    let unit = &doc[start..start + doc[start..].find("```").unwrap()];
    assert!(unit.contains("LimitNOFILE=65536") && unit.contains("--drain-seconds"));
    let dir = TempDir::new("systemd");
    let path = dir.0.join("ticketrush.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/ticketrush",
            env!("CARGO_BIN_EXE_ticketrush"),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
