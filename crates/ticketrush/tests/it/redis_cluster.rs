//! Cluster mode on a real three-master Redis Cluster started by each test: sales land on every
//! master, nodes find out by themselves that they talk to a cluster (one node's URL is the
//! seed), and a master killed and restarted on its AOF loses nothing while the others sell on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use ticketrush_store::{RedisConfig, RedisStore, Store};
use tokio::task::JoinSet;

use ticketrush_testkit::redis_server::RedisCluster;
use ticketrush_testkit::{config, wait_until, TempDir, TestNode};

async fn cluster_node(cluster: &RedisCluster, name: &str) -> TestNode {
    let store = RedisStore::connect(RedisConfig::new(cluster.url()))
        .await
        .expect("connect to the test's cluster");
    assert!(store.is_cluster(), "the store did not see a cluster");
    let store: Arc<dyn Store> = Arc::new(store);
    TestNode::start_on(config(name), store, TempDir::new("cluster-node")).await
}

/// Which master (index) holds a sale: the one where its key exists.
fn master_of(cluster: &RedisCluster, sale: &str) -> usize {
    let key = format!("{{sale:{sale}}}:sale");
    let owners: Vec<usize> = (0..cluster.masters.len())
        .filter(|&i| cluster.masters[i].cli(&["EXISTS", &key]).trim() == "1")
        .collect();
    assert_eq!(owners.len(), 1, "sale {sale} on masters {owners:?}");
    owners[0]
}

/// The sales of `sales` that live on master `master`: some, not all (the test's premise).
fn sales_on(cluster: &RedisCluster, sales: &[String], master: usize) -> Vec<String> {
    let on: Vec<String> = sales
        .iter()
        .filter(|s| master_of(cluster, s) == master)
        .cloned()
        .collect();
    assert!(
        !on.is_empty() && on.len() < sales.len(),
        "{on:?} of {sales:?}"
    );
    on
}

