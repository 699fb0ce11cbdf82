//! The embedded store's orders table (SQLite in the data dir): rows follow every state, and
//! after a SIGKILL the real `audit --data-dir` finds exactly one row per reservation.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use ticketrush_core::{audit_sale, ReservationState, SaleId};
use ticketrush_store::Store;

use crate::crash::spawn_node;
use ticketrush_testkit::{config, wait_until, TempDir, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_rows_follow_every_state() {
    let dir = TempDir::new("embedded-orders");
    let (store, _) = ticketrush_orders::open_embedded(&dir.0).unwrap();
    let store = Arc::new(store);
    let node = TestNode::start_on(config("n1"), store.clone(), TempDir::new("unused")).await;
    let c = &node.client;
    assert_eq!(
        c.create_sale("emb", 10, json!({"hold_seconds": 1}))
            .await
            .status,
        201
    );
    let mut ids = Vec::new();
    for u in ["pay", "cancel", "expire"] {
        let a = c.reserve("emb", u).await;
        assert_eq!(a.status, 201);
        ids.push(a.body["reservation_id"].as_str().unwrap().to_string());
    }
    assert_eq!(c.pay(&ids[0], "pay").await.status, 200);
    assert_eq!(c.cancel(&ids[1], "cancel").await.status, 200);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            c.get(&format!("/api/v1/reservations/{}", ids[2]))
                .await
                .body["state"]
                == "expired"
        })
        .await
    );
    let sale = SaleId::parse("emb").unwrap();
    let snap = store.snapshot(&sale).await.unwrap().unwrap();
    let rows = tokio::task::block_in_place(|| store.order_rows(&sale, Duration::from_secs(10)))
        .unwrap()
        .expect("the orders table caught up");
    let report = audit_sale(&snap.view, &snap.reservations, Some(&rows));
    assert!(report.passed(), "{:?}", report.violations);
    let mut states: Vec<(String, ReservationState)> = rows
        .iter()
        .map(|r| (r.user_id.to_string(), r.state))
        .collect();
    states.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        states,
        vec![
            ("cancel".to_string(), ReservationState::Cancelled),
            ("expire".to_string(), ReservationState::Expired),
            ("pay".to_string(), ReservationState::Paid),
        ]
    );
    for r in &rows {
        assert_eq!(
            r.paid_at.is_some(),
            r.state == ReservationState::Paid,
            "{r:?}"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_of_a_data_dir_after_sigkill_finds_one_row_per_reservation() {
    let dir = TempDir::new("embedded-audit");
    let (mut child, c) = spawn_node(&dir.0).await;
    assert_eq!(c.create_sale("kill9", 300, json!({})).await.status, 201);
    let mut won = 0;
    for i in 0..120 {
        if c.reserve("kill9", &format!("u{i}")).await.status == 201 {
            won += 1;
        }
    }
    assert_eq!(won, 120);
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args(["audit", "--sale", "kill9", "--wait-seconds", "10"])
        .arg("--data-dir")
        .arg(&dir.0)
        .env("TICKETRUSH_LOG", "warn")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("reserved 120") && text.contains("order rows 120"),
        "{text}"
    );
    assert!(text.contains("PASSED"), "{text}");
}
