//! Cluster mode: nodes selling one sale through a real `redis-server` started by each test.
//!
//! The nodes race each other, in-process or as real processes killed with SIGKILL or paused
//! with SIGSTOP, and then the counts Redis holds are checked. (The Lua scripts' own tests,
//! through `RedisStore` directly, are in `crates/store/tests`.)

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ticketrush_store::{RedisConfig, RedisStore, Store};
use tokio::process::Child;
use tokio::task::JoinSet;

use crate::crash::spawn_serve;
use ticketrush_testkit::redis_server::RedisServer;
use ticketrush_testkit::{config, wait_until, Client, TempDir, TestNode};

async fn store(redis: &RedisServer) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::connect(RedisConfig::new(redis.url()))
            .await
            .expect("connect to the test's redis"),
    )
}

// ----- nodes over HTTP -----

async fn redis_node(redis: &RedisServer, name: &str) -> TestNode {
    let cfg = config(name);
    let store: Arc<dyn Store> = store(redis).await;
    TestNode::start_on(cfg, store, TempDir::new("redis-node")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_sell_every_ticket_exactly_once() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for n in 0..3 {
        nodes.push(redis_node(&redis, &format!("race-{n}")).await);
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
        nodes.push(redis_node(&redis, &format!("lim-{n}")).await);
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
    let node = redis_node(&redis, "outage").await;
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

/// A commit that times out may still be applied by Redis later (it waits on the connection).
/// The user is never left with a held ticket they do not know of: the node looks the
/// reservation up before answering, and answers 201 if it was applied, or 503 naming the
/// reservation id, which then resolves to the reservation once Redis runs the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_times_out_is_resolved_or_named() {
    let redis = RedisServer::start();
    let node = redis_node(&redis, "stall").await;
    let c = node.client.clone();
    assert_eq!(c.create_sale("stall", 10, json!({})).await.status, 201);
    assert_eq!(c.reserve("stall", "warm").await.status, 201);
    // Redis stalls for longer than the node's 2 s bound on a call.
    redis.signal("-STOP");
    let pending = tokio::spawn({
        let c = c.clone();
        async move { c.reserve("stall", "stalled-user").await }
    });
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    redis.signal("-CONT");
    let a = pending.await.unwrap();
    let id = match a.status {
        201 => a.body["reservation_id"].as_str().unwrap().to_string(),
        503 => {
            assert_eq!(a.error(), "unavailable");
            a.body["reservation_id"]
                .as_str()
                .expect("a 503 for a reservation names its id")
                .to_string()
        }
        s => panic!("unexpected {s}: {:?}", a.body),
    };
    // Either way the reservation the answer names exists, for this user, exactly once.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            c.get(&format!("/api/v1/reservations/{id}")).await.status == 200
        })
        .await,
        "the answer named {id}, which Redis does not hold"
    );
    let r = c.get(&format!("/api/v1/reservations/{id}")).await;
    assert_eq!(r.body["user_id"], "stalled-user");
    assert_eq!(c.counts("stall").await, (8, 2, 0, 10));
    node.stop().await;
}

// ----- real processes: SIGKILL and SIGSTOP -----