/// `workers` buyers reserving round the `sales` (a new user each time) until `stop`; each
/// answers the (sale, reservation id) pairs it was acknowledged. A 503 must name the
/// reservation whose outcome it leaves open; any other answer fails the test.
fn spawn_buyers(
    c: &ticketrush_testkit::Client,
    sales: &[String],
    workers: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> JoinSet<Vec<(String, String)>> {
    let mut buyers = JoinSet::new();
    for w in 0..workers {
        let (c, sales, stop) = (c.clone(), sales.to_vec(), stop.clone());
        buyers.spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sale = &sales[(w + i) % sales.len()];
                let a = c.reserve(sale, &format!("w{w}-{i}")).await;
                let id = a.body["reservation_id"].as_str().map(str::to_string);
                match (a.status, id) {
                    (201, Some(id)) => acked.push((sale.clone(), id)),
                    (503, Some(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                    (other, _) => panic!("{sale}: {other} {:?}", a.body),
                }
                i += 1;
            }
            acked
        });
    }
    buyers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sales_on_every_master_sell_exactly_through_racing_nodes() {
    let cluster = RedisCluster::start();
    let mut nodes = Vec::new();
    for n in 0..3 {
        nodes.push(cluster_node(&cluster, &format!("c{n}")).await);
    }
    let sales: Vec<String> = (0..12).map(|i| format!("train-{i}")).collect();
    for (i, s) in sales.iter().enumerate() {
        let a = nodes[i % 3].client.create_sale(s, 120, json!({})).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
    }
    let mut per_master: HashMap<usize, usize> = HashMap::new();
    for s in &sales {
        *per_master.entry(master_of(&cluster, s)).or_default() += 1;
    }
    assert_eq!(
        per_master.len(),
        3,
        "every master holds sales: {per_master:?}"
    );
    // The list of sales (one key outside every sale's slot) works too.
    let listed = nodes[2].client.get("/api/v1/sales").await;
    assert_eq!(listed.body["sales"].as_array().unwrap().len(), 12);

    // Every sale: as many users as tickets (24 × 5), spread over the three nodes, at once.
    let mut tasks = JoinSet::new();
    for w in 0..24usize {
        let clients: Vec<_> = nodes.iter().map(|n| n.client.clone()).collect();
        let sales = sales.clone();
        tasks.spawn(async move {
            let mut won = 0;
            for (si, s) in sales.iter().enumerate() {
                for i in 0..5 {
                    let user = format!("u{w}-{i}");
                    let a = clients[(w + si + i) % 3].reserve(s, &user).await;
                    assert_eq!(a.status, 201, "{s} {user}: {:?}", a.body);
                    won += 1;
                }
            }
            won
        });
    }
    let mut won = 0;
    while let Some(r) = tasks.join_next().await {
        won += r.unwrap();
    }
    assert_eq!(won, 12 * 120);
    for s in &sales {
        assert_eq!(nodes[0].client.counts(s).await, (0, 120, 0, 120), "{s}");
        assert_eq!(nodes[1].client.reserve(s, "late").await.error(), "sold_out");
    }
    // The per-user limit holds per sale across nodes.
    let a = nodes[0]
        .client
        .create_sale("lim", 100, json!({"per_user_limit": 2}))
        .await;
    assert_eq!(a.status, 201);
    let mut tasks = JoinSet::new();
    for w in 0..18usize {
        let c = nodes[w % 3].client.clone();
        tasks.spawn(async move { c.reserve("lim", "greedy").await.status });
    }
    let mut statuses = Vec::new();
    while let Some(r) = tasks.join_next().await {
        statuses.push(r.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 2);
    assert_eq!(nodes[2].client.counts("lim").await, (98, 2, 0, 100));
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_and_restarted_loses_nothing_while_the_others_sell_on() {
    let mut cluster = RedisCluster::start();
    let node = cluster_node(&cluster, "survivor").await;
    let c = node.client.clone();
    let sales: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
    for s in &sales {
        assert_eq!(c.create_sale(s, 1_000, json!({})).await.status, 201);
    }
    let victim = 1;
    let on_victim: Vec<&String> = sales
        .iter()
        .filter(|s| master_of(&cluster, s) == victim)
        .collect();
    let elsewhere: Vec<&String> = sales
        .iter()
        .filter(|s| master_of(&cluster, s) != victim)
        .collect();
    assert!(!on_victim.is_empty() && !elsewhere.is_empty());
    let mut acked = Vec::new();
    for s in &sales {
        for i in 0..20 {
            let a = c.reserve(s, &format!("before-{i}")).await;
            assert_eq!(a.status, 201);
            acked.push(a.body["reservation_id"].as_str().unwrap().to_string());
        }
    }

    cluster.masters[victim].kill();
    // Its sales answer 503 quickly; the other masters' sales sell on.
    let started = Instant::now();
    let a = c.reserve(on_victim[0], "during").await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for s in &elsewhere {
        let a = c.reserve(s, "during").await;
        assert_eq!(a.status, 201, "{s} on a live master: {:?}", a.body);
        acked.push(a.body["reservation_id"].as_str().unwrap().to_string());
    }

    // Back on its AOF: nothing acknowledged is missing, and the node sells its sales again
    // without a restart.
    cluster.masters[victim].restart();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            c.reserve(on_victim[0], "after").await.status == 201
        })
        .await,
        "the node did not recover the restarted master's sales"
    );
    for id in &acked {
        let a = c.get(&format!("/api/v1/reservations/{id}")).await;
        assert_eq!(a.status, 200, "acknowledged {id} lost");
    }
    for s in &sales {
        let (available, reserved, paid, total) = c.counts(s).await;
        assert_eq!(available + reserved + paid, total, "{s}");
    }
    node.stop().await;
}

