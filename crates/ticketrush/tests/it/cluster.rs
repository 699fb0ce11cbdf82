//! Cluster mode: nodes selling one sale through a real `redis-server` started by each test.
//!
//! The store-level tests call the Lua scripts through `RedisStore` directly (edge cases of the
//! stock model); the node-level tests race several nodes, in-process or as real processes
//! killed with SIGKILL or paused with SIGSTOP, and then check the counts Redis holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ticketrush_core::{
    LedgerError, NodeId, ReservationId, ReservationState, ReserveItem, ReserveOutcome, SaleId,
    SaleSpec, UserId,
};
use ticketrush_store::{RedisConfig, RedisStore, Store, StoreError};
use tokio::process::Child;
use tokio::task::JoinSet;

use crate::crash::spawn_serve;
use crate::redis_server::RedisServer;
use crate::support::{config, wait_until, Client, TempDir, TestNode};

async fn store(redis: &RedisServer) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::connect(RedisConfig::new(redis.url()))
            .await
            .expect("connect to the test's redis"),
    )
}

fn sale(id: &str, total: u64, limit: u32, hold_seconds: u32) -> SaleSpec {
    SaleSpec::new(
        SaleId::parse(id).unwrap(),
        None,
        total,
        Some(limit),
        Some(hold_seconds),
        ticketrush_core::UnixMs(0),
    )
    .unwrap()
}

fn item(sale: &str, n: usize, user: &str, key: Option<&str>) -> ReserveItem {
    ReserveItem {
        id: ReservationId::parse(&format!("r{n:025}.{sale}")).unwrap(),
        user_id: UserId::parse(user).unwrap(),
        idempotency_key: key.map(|k| ticketrush_core::IdempotencyKey::parse(k).unwrap()),
    }
}

fn sid(s: &str) -> SaleId {
    SaleId::parse(s).unwrap()
}

fn counts(v: &ticketrush_core::SaleView) -> (u64, u64, u64) {
    (v.available, v.reserved, v.paid)
}

// ----- the scripts, directly -----

#[tokio::test]
async fn scripts_sell_the_last_ticket_once_and_then_nothing() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let node = NodeId::parse("n1").unwrap();
    s.create_sale(sale("last", 2, 5, 60)).await.unwrap();
    assert!(matches!(
        s.create_sale(sale("last", 2, 5, 60)).await,
        Err(StoreError::Ledger(LedgerError::SaleExists))
    ));

    // Wanting more than the pool grants what there is; the pool is then empty.
    let g = s.lease(&sid("last"), &node, 0, 10, 10_000).await.unwrap();
    assert_eq!((g.granted, g.lease > 0), (2, true));
    let none = s.lease(&sid("other-node"), &node, 0, 1, 10_000).await;
    assert!(matches!(
        none,
        Err(StoreError::Ledger(LedgerError::SaleNotFound))
    ));
    let again = s
        .lease(&sid("last"), &NodeId::parse("n2").unwrap(), 0, 5, 10_000)
        .await
        .unwrap();
    assert_eq!(
        (again.granted, again.lease),
        (0, 0),
        "zero stock grants nothing"
    );

    // Three items on a lease of two: the third finds no stock.
    let items = vec![
        item("last", 1, "a", None),
        item("last", 2, "b", None),
        item("last", 3, "c", None),
    ];
    let out = s.reserve_batch(&sid("last"), g.lease, items).await.unwrap();
    assert!(matches!(out[0], ReserveOutcome::Reserved(_)));
    assert!(matches!(out[1], ReserveOutcome::Reserved(_)));
    assert_eq!(out[2], ReserveOutcome::NoStock);
    let v = s.sale(&sid("last")).await.unwrap().unwrap();
    assert_eq!(counts(&v), (0, 2, 0));
}

