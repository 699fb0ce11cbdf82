//! The order pipeline against a real Redis and a real PostgreSQL database made for the test:
//! rows follow reservations, survive a writer killed mid-batch and a stalled database, and the
//! audit (the real binary) passes on a clean sale and names every kind of damage.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use ticketrush_core::{
    audit_sale, Reservation, ReservationId, ReservationState, ReserveItem, ReserveOutcome, SaleId,
    SaleSpec, UnixMs, UserId,
};
use ticketrush_orders::{OrderWriter, OrdersDb, WriterConfig};
use ticketrush_store::{RedisConfig, RedisStore, Store};

use ticketrush_testkit::pg::{FreezableProxy, TestDb};
use ticketrush_testkit::redis_server::RedisServer;
use ticketrush_testkit::{config, wait_until, TempDir, TestNode};

fn writer_config(redis: &RedisServer, pg_url: &str, name: &str) -> WriterConfig {
    let mut c = WriterConfig::new(&redis.url(), pg_url, name);
    c.claim_idle = Duration::from_secs(1);
    c
}

async fn redis_store(redis: &RedisServer) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::connect(RedisConfig::new(redis.url()))
            .await
            .unwrap(),
    )
}

/// Audits `sale` against the stores: `None` when it passes, else the violations.
async fn audit(store: &RedisStore, db: &TestDb, sale: &str) -> Option<String> {
    let sale = SaleId::parse(sale).unwrap();
    let snap = store.snapshot(&sale).await.unwrap().unwrap();
    let orders = OrdersDb::connect(&db.url(), None).await.unwrap();
    let rows = orders.rows_of(&sale).await.unwrap();
    let report = audit_sale(&snap.view, &snap.reservations, Some(&rows));
    (!report.passed()).then(|| report.violations.join("\n"))
}

async fn converges(store: &RedisStore, db: &TestDb, sale: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let Some(violations) = audit(store, db, sale).await else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "rows did not converge in {within:?}: {violations}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Commits `n` reservations of distinct users straight through the store, in batches.
async fn reserve_many(store: &RedisStore, sale: &str, n: usize) -> Vec<Reservation> {
    let sale_id = SaleId::parse(sale).unwrap();
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let items = chunk
            .iter()
            .map(|i| ReserveItem {
                id: ReservationId::parse(&format!("r{i:025}.{sale}")).unwrap(),
                user_id: UserId::parse(&format!("u{i}")).unwrap(),
                idempotency_key: None,
            })
            .collect();
        for o in store.reserve_batch(&sale_id, items).await.unwrap().outcomes {
            match o {
                ReserveOutcome::Reserved(r) => out.push(r),
                other => panic!("{other:?}"),
            }
        }
    }
    out
}

async fn create_sale(store: &RedisStore, id: &str, total: u64, hold_seconds: u32) {
    let spec = SaleSpec::new(
        SaleId::parse(id).unwrap(),
        None,
        total,
        Some(1),
        Some(hold_seconds),
        UnixMs(0),
    )
    .unwrap();
    store.create_sale(spec).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_follow_reserve_pay_cancel_and_expire() {
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let store = redis_store(&redis).await;
    let writer = OrderWriter::start(writer_config(&redis, &db.url(), "w1"));
    let node = TestNode::start_on(config("n1"), store.clone(), TempDir::new("orders")).await;
    let c = &node.client;
    let a = c.create_sale("life", 10, json!({"hold_seconds": 2})).await;
    assert_eq!(a.status, 201);
    let mut ids = Vec::new();
    for u in ["pay", "cancel", "expire", "keep"] {
        let a = c.reserve("life", u).await;
        assert_eq!(a.status, 201);
        ids.push(a.body["reservation_id"].as_str().unwrap().to_string());
    }
    assert_eq!(c.pay(&ids[0], "pay").await.status, 200);
    assert_eq!(c.cancel(&ids[1], "cancel").await.status, 200);
    // Rows arrive for what is there now, and follow the hold that lapses (and "keep", paid
    // late but in time).
    converges(&store, &db, "life", Duration::from_secs(10)).await;
    assert_eq!(c.pay(&ids[3], "keep").await.status, 200);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            c.get(&format!("/api/v1/reservations/{}", ids[2]))
                .await
                .body["state"]
                == "expired"
        })
        .await
    );
    converges(&store, &db, "life", Duration::from_secs(10)).await;
    let states = db
        .client()
        .await
        .query("SELECT user_id, state FROM orders ORDER BY user_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{}={}", r.get::<_, &str>(0), r.get::<_, &str>(1)))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(states, "cancel=cancelled,expire=expired,keep=paid,pay=paid");
    let metrics = c.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    node.stop().await;
    writer.stop().await;
}