/// A master SIGKILLed while buyers hammer every master: its sales answer 503 quickly, the
/// other masters' sales keep selling through the outage (the node's calls to live masters
/// never wait on the dead one), and after the restart on its AOF every acknowledged
/// reservation is there and no sale is oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_burst_stalls_only_its_own_sales() {
    let mut cluster = RedisCluster::start();
    let node = cluster_node(&cluster, "burst").await;
    let c = node.client.clone();
    let sales: Vec<String> = (0..9).map(|i| format!("b{i}")).collect();
    for s in &sales {
        assert_eq!(c.create_sale(s, 100_000, json!({})).await.status, 201);
    }
    // The master of slot 0 (`redis-cli --cluster create` gives the first node slots
    // 0-5460): keyless calls must not depend on it.
    let victim = 0;
    assert!(cluster.masters[0]
        .cli(&["CLUSTER", "COUNTKEYSINSLOT", "0"])
        .trim()
        .parse::<u64>()
        .is_ok());
    let on_victim = sales_on(&cluster, &sales, victim);

    // Buyers on every sale, until told to stop; each remembers what it was acknowledged.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut buyers = spawn_buyers(&c, &sales, 16, &stop);
    // Let the burst run, then kill the victim under it.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            c.counts(&sales[0]).await.1 >= 50
        })
        .await
    );
    cluster.masters[victim].kill();
    let killed = Instant::now();

    // While it is down (with the burst still on): its sales answer 503 within the call
    // bound, and every other master's sale sells, promptly, again and again.
    let a = c.reserve(&on_victim[0], "probe-dead").await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    // Still ready: the node sells the other masters' sales.
    let ready = c.get("/readyz").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    let mut live_acked = Vec::new();
    for round in 0..4 {
        if round == 3 {
            // Once the live masters agree the victim failed (after the node timeout), the
            // cluster still serves their slots (`cluster-require-full-coverage no`).
            let other = &cluster.masters[(victim + 1) % 3];
            assert!(
                wait_until(Duration::from_secs(20), || async {
                    other.cli(&["CLUSTER", "NODES"]).contains("master,fail ")
                })
                .await,
                "the cluster did not mark the dead master as failed"
            );
        }
        for s in sales.iter().filter(|s| !on_victim.contains(s)) {
            let asked = Instant::now();
            let a = c.reserve(s, &format!("probe-{round}")).await;
            assert_eq!(
                a.status, 201,
                "{s} on a live master, round {round}: {:?}",
                a.body
            );
            assert!(
                asked.elapsed() < Duration::from_secs(1),
                "{s} on a live master waited {:?}",
                asked.elapsed()
            );
            live_acked.push(a.body["reservation_id"].as_str().unwrap().to_string());
        }
    }

    // Back on its AOF: the node sells the victim's sales again without a restart.
    cluster.masters[victim].restart();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            c.reserve(&on_victim[0], "after").await.status == 201
        })
        .await,
        "the node did not recover the restarted master's sales"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    while let Some(r) = buyers.join_next().await {
        acked.extend(r.unwrap());
    }
    let mut acked_per_sale: HashMap<String, u64> = HashMap::new();
    for (sale, id) in &acked {
        *acked_per_sale.entry(sale.clone()).or_default() += 1;
        let a = c.get(&format!("/api/v1/reservations/{id}")).await;
        assert_eq!(a.status, 200, "acknowledged {id} of {sale} lost");
    }
    for id in &live_acked {
        assert_eq!(
            c.get(&format!("/api/v1/reservations/{id}")).await.status,
            200
        );
    }
    assert!(
        on_victim
            .iter()
            .any(|s| acked_per_sale.get(s).copied().unwrap_or(0) > 0),
        "no reservation on the victim was acknowledged before the kill"
    );
    for s in &sales {
        let (available, reserved, paid, total) = c.counts(s).await;
        assert_eq!(available + reserved + paid, total, "{s}");
        assert!(
            reserved >= acked_per_sale.get(s).copied().unwrap_or(0),
            "{s}: {reserved} held, more acknowledged"
        );
    }
    node.stop().await;
}

/// Failover with `WAIT`: three masters with a replica each, a node requiring one replica's
/// confirmation. The master of some sales is SIGKILLed mid-burst; its replica takes over and
/// the node finds it without a restart; every acknowledged reservation is on the new master.
/// The new master has no replica of its own, so its writes are then answered 503 naming the
/// reservation (not acknowledged) until the old master comes back as its replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_loses_nothing_acknowledged_with_wait_replicas() {
    let mut cluster = RedisCluster::start_with_replicas();
    let config_redis = RedisConfig {
        wait_replicas: 1,
        ..RedisConfig::new(cluster.url())
    };
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(config_redis).await.unwrap());
    let node = TestNode::start_on(config("waiter"), store, TempDir::new("cluster-node")).await;
    let c = node.client.clone();
    let sales: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
    for s in &sales {
        let a = c.create_sale(s, 100_000, json!({})).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
    }
    let victim = 0;
    let on_victim = sales_on(&cluster, &sales, victim);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut buyers = spawn_buyers(&c, &on_victim, 8, &stop);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            c.counts(&on_victim[0]).await.1 >= 100
        })
        .await
    );
    cluster.masters[victim].kill();

    // The replica is promoted (after the 2 s node timeout) and found by the node: the
    // victim's sales answer again, 503 naming the reservation, since the new master has no
    // replica to confirm to.
    let probes = std::sync::atomic::AtomicUsize::new(0);
    let promoted = wait_until(Duration::from_secs(30), || async {
        let n = probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let a = c.reserve(&on_victim[0], &format!("probe-{n}")).await;
        a.status == 503
            && a.body["reservation_id"].is_string()
            && a.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("could not replicate"))
    })
    .await;
    assert!(promoted, "the node did not reach the promoted replica");
    // Other masters (with their replicas) sell as before.
    for s in sales.iter().filter(|s| !on_victim.contains(s)) {
        assert_eq!(c.reserve(s, "elsewhere").await.status, 201, "{s}");
    }
    // The old master comes back as the new master's replica: writes are acknowledged again.
    cluster.masters[victim].restart();
    // A new user each try: a 503 here applied the reservation, so the same user would meet
    // the per-user limit.
    let tries = std::sync::atomic::AtomicUsize::new(0);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.reserve(&on_victim[0], &format!("after-{n}")).await.status == 201
        })
        .await,
        "writes were not acknowledged again once the old master replicated"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    while let Some(r) = buyers.join_next().await {
        acked.extend(r.unwrap());
    }
    assert!(acked.len() >= 100, "{} acknowledged", acked.len());
    for (_, id) in &acked {
        let a = c.get(&format!("/api/v1/reservations/{id}")).await;
        assert_eq!(a.status, 200, "acknowledged {id} lost in the failover");
    }
    for s in &sales {
        let (available, reserved, paid, total) = c.counts(s).await;
        assert_eq!(available + reserved + paid, total, "{s}");
    }
    node.stop().await;
}