/// The real `ticketrush serve --redis` on a free port.
async fn spawn_redis_node(redis: &RedisServer, name: &str) -> (Child, Client) {
    let url = redis.url();
    spawn_serve(&["--redis", &url, "--node-id", name]).await
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
async fn a_killed_node_strands_no_ticket() {
    let redis = RedisServer::start();
    let (mut a, ca) = spawn_redis_node(&redis, "victim").await;
    let (_b, cb) = spawn_redis_node(&redis, "survivor").await;
    assert_eq!(ca.create_sale("kill", 200, json!({})).await.status, 201);
    // The victim sells a little (and, in the first version, held a leased share then).
    for i in 0..5 {
        assert_eq!(ca.reserve("kill", &format!("a{i}")).await.status, 201);
    }
    a.start_kill().unwrap();
    let _ = a.wait().await;

    // At once, with no lease to wait out: the survivor sells every other ticket, each of the
    // 195 users wins, and only the next one hears sold_out.
    for i in 0..195 {
        let r = cb.reserve("kill", &format!("b{i}")).await;
        assert_eq!(r.status, 201, "user b{i}: {:?}", r.body);
    }
    let r = cb.reserve("kill", "late").await;
    assert_eq!(r.error(), "sold_out");
    assert_eq!(cb.counts("kill").await, (0, 200, 0, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_cannot_oversell_when_it_wakes() {
    let redis = RedisServer::start();
    let (a, ca) = spawn_redis_node(&redis, "sleeper").await;
    let (_b, cb) = spawn_redis_node(&redis, "awake").await;
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
    // While it sleeps, the other node sells everything.
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
    assert!(sold_all, "the other node could not sell every ticket");
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

// ----- no phantom sold-out -----

/// How the users of a run reach the nodes.
#[derive(Clone, Copy, Debug)]
enum Route {
    RoundRobin,
    /// Nine in ten users on node 0, the rest spread over the others.
    Skewed,
    /// Node 0 gets the very first user and then no traffic at all.
    OneThenIdle,
}

impl Route {
    fn node(self, user: usize, nodes: usize) -> usize {
        match self {
            Route::RoundRobin => user % nodes,
            Route::Skewed if user % 10 != 9 => 0,
            Route::Skewed => 1 + user / 10 % (nodes - 1),
            Route::OneThenIdle if user == 0 => 0,
            Route::OneThenIdle => 1 + user % (nodes - 1),
        }
    }
}

/// As many users as tickets, each trying once, concurrently, through `nodes` nodes on one
/// Redis: every user must win, none may be told `sold_out` while a ticket is left anywhere,
/// and nobody waits a second. The first version failed every case with more than one ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_many_users_as_tickets_all_win_whichever_node_they_reach() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for n in 0..4 {
        nodes.push(redis_node(&redis, &format!("fair-{n}")).await);
    }
    let cases = [
        (2, 1, Route::RoundRobin),
        (2, 50, Route::Skewed),
        (2, 300, Route::OneThenIdle),
        (2, 10_000, Route::Skewed),
        (4, 1, Route::Skewed),
        (4, 50, Route::RoundRobin),
        (4, 300, Route::RoundRobin),
        (4, 300, Route::OneThenIdle),
        (4, 10_000, Route::RoundRobin),
    ];
    for (case, &(n_nodes, tickets, route)) in cases.iter().enumerate() {
        let sale = format!("fair{case}");
        let a = nodes[0]
            .client
            .create_sale(&sale, tickets as u64, json!({}))
            .await;
        assert_eq!(a.status, 201);
        // 32 buyers at a time; users are claimed from one counter so order is first come.
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..32 {
            let clients: Vec<Client> = nodes[..n_nodes].iter().map(|n| n.client.clone()).collect();
            let (next, sale) = (next.clone(), sale.clone());
            tasks.spawn(async move {
                let mut slowest = Duration::ZERO;
                loop {
                    let u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if u >= tickets {
                        return slowest;
                    }
                    let c = &clients[route.node(u, n_nodes)];
                    let t = Instant::now();
                    let a = c.reserve(&sale, &format!("user{u}")).await;
                    slowest = slowest.max(t.elapsed());
                    assert_eq!(
                        a.status, 201,
                        "{n_nodes} nodes, {tickets} tickets, {route:?}: user {u} got {:?}",
                        a.body
                    );
                }
            });
        }
        while let Some(slowest) = tasks.join_next().await {
            let slowest = slowest.unwrap();
            assert!(
                slowest < Duration::from_secs(1),
                "{n_nodes} nodes, {tickets} tickets, {route:?}: a user waited {slowest:?}"
            );
        }
        assert_eq!(
            nodes[n_nodes - 1].client.counts(&sale).await,
            (0, tickets as u64, 0, tickets as u64)
        );
        // Every node now says sold out, and it is true.
        for n in &nodes[..n_nodes] {
            assert_eq!(
                n.client.reserve(&sale, "one-too-many").await.error(),
                "sold_out"
            );
        }
    }
    for n in nodes {
        n.stop().await;
    }
}
