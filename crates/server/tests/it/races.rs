//! Races: many clients at once against one node. Each test fires its requests concurrently
//! and then checks the answers against the store's counts: exactly `total` winners, nobody
//! above the limit, one ticket per idempotency key.

use std::collections::HashSet;

use serde_json::json;
use tokio::task::JoinSet;

use ticketrush_testkit::{Answer, Client, TestNode};

/// Fires `n` reservations at once; `user(i)` and `key(i)` name each one's user and key.
async fn burst(
    client: &Client,
    sale: &str,
    n: usize,
    user: impl Fn(usize) -> String,
    key: impl Fn(usize) -> Option<String>,
) -> Vec<Answer> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let (c, sale, user, key) = (client.clone(), sale.to_string(), user(i), key(i));
        set.spawn(async move {
            match key {
                Some(k) => c.reserve_with_key(&sale, &user, &k).await,
                None => c.reserve(&sale, &user).await,
            }
        });
    }
    let mut answers = Vec::with_capacity(n);
    while let Some(a) = set.join_next().await {
        answers.push(a.expect("request task"));
    }
    answers
}

fn count(answers: &[Answer], status: u16, error: &str) -> usize {
    answers
        .iter()
        .filter(|a| a.status == status && a.error() == error)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_more_users_than_tickets_gives_exactly_total_winners() {
    let node = TestNode::start().await;
    let c = &node.client;
    assert_eq!(c.create_sale("race", 150, json!({})).await.status, 201);
    let answers = burst(c, "race", 2_000, |i| format!("u{i}"), |_| None).await;
    let winners: Vec<&Answer> = answers.iter().filter(|a| a.status == 201).collect();
    assert_eq!(winners.len(), 150, "exactly total winners");
    assert_eq!(
        count(&answers, 409, "sold_out"),
        2_000 - 150,
        "every other answer is sold_out"
    );
    let ids: HashSet<&str> = winners
        .iter()
        .map(|a| a.body["reservation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 150, "every winner has its own reservation");
    let users: HashSet<&str> = winners
        .iter()
        .map(|a| a.body["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 150, "no user won twice");
    assert_eq!(c.counts("race").await, (0, 150, 0, 150));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_racing_itself_gets_at_most_its_limit() {
    let node = TestNode::start().await;
    let c = &node.client;
    let limit = 3;
    let created = c
        .create_sale("self", 100, json!({"per_user_limit": limit}))
        .await;
    assert_eq!(created.status, 201);
    let answers = burst(c, "self", 400, |_| "greedy".into(), |_| None).await;
    assert_eq!(count(&answers, 201, ""), limit);
    // Everyone else is told limit_reached; on a machine loaded enough that the sale's queue to
    // the store fills, the node may shed a request with 429 instead (an honest "retry"), but
    // never anything else.
    let shed = count(&answers, 429, "overloaded");
    assert!(shed <= 10, "{shed} requests shed");
    assert_eq!(count(&answers, 409, "limit_reached"), 400 - limit - shed);
    assert_eq!(
        c.counts("self").await,
        (100 - limit as u64, limit as u64, 0, 100)
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_one_idempotency_key_take_one_ticket() {
    let node = TestNode::start().await;
    let c = &node.client;
    assert_eq!(
        c.create_sale("idem", 10, json!({"per_user_limit": 5}))
            .await
            .status,
        201
    );
    let answers = burst(c, "idem", 300, |_| "u1".into(), |_| Some("k-1".into())).await;
    assert_eq!(count(&answers, 201, ""), 1, "one creation");
    let others: Vec<(u16, &str)> = answers
        .iter()
        .filter(|a| a.status != 200 && a.status != 201)
        .map(|a| (a.status, a.error()))
        .collect();
    assert_eq!(
        count(&answers, 200, ""),
        299,
        "every retry replays it; others: {others:?}"
    );
    let ids: HashSet<&str> = answers
        .iter()
        .map(|a| a.body["reservation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "all answers name the same reservation");
    assert_eq!(c.counts("idem").await, (9, 1, 0, 10));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_expired_tickets_are_sold_again_under_demand() {
    let node = TestNode::start().await;
    let c = &node.client;
    assert_eq!(
        c.create_sale("resale", 40, json!({"hold_seconds": 1}))
            .await
            .status,
        201
    );
    // Round one: 40 winners out of 100.
    let first = burst(c, "resale", 100, |i| format!("a{i}"), |_| None).await;
    let winners: Vec<&Answer> = first.iter().filter(|a| a.status == 201).collect();
    assert_eq!(winners.len(), 40);
    // Ten pay, ten cancel, twenty let their hold lapse.
    for (i, w) in winners.iter().enumerate().take(20) {
        let id = w.body["reservation_id"].as_str().unwrap();
        let user = w.body["user_id"].as_str().unwrap();
        let a = if i < 10 {
            c.pay(id, user).await
        } else {
            c.cancel(id, user).await
        };
        assert_eq!(a.status, 200, "{a:?}");
    }
    // Demand continues (a burst of new users every round) until the twenty lapsed holds have
    // expired and every ticket is held again: 10 paid, 30 reserved by others, none available.
    let lapsing: Vec<String> = winners[20..]
        .iter()
        .map(|w| w.body["reservation_id"].as_str().unwrap().to_string())
        .collect();
    let mut round = 0;
    let resold = ticketrush_testkit::wait_until(std::time::Duration::from_secs(8), || {
        round += 1;
        let (c, lapsing, r) = (c.clone(), lapsing.clone(), round);
        async move {
            let _ = burst(&c, "resale", 50, |i| format!("r{r}-{i}"), |_| None).await;
            let (available, reserved, paid, total) = c.counts("resale").await;
            assert_eq!(available + reserved + paid, total);
            let mut all_expired = true;
            for id in &lapsing {
                let got = c.get(&format!("/api/v1/reservations/{id}")).await;
                all_expired &= got.body["state"] == "expired";
            }
            all_expired && available == 0 && paid == 10 && reserved == 30
        }
    })
    .await;
    assert!(
        resold,
        "every ticket ends up reserved or paid: {:?}",
        c.counts("resale").await
    );
    node.stop().await;
}