/// The slot of a sale moves to another master while buyers keep reserving (MIGRATING /
/// IMPORTING, MIGRATE, SETSLOT NODE): the client follows ASK and MOVED, no buyer sees an
/// error, and every ticket is sold exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_whose_slot_moves_mid_sale_sells_on_without_errors() {
    let cluster = RedisCluster::start();
    let node = cluster_node(&cluster, "mover").await;
    let c = node.client.clone();
    assert_eq!(c.create_sale("moving", 400, json!({})).await.status, 201);
    let from = master_of(&cluster, "moving");
    let to = (from + 1) % 3;
    let slot = cluster.masters[from]
        .cli(&["CLUSTER", "KEYSLOT", "{sale:moving}:sale"])
        .trim()
        .to_string();
    let id_of = |i: usize| {
        cluster.masters[i]
            .cli(&["CLUSTER", "MYID"])
            .trim()
            .to_string()
    };
    let (from_id, to_id) = (id_of(from), id_of(to));

    let buyers = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut won = 0;
            for i in 0..400 {
                let a = c.reserve("moving", &format!("m{i}")).await;
                assert_eq!(a.status, 201, "buyer {i}: {:?}", a.body);
                won += 1;
            }
            won
        })
    };
    // Move the slot while they buy.
    let (src, dst) = (&cluster.masters[from], &cluster.masters[to]);
    dst.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    src.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    loop {
        let keys = src.cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let port = dst.port.to_string();
        let mut args = vec![
            "MIGRATE",
            "127.0.0.1",
            port.as_str(),
            "",
            "0",
            "5000",
            "KEYS",
        ];
        args.extend(keys);
        src.cli(&args);
    }
    for m in &cluster.masters {
        m.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
    assert_eq!(buyers.await.unwrap(), 400);
    assert_eq!(master_of(&cluster, "moving"), to, "the sale moved");
    assert_eq!(c.counts("moving").await, (0, 400, 0, 400));
    assert_eq!(c.reserve("moving", "late").await.error(), "sold_out");
    node.stop().await;
}

/// The real binary on a cluster, with the order pipeline: two `serve --redis --postgres`
/// nodes (any one node's URL each) sell sales that land on every master, their order writers
/// read every sale's stream on its own master, and `audit --redis --postgres` passes for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_of_every_sale_reach_postgres_and_audit_passes() {
    let cluster = RedisCluster::start();
    let db = ticketrush_testkit::pg::TestDb::create().await;
    let pg = db.url();
    let (url_a, url_b) = (cluster.masters[0].url(), cluster.masters[2].url());
    let (_a, ca) = crate::crash::spawn_serve(&[
        "--redis",
        &url_a,
        "--redis",
        &url_b,
        "--postgres",
        &pg,
        "--node-id",
        "pa",
    ])
    .await;
    let (_b, cb) =
        crate::crash::spawn_serve(&["--redis", &url_b, "--postgres", &pg, "--node-id", "pb"]).await;
    let sales: Vec<String> = (0..6).map(|i| format!("o{i}")).collect();
    for s in &sales {
        assert_eq!(ca.create_sale(s, 40, json!({})).await.status, 201);
    }
    let masters: std::collections::HashSet<usize> =
        sales.iter().map(|s| master_of(&cluster, s)).collect();
    assert!(masters.len() >= 2, "sales on one master only: {masters:?}");
    for s in &sales {
        for i in 0..40 {
            let c = if i % 2 == 0 { &ca } else { &cb };
            assert_eq!(c.reserve(s, &format!("u{i}")).await.status, 201);
        }
        assert_eq!(cb.reserve(s, "late").await.error(), "sold_out");
    }
    for s in &sales {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
            .args(["audit", "--redis", &url_b, "--postgres", &pg, "--sale", s])
            .args(["--wait-seconds", "30"])
            .env("TICKETRUSH_LOG", "warn")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("audit finished within 60 s")
            .expect("run audit");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{s}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("order rows 40\nPASSED"), "{s}: {text}");
    }
    assert_eq!(db.count("select count(*) from orders").await, 240);
}