#[tokio::test]
async fn duplicate_and_reordered_delivery_is_harmless() {
    let db = TestDb::create().await;
    let orders = OrdersDb::connect(&db.url(), None).await.unwrap();
    let reserved = Reservation {
        id: ReservationId::parse("dup.S").unwrap(),
        sale_id: SaleId::parse("S").unwrap(),
        user_id: UserId::parse("u").unwrap(),
        state: ReservationState::Reserved,
        created_at: UnixMs(1_764_054_000_123),
        expires_at: UnixMs(1_764_054_900_123),
        paid_at: None,
        updated_at: UnixMs(1_764_054_000_123),
    };
    let paid = Reservation {
        state: ReservationState::Paid,
        paid_at: Some(UnixMs(1_764_054_001_456)),
        updated_at: UnixMs(1_764_054_001_456),
        ..reserved.clone()
    };
    orders.upsert(std::slice::from_ref(&paid)).await.unwrap();
    orders
        .upsert(std::slice::from_ref(&reserved))
        .await
        .unwrap(); // late and older: ignored
    orders.upsert(std::slice::from_ref(&paid)).await.unwrap(); // again: no change
    let rows = orders.rows_of(&SaleId::parse("S").unwrap()).await.unwrap();
    assert_eq!(
        rows,
        vec![paid],
        "one row, the later state, times to the millisecond"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_batch_leaves_nothing_unwritten_or_doubled() {
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let store = redis_store(&redis).await;
    create_sale(&store, "crash", 20_000, 900).await;
    // The orders table exists before the victim starts, so rows can be counted at once.
    drop(OrdersDb::connect(&db.url(), None).await.unwrap());
    let mut victim = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args([
            "order-writer",
            "--redis",
            &redis.url(),
            "--postgres",
            &db.url(),
        ])
        .args(["--consumer", "victim", "--metrics-listen", "127.0.0.1:0"])
        .env("TICKETRUSH_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its figures are served where it says (`--metrics-listen`).
    let metrics_url = {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut lines = BufReader::new(victim.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(l) = lines.next_line().await.unwrap() {
                if l.contains("metrics on http://") {
                    return l;
                }
            }
            panic!("order-writer ended without printing its metrics address")
        })
        .await
        .expect("the metrics address within 20 s");
        // Keep reading its stdout, so its later lines do not meet a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        line.rsplit(' ').next().unwrap().to_string()
    };
    let reserved = reserve_many(&store, "crash", 12_000).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            db.count("SELECT count(*) FROM orders").await > 0
        })
        .await,
        "the victim wrote nothing"
    );
    let text = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("node=\"victim\"} 1"), "{text}");
    let written_metric: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ticketrush_orders_rows_written_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rows_written in {text}"));
    assert!(written_metric > 0, "{text}");
    victim.start_kill().unwrap();
    let _ = victim.wait().await;
    let written = db.count("SELECT count(*) FROM orders").await;
    // A second writer takes over what the victim left pending (after its 1 s claim idle).
    let heir = OrderWriter::start(writer_config(&redis, &db.url(), "heir"));
    converges(&store, &db, "crash", Duration::from_secs(30)).await;
    assert_eq!(
        db.count("SELECT count(*) FROM orders").await,
        reserved.len() as i64
    );
    eprintln!(
        "victim wrote {written} of {} rows before SIGKILL",
        reserved.len()
    );
    heir.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_postgres_delays_rows_but_loses_none() {
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let proxy = FreezableProxy::start((db.host.clone(), db.port)).await;
    let store = redis_store(&redis).await;
    create_sale(&store, "stall", 5_000, 900).await;
    let writer = OrderWriter::start(writer_config(&redis, &db.url_via(proxy.port), "w"));
    let first = reserve_many(&store, "stall", 100).await;
    converges(&store, &db, "stall", Duration::from_secs(10)).await;

    // PostgreSQL stalls (nothing crosses the proxy) during a burst: sales go on.
    proxy.freeze(true);
    let started = Instant::now();
    let sale = SaleId::parse("stall").unwrap();
    let items: Vec<ReserveItem> = (0..2_000)
        .map(|i| ReserveItem {
            id: ReservationId::parse(&format!("b{i:025}.stall")).unwrap(),
            user_id: UserId::parse(&format!("b{i}")).unwrap(),
            idempotency_key: None,
        })
        .collect();
    for chunk in items.chunks(250) {
        store.reserve_batch(&sale, chunk.to_vec()).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "sales did not wait for PostgreSQL"
    );
    // Stalled past the writer's statement timeout, so it also has to reconnect.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        db.count("SELECT count(*) FROM orders").await,
        first.len() as i64,
        "nothing crossed the frozen proxy"
    );
    assert!(
        writer
            .stats
            .lag_entries
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    proxy.freeze(false);
    converges(&store, &db, "stall", Duration::from_secs(20)).await;
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 2_100);
    writer.stop().await;
}