#[tokio::test]
async fn scripts_enforce_limits_and_replay_idempotency_keys() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let node = NodeId::parse("n1").unwrap();
    s.create_sale(sale("lim", 10, 2, 60)).await.unwrap();
    let g = s.lease(&sid("lim"), &node, 0, 10, 10_000).await.unwrap();
    let items = vec![
        item("lim", 1, "u", Some("k1")),
        item("lim", 2, "u", Some("k1")), // same key in the same batch: a replay
        item("lim", 3, "u", None),
        item("lim", 4, "u", None), // third ticket for a limit of two
    ];
    let out = s.reserve_batch(&sid("lim"), g.lease, items).await.unwrap();
    let ReserveOutcome::Reserved(first) = &out[0] else {
        panic!("first item: {:?}", out[0]);
    };
    assert_eq!(out[1], ReserveOutcome::Replayed(first.clone()));
    assert!(matches!(out[2], ReserveOutcome::Reserved(_)));
    assert_eq!(out[3], ReserveOutcome::LimitReached);

    // A later replay (another batch) answers the same reservation, and so does the lookup.
    let out = s
        .reserve_batch(&sid("lim"), g.lease, vec![item("lim", 5, "u", Some("k1"))])
        .await
        .unwrap();
    assert_eq!(out[0], ReserveOutcome::Replayed(first.clone()));
    let key = ticketrush_core::IdempotencyKey::parse("k1").unwrap();
    let found = s
        .find_idempotent(&sid("lim"), &UserId::parse("u").unwrap(), &key)
        .await
        .unwrap();
    assert_eq!(found.as_ref(), Some(first));
    let v = s.sale(&sid("lim")).await.unwrap().unwrap();
    assert_eq!(counts(&v), (8, 2, 0));

    // Cancelling frees a slot of the user's limit and puts the ticket back.
    let user = UserId::parse("u").unwrap();
    let c = s.cancel(&first.id, &user).await.unwrap();
    assert_eq!(c.state, ReservationState::Cancelled);
    assert_eq!(s.cancel(&first.id, &user).await.unwrap(), c, "cancel again");
    assert!(matches!(
        s.pay(&first.id, &user).await,
        Err(StoreError::Ledger(LedgerError::Cancelled))
    ));
    let out = s
        .reserve_batch(&sid("lim"), g.lease, vec![item("lim", 6, "u", None)])
        .await
        .unwrap();
    assert!(matches!(out[0], ReserveOutcome::Reserved(_)));
}

#[tokio::test]
async fn scripts_fence_a_lapsed_lease_and_reclaim_its_share() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let (n1, n2) = (NodeId::parse("n1").unwrap(), NodeId::parse("n2").unwrap());
    s.create_sale(sale("fence", 10, 1, 60)).await.unwrap();
    let g = s.lease(&sid("fence"), &n1, 0, 6, 200).await.unwrap();
    assert_eq!(g.granted, 6);
    assert!(wait_until(Duration::from_secs(5), || async { s.now() > g.deadline }).await);
    // Lapsed but not yet reclaimed: commits and renewals naming it are refused.
    let out = s
        .reserve_batch(&sid("fence"), g.lease, vec![item("fence", 1, "a", None)])
        .await;
    assert!(matches!(
        out,
        Err(StoreError::Ledger(LedgerError::LeaseLost))
    ));
    assert!(matches!(
        s.renew(&sid("fence"), g.lease, 10_000).await,
        Err(StoreError::Ledger(LedgerError::LeaseLost))
    ));
    // Another node's lease call takes the lapsed share back first: all ten are there.
    let g2 = s.lease(&sid("fence"), &n2, 0, 100, 10_000).await.unwrap();
    assert_eq!(g2.granted, 10);
    assert_ne!(g2.lease, g.lease, "lease ids are never reused");
    let v = s.sale(&sid("fence")).await.unwrap().unwrap();
    assert_eq!(counts(&v), (10, 0, 0));
    // Returning part of a live lease, then closing it.
    assert_eq!(
        s.release(&sid("fence"), g2.lease, 3, false).await.unwrap(),
        3
    );
    assert_eq!(
        s.release(&sid("fence"), g2.lease, 0, true).await.unwrap(),
        7
    );
    assert!(matches!(
        s.release(&sid("fence"), g2.lease, 0, true).await,
        Err(StoreError::Ledger(LedgerError::LeaseLost))
    ));
}