/// Several seeds, comma-separated: a dead one is skipped, and the cluster is found from the
/// next.
#[tokio::test]
async fn seeds_are_tried_in_order() {
    let cluster = RedisCluster::start();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let urls = format!("redis://127.0.0.1:{dead},{}", cluster.masters[1].url());
    let store = RedisStore::connect(RedisConfig::new(urls)).await.unwrap();
    assert!(store.is_cluster());
    let spec = ticketrush_core::SaleSpec::new(
        ticketrush_core::SaleId::parse("seeded").unwrap(),
        None,
        5,
        None,
        None,
        ticketrush_core::UnixMs(0),
    )
    .unwrap();
    assert_eq!(store.create_sale(spec).await.unwrap().available, 5);
}

/// `demo --sales` over a three-master cluster: many trains spread over the masters, each
/// audited from the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sells_many_trains_over_a_cluster() {
    let cluster = RedisCluster::start();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args([
            "demo",
            "--redis",
            &cluster.url(),
            "--sales",
            "9",
            "--tickets",
            "40",
        ])
        .args(["--users", "1200", "--nodes", "2", "--connections", "20"])
        .args(["--max-seconds", "60"])
        .env_remove("TICKETRUSH_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("demo finished within 120 s")
        .expect("run demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("audit passed for 9 of 9"), "{text}");
}

/// The order writer on a cluster with a master down, the one holding the list of sales: the
/// other masters' sales keep getting their rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_writer_goes_on_for_the_live_masters_when_one_is_down() {
    let mut cluster = RedisCluster::start();
    let db = ticketrush_testkit::pg::TestDb::create().await;
    let pg = db.url();
    let url = cluster.masters[0].url();
    let (_node, c) =
        crate::crash::spawn_serve(&["--redis", &url, "--postgres", &pg, "--node-id", "w"]).await;
    let sales: Vec<String> = (0..9).map(|i| format!("ow{i}")).collect();
    for s in &sales {
        assert_eq!(c.create_sale(s, 100, json!({})).await.status, 201);
        assert_eq!(c.reserve(s, "first").await.status, 201);
    }
    let rows_of = |s: &str| format!("select count(*) from orders where sale_id = '{s}'");
    // Every sale is followed (its first row is written) before the kill.
    for s in &sales {
        let q = rows_of(s);
        assert!(
            wait_until(Duration::from_secs(20), || async {
                db.count(&q).await == 1
            })
            .await,
            "{s} not followed"
        );
    }
    let holder = (0..3)
        .find(|&i| {
            cluster.masters[i]
                .cli(&["EXISTS", "ticketrush:sales"])
                .trim()
                == "1"
        })
        .expect("a master holds the list of sales");
    let alive = sales
        .iter()
        .filter(|s| master_of(&cluster, s) != holder)
        .cloned()
        .collect::<Vec<_>>();
    assert!(!alive.is_empty());
    cluster.masters[holder].kill();
    // Until the live masters agree it failed (after the 2 s node timeout): from then on a
    // cluster requiring full coverage would refuse everything, and the writer's housekeeping
    // (each second) has met the dead master more than once.
    let other = &cluster.masters[(holder + 1) % 3];
    assert!(
        wait_until(Duration::from_secs(20), || async {
            other.cli(&["CLUSTER", "NODES"]).contains("master,fail ")
        })
        .await,
        "the cluster did not mark the dead master as failed"
    );
    for s in &alive {
        for i in 0..10 {
            assert_eq!(c.reserve(s, &format!("u{i}")).await.status, 201, "{s}");
        }
    }
    for s in &alive {
        let q = rows_of(s);
        assert!(
            wait_until(Duration::from_secs(20), || async {
                db.count(&q).await == 11
            })
            .await,
            "{s}: the writer stopped for a live master's sale ({} rows)",
            db.count(&q).await
        );
    }
}