async fn run_audit(redis: &RedisServer, db: &TestDb, sale: &str) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args(["audit", "--sale", sale, "--redis", &redis.url()])
        .args(["--postgres", &db.url(), "--wait-seconds", "10"])
        .env("TICKETRUSH_LOG", "warn")
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_passes_a_clean_sale_and_names_every_damaged_row() {
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let store = redis_store(&redis).await;
    create_sale(&store, "aud", 100, 900).await;
    let writer = OrderWriter::start(writer_config(&redis, &db.url(), "w"));
    let rs = reserve_many(&store, "aud", 30).await;
    let (code, out) = run_audit(&redis, &db, "aud").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASSED"), "{out}");
    writer.stop().await;

    let pg = db.client().await;
    let (gone, wrong) = (rs[3].id.as_str(), rs[7].id.as_str());
    pg.execute("DELETE FROM orders WHERE reservation_id = $1", &[&gone])
        .await
        .unwrap();
    pg.execute(
        "UPDATE orders SET state = 'paid' WHERE reservation_id = $1",
        &[&wrong],
    )
    .await
    .unwrap();
    pg.execute(
        "INSERT INTO orders SELECT 'ghost.aud', sale_id, 'nobody', state, created_at, expires_at, \
         paid_at, updated_at FROM orders LIMIT 1",
        &[],
    )
    .await
    .unwrap();
    let (code, out) = run_audit(&redis, &db, "aud").await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("reservation {gone} has no order row")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "reservation {wrong} is reserved but its order row is paid"
        )),
        "{out}"
    );
    assert!(
        out.contains("order row ghost.aud has no reservation"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_postgres_runs_its_own_writer_and_shows_its_lag() {
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let (url, pg) = (redis.url(), db.url());
    let (_node, c) = crate::crash::spawn_serve(&["--redis", &url, "--postgres", &pg]).await;
    assert_eq!(c.create_sale("own", 10, json!({})).await.status, 201);
    for u in ["a", "b", "c"] {
        assert_eq!(c.reserve("own", u).await.status, 201);
    }
    let (code, out) = run_audit(&redis, &db, "own").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("order rows 3"), "{out}");
    let metrics = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "ticketrush_orders_rows_written_total 3",
        "ticketrush_orders_lag_entries",
        "ticketrush_orders_lag_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_kept_for_writers_even_before_postgres_is_reachable() {
    let redis = RedisServer::start();
    // A node run with --postgres creates its sales with the writers' group already there.
    let with_orders = RedisStore::connect(RedisConfig {
        orders: true,
        ..RedisConfig::new(redis.url())
    })
    .await
    .unwrap();
    create_sale(&with_orders, "kept", 10, 900).await;
    let kept = ticketrush_orders::writer::backlog(
        &redis.url(),
        &Default::default(),
        &SaleId::parse("kept").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(kept, Some(1), "the sale_created event waits for a writer");

    // A sale made by a node without --postgres is attached by a writer even while its
    // PostgreSQL is unreachable (a closed port here).
    let plain = redis_store(&redis).await;
    create_sale(&plain, "later", 10, 900).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_pg = format!(
        "postgres://postgres@127.0.0.1:{}/none",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    let writer = OrderWriter::start(writer_config(&redis, &dead_pg, "early"));
    let sale = SaleId::parse("later").unwrap();
    let attached = wait_until(Duration::from_secs(10), || async {
        ticketrush_orders::writer::backlog(&redis.url(), &Default::default(), &sale)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert!(attached, "the writer did not attach without PostgreSQL");
    writer.stop().await;
}