#[tokio::test]
async fn scripts_pay_and_expire_holds() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let node = NodeId::parse("n1").unwrap();
    s.create_sale(sale("hold", 3, 3, 1)).await.unwrap();
    let g = s.lease(&sid("hold"), &node, 0, 3, 60_000).await.unwrap();
    let items = vec![
        item("hold", 1, "a", None),
        item("hold", 2, "b", None),
        item("hold", 3, "c", None),
    ];
    let out = s.reserve_batch(&sid("hold"), g.lease, items).await.unwrap();
    let ids: Vec<ReservationId> = out
        .iter()
        .map(|o| match o {
            ReserveOutcome::Reserved(r) => r.id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let a = UserId::parse("a").unwrap();
    assert!(matches!(
        s.pay(&ids[0], &UserId::parse("b").unwrap()).await,
        Err(StoreError::Ledger(LedgerError::Forbidden))
    ));
    let paid = s.pay(&ids[0], &a).await.unwrap();
    assert_eq!(paid.state, ReservationState::Paid);
    assert!(paid.paid_at.is_some());
    assert_eq!(s.pay(&ids[0], &a).await.unwrap(), paid, "paying again");
    assert!(matches!(
        s.cancel(&ids[0], &a).await,
        Err(StoreError::Ledger(LedgerError::AlreadyPaid))
    ));

    // After the one-second hold, the reaper expires the two unpaid holds into the pool.
    let due = Instant::now() + Duration::from_millis(1100);
    tokio::time::sleep_until(due.into()).await;
    let mut expired = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while expired < 2 && Instant::now() < deadline {
        expired += s.reap(100).await.unwrap().expired;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(expired, 2, "each hold expires once");
    assert_eq!(
        s.reap(100).await.unwrap().expired,
        0,
        "reaping again is a no-op"
    );
    let b = s.reservation(&ids[1]).await.unwrap().unwrap();
    assert_eq!(b.state, ReservationState::Expired);
    assert!(matches!(
        s.pay(&ids[1], &UserId::parse("b").unwrap()).await,
        Err(StoreError::Ledger(LedgerError::Expired))
    ));
    let v = s.sale(&sid("hold")).await.unwrap().unwrap();
    // The lease still holds nothing; the two expired tickets are back in the pool.
    assert_eq!(counts(&v), (2, 0, 1));
    assert!(s
        .reservation(&ReservationId::parse("nosuch.hold").unwrap())
        .await
        .unwrap()
        .is_none());
}

// ----- nodes over HTTP -----

async fn redis_node(redis: &RedisServer, name: &str, lease: Duration) -> TestNode {
    let mut cfg = config(name);
    cfg.lease = lease;
    let store: Arc<dyn Store> = store(redis).await;
    TestNode::start_on(cfg, store, TempDir::new("redis-node")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_sell_every_ticket_exactly_once() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for n in 0..3 {
        nodes.push(redis_node(&redis, &format!("race-{n}"), Duration::from_secs(10)).await);
    }
    // Created on one node, served by all.
    assert_eq!(
        nodes[0]
            .client
            .create_sale("race", 500, json!({}))
            .await
            .status,
        201
    );
    let mut tasks = JoinSet::new();
    for w in 0..48usize {
        let c = nodes[w % 3].client.clone();
        tasks.spawn(async move {
            let mut won = Vec::new();
            for i in 0..25 {
                let a = c.reserve("race", &format!("u{w}-{i}")).await;
                match a.status {
                    201 => won.push(a.body["reservation_id"].as_str().unwrap().to_string()),
                    409 => assert_eq!(a.error(), "sold_out"),
                    s => panic!("unexpected {s}: {:?}", a.body),
                }
            }
            won
        });
    }
    let mut won = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        for id in r.unwrap() {
            assert!(won.insert(id), "a reservation id answered twice");
        }
    }
    assert_eq!(
        won.len(),
        500,
        "1,200 buyers for 500 tickets: all sold, none twice"
    );
    for n in &nodes {
        assert_eq!(n.client.counts("race").await, (0, 500, 0, 500));
    }
    for id in won.iter().take(20) {
        let a = nodes[2]
            .client
            .get(&format!("/api/v1/reservations/{id}"))
            .await;
        assert_eq!(a.status, 200, "every 201 is a stored reservation");
    }
    // Each node counts its round trips to Redis (what calls per reservation is measured by).
    let metrics = nodes[0]
        .client
        .http
        .get(format!("{}/metrics", nodes[0].client.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let trips: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ticketrush_store_round_trips_total "))
        .and_then(|n| n.parse().ok())
        .expect("the round-trip counter in /metrics");
    assert!(trips > 0, "{metrics}");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_on_every_node_gets_only_their_limit() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for n in 0..3 {
        nodes.push(redis_node(&redis, &format!("lim-{n}"), Duration::from_secs(10)).await);
    }
    let a = nodes[1]
        .client
        .create_sale("lim", 100, json!({"per_user_limit": 2}))
        .await;
    assert_eq!(a.status, 201);
    let mut tasks = JoinSet::new();
    for w in 0..30usize {
        let c = nodes[w % 3].client.clone();
        tasks.spawn(async move { c.reserve("lim", "greedy").await });
    }
    let (mut won, mut limited) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let a = r.unwrap();
        match (a.status, a.error()) {
            (201, _) => won += 1,
            (409, "limit_reached") => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((won, limited), (2, 28));
    assert_eq!(nodes[0].client.counts("lim").await, (98, 2, 0, 100));
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_quickly_and_the_node_recovers() {
    let mut redis = RedisServer::start();
    let node = redis_node(&redis, "outage", Duration::from_secs(10)).await;
    let c = &node.client;
    assert_eq!(c.create_sale("aof", 1_000, json!({})).await.status, 201);
    let mut acked = Vec::new();
    for i in 0..50 {
        let a = c.reserve("aof", &format!("u{i}")).await;
        assert_eq!(a.status, 201);
        acked.push(a.body["reservation_id"].as_str().unwrap().to_string());
    }
    let paid = c.pay(&acked[0], "u0").await;
    assert_eq!(paid.status, 200);

    redis.kill();
    assert_eq!(c.get("/readyz").await.status, 503);
    let started = Instant::now();
    let a = c.reserve("aof", "during-outage").await;
    assert!(
        a.status == 503 || a.status == 429,
        "a reservation without redis is refused, got {} {:?}",
        a.status,
        a.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused quickly, not after {:?}",
        started.elapsed()
    );

    // Back with its AOF: every acknowledged reservation is there, and the node sells again.
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            c.get("/readyz").await.status == 200
        })
        .await,
        "the node recovers by itself"
    );
    for (i, id) in acked.iter().enumerate() {
        let a = c.get(&format!("/api/v1/reservations/{id}")).await;
        assert_eq!(a.status, 200, "acknowledged reservation {id} survived");
        let want = if i == 0 { "paid" } else { "reserved" };
        assert_eq!(a.body["state"], want);
    }
    assert!(
        wait_until(Duration::from_secs(20), || async {
            c.reserve("aof", "after-outage").await.status == 201
        })
        .await,
        "selling again after redis came back"
    );
    let (available, reserved, paid, total) = c.counts("aof").await;
    assert_eq!(total, available + reserved + paid);
    assert_eq!((reserved, paid), (50, 1));
    node.stop().await;
}

// ----- real processes: SIGKILL and SIGSTOP -----

/// The real `ticketrush serve --redis` on a free port.
async fn spawn_redis_node(redis: &RedisServer, name: &str, lease_seconds: u64) -> (Child, Client) {
    let (url, lease) = (redis.url(), lease_seconds.to_string());
    spawn_serve(&[
        "--redis",
        &url,
        "--node-id",
        name,
        "--lease-seconds",
        &lease,
    ])
    .await
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_share_is_sold_by_the_others_within_the_lease() {
    let redis = RedisServer::start();
    let (mut a, ca) = spawn_redis_node(&redis, "victim", 2).await;
    let (_b, cb) = spawn_redis_node(&redis, "survivor", 2).await;
    assert_eq!(ca.create_sale("kill", 200, json!({})).await.status, 201);
    // The victim sells a little, so it holds a leased share of the stock.
    for i in 0..5 {
        assert_eq!(ca.reserve("kill", &format!("a{i}")).await.status, 201);
    }
    a.start_kill().unwrap();
    let _ = a.wait().await;
    let killed_at = Instant::now();

    // The survivor keeps selling to new users; the victim's share comes back within the
    // lease (2 s) plus a reaper pass, so every ticket ends up sold.
    let mut i = 0;
    let sold_all = wait_until(Duration::from_secs(15), || {
        i += 1;
        let cb = cb.clone();
        let user = format!("b{i}");
        async move {
            let a = cb.reserve("kill", &user).await;
            assert!(a.status == 201 || a.error() == "sold_out", "{:?}", a.body);
            let (available, reserved, _, _) = cb.counts("kill").await;
            available == 0 && reserved == 200
        }
    })
    .await;
    assert!(sold_all, "the dead node's share was not resold");
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "resold in {:?}",
        killed_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_cannot_oversell_when_it_wakes() {
    let redis = RedisServer::start();
    let (a, ca) = spawn_redis_node(&redis, "sleeper", 1).await;
    let (_b, cb) = spawn_redis_node(&redis, "awake", 1).await;
    assert_eq!(ca.create_sale("pause", 100, json!({})).await.status, 201);
    for i in 0..3 {
        assert_eq!(ca.reserve("pause", &format!("s{i}")).await.status, 201);
    }
    // Requests in flight to the sleeper when it stops: they are answered only after it wakes.
    signal(&a, "-STOP");
    let mut in_flight = JoinSet::new();
    for i in 0..40 {
        let ca = ca.clone();
        in_flight.spawn(async move { ca.reserve("pause", &format!("late{i}")).await });
    }
    // While it sleeps past its lease, the other node sells everything, its share included.
    let mut i = 0;
    let sold_all = wait_until(Duration::from_secs(15), || {
        i += 1;
        let cb = cb.clone();
        let user = format!("w{i}");
        async move {
            cb.reserve("pause", &user).await;
            let (available, reserved, _, _) = cb.counts("pause").await;
            available == 0 && reserved == 100
        }
    })
    .await;
    assert!(sold_all, "the paused node's share was not taken back");
    signal(&a, "-CONT");

    let mut acked = Vec::new();
    while let Some(r) = in_flight.join_next().await {
        let ans = r.unwrap();
        match ans.status {
            201 => acked.push(ans.body["reservation_id"].as_str().unwrap().to_string()),
            409 | 429 | 503 => {}
            s => panic!("unexpected {s}: {:?}", ans.body),
        }
    }
    // Nothing was sold twice: the counts still add up to the total, and every 201 the woken
    // node gave is a reservation Redis holds.
    let (available, reserved, paid, total) = cb.counts("pause").await;
    assert_eq!((total, available + reserved + paid), (100, 100));
    for id in &acked {
        let r: Value = cb.get(&format!("/api/v1/reservations/{id}")).await.body;
        assert_eq!(r["state"], "reserved", "{id} was answered 201 but is {r}");
    }
    drop(a);
}

#[tokio::test]
async fn scripts_commit_the_largest_batch_in_one_call() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let node = NodeId::parse("n1").unwrap();
    let max = ticketrush_server::limits::BATCH_SIZE_CEILING;
    s.create_sale(sale("big", max as u64, 2, 60)).await.unwrap();
    let g = s
        .lease(&sid("big"), &node, 0, max as u64, 60_000)
        .await
        .unwrap();
    // Users come in threes (a limit of two: every third is refused), and every user's first
    // key is sent twice (the second is a replay of the first, within the same call).
    let items: Vec<ReserveItem> = (0..max)
        .map(|n| {
            let user = format!("u{}", n / 3);
            let key = (n % 3 != 2).then(|| format!("k{}", n / 3 * 3));
            item("big", n, &user, key.as_deref())
        })
        .collect();
    let out = s.reserve_batch(&sid("big"), g.lease, items).await.unwrap();
    assert_eq!(out.len(), max);
    let reserved = out
        .iter()
        .filter(|o| matches!(o, ReserveOutcome::Reserved(_)))
        .count();
    let replayed = out
        .iter()
        .filter(|o| matches!(o, ReserveOutcome::Replayed(_)))
        .count();
    let limited = out
        .iter()
        .filter(|o| **o == ReserveOutcome::LimitReached)
        .count();
    // Per trio: reserved (key k), replayed (same key), then the keyless third is a new ticket.
    let trios = max / 3;
    assert_eq!((reserved, replayed, limited), (max - trios, trios, 0));
    let v = s.sale(&sid("big")).await.unwrap().unwrap();
    assert_eq!(counts(&v), ((max - reserved) as u64, reserved as u64, 0));
    let snap = s.snapshot(&sid("big")).await.unwrap().unwrap();
    let report = ticketrush_core::audit_sale(&snap.view, &snap.reservations, None);
    assert!(report.passed(), "{:?}", report.violations);
}
