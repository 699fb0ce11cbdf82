//! The fair front door (docs/API.md, "Waiting room" and "Waitlist"): a queued sale's line on
//! the embedded store (its clock moved by the test) and on two nodes sharing a real Redis (real
//! time), and the waitlist on both, also across a SIGKILL of the real binary.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use ticketrush_core::UnixMs;

use ticketrush_store::{Clock, ManualClock, RedisConfig, RedisStore, Store};

use crate::crash::spawn_node;
use ticketrush_testkit::redis_server::RedisServer;
use ticketrush_testkit::{config, Client, TempDir, TestNode};

/// Buyers admitted per second in the queue tests.
const RATE: u64 = 20;
/// Buyers who join before the opening (shuffled at it) and after it (in arrival order).
const PRE: usize = 30;
const POST: usize = 250;

/// The store's clock, as the test sees and moves it.
enum Time {
    /// Redis's clock: the machine's.
    Real,
    /// The embedded store's clock, moved by the test.
    Manual(ManualClock),
}

fn wall_now() -> UnixMs {
    UnixMs(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

impl Time {
    fn now(&self) -> UnixMs {
        match self {
            Time::Real => wall_now(),
            Time::Manual(c) => c.now(),
        }
    }

    /// Lets `ms` of store time pass.
    async fn pass(&self, ms: i64) {
        match self {
            Time::Real => tokio::time::sleep(Duration::from_millis(ms.max(0) as u64)).await,
            Time::Manual(c) => c.advance(Duration::from_millis(ms.max(0) as u64)),
        }
    }

    async fn until(&self, t: UnixMs) {
        let left = t.0 - self.now().0;
        self.pass(left).await;
    }
}

async fn redis_nodes(redis: &RedisServer, names: &[&str]) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for name in names {
        let store: Arc<dyn Store> = Arc::new(
            RedisStore::connect(RedisConfig::new(redis.url()))
                .await
                .expect("connect to the test's redis"),
        );
        nodes.push(TestNode::start_on(config(name), store, TempDir::new("fd-node")).await);
    }
    nodes
}

struct Place {
    user: String,
    queue_id: String,
}

/// Spearman's rank correlation of a permutation against 0..n.
fn spearman(ranks: &[usize]) -> f64 {
    let n = ranks.len() as f64;
    let d2: f64 = ranks
        .iter()
        .enumerate()
        .map(|(i, r)| (i as f64 - *r as f64).powi(2))
        .sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

/// How many places of `line` are admitted: admission is a prefix of the line (checked by the
/// sweeps), so a binary search over it.
async fn admitted_count(clients: &[Client], sale: &str, line: &[Place]) -> usize {
    let (mut lo, mut hi) = (0, line.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        let a = clients[mid % clients.len()]
            .queue_entry(sale, &line[mid].queue_id)
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        if a.body["admitted"] == true {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The whole waiting-room contract on `clients` (nodes of one store) with the store's clock
/// `time`.
async fn queue_scenario(sale: &str, clients: &[Client], time: &Time) {
    let c0 = &clients[0];
    let opens = time.now().plus_ms(3_000);
    let created = c0
        .create_sale(
            sale,
            10_000,
            json!({"opens_at": opens.to_rfc3339(), "queue": {"admit_per_second": RATE}}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["queue"]["admit_per_second"], RATE);
    assert!(created.body["queue"].get("secret").is_none());
    // Bad input, each with its code.
    let bad = c0
        .post(&format!("/api/v1/sales/{sale}/queue"), json!({}))
        .await;
    assert_eq!((bad.status, bad.error()), (400, "invalid_request"));
    let bad = c0.queue_entry(sale, "no!such").await;
    assert_eq!((bad.status, bad.error()), (404, "queue_entry_not_found"));
    let bad = c0.queue_entry(sale, "0000000000000000000000000a").await;
    assert_eq!((bad.status, bad.error()), (404, "queue_entry_not_found"));
    let bad = c0.join_queue("no-such-sale", "u").await;
    assert_eq!((bad.status, bad.error()), (404, "sale_not_found"));
    let bad = c0
        .create_sale(
            &format!("{sale}-bad"),
            1,
            json!({"queue": {"admit_per_second": 0}}),
        )
        .await;
    assert_eq!((bad.status, bad.error()), (400, "invalid_request"));
    assert_eq!(
        c0.create_sale(&format!("{sale}-plain"), 1, json!({}))
            .await
            .status,
        201
    );
    let plain = c0.join_queue(&format!("{sale}-plain"), "u").await;
    assert_eq!((plain.status, plain.error()), (409, "no_queue"));

    // The pre-queue: no place yet, everyone present once.
    let mut pre = Vec::new();
    for i in 0..PRE {
        let user = format!("pre-{i}");
        let a = clients[i % clients.len()].join_queue(sale, &user).await;
        assert_eq!(a.status, 202, "{a:?}");
        assert!(a.body["position"].is_null(), "{a:?}");
        assert_eq!(a.body["admitted"], false);
        assert_eq!(a.body["queue_size"], i as u64 + 1);
        pre.push(Place {
            user,
            queue_id: a.body["queue_id"].as_str().unwrap().to_string(),
        });
    }
    let again = clients[1 % clients.len()].join_queue(sale, "pre-0").await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(
        again.body["queue_id"].as_str(),
        Some(pre[0].queue_id.as_str())
    );
    let early = c0.reserve(sale, "pre-0").await;
    assert_eq!((early.status, early.error()), (403, "not_admitted"));

    time.until(opens.plus_ms(1)).await;
    // Later arrivals go behind everyone, in arrival order.
    let mut post = Vec::new();
    for i in 0..POST {
        let user = format!("post-{i}");
        let a = clients[i % clients.len()].join_queue(sale, &user).await;
        assert_eq!(a.status, 202, "{a:?}");
        assert_eq!(a.body["queue_size"], (PRE + i + 1) as u64);
        post.push(Place {
            user,
            queue_id: a.body["queue_id"].as_str().unwrap().to_string(),
        });
    }
    // The line: the pre-queue in the order of its ids (random, made by the nodes), then the
    // later arrivals as they came. The shuffle owes nothing to the join order.
    let mut shuffled: Vec<(String, usize)> = pre
        .iter()
        .enumerate()
        .map(|(i, p)| (p.queue_id.clone(), i))
        .collect();
    shuffled.sort();
    let joined_at: Vec<usize> = shuffled.iter().map(|(_, i)| *i).collect();
    assert_eq!(
        joined_at.iter().copied().collect::<HashSet<_>>().len(),
        PRE,
        "every pre-queue joiner exactly once"
    );
    let rho = spearman(&joined_at);
    assert!(
        rho.abs() < 0.7,
        "the pre-queue's order follows the join order (rank correlation {rho:.2})"
    );
    let mut line: Vec<Place> = Vec::new();
    let mut by_id: HashMap<String, Place> =
        pre.into_iter().map(|p| (p.queue_id.clone(), p)).collect();
    for (id, _) in &shuffled {
        line.push(by_id.remove(id).unwrap());
    }
    line.extend(post);

    // Sweeps from the back of the line: once a place is seen admitted, every place ahead of it
    // (asked later) must be admitted too; positions never move back. Meanwhile the admission
    // rate is measured over 10 s.
    let t1 = opens.plus_ms(1_000);
    let t2 = t1.plus_ms(10_000);
    let mut rate_marks: Vec<(UnixMs, usize)> = Vec::new();
    let mut last_position: Vec<u64> = vec![u64::MAX; line.len()];
    let mut tokens: Vec<Option<String>> = vec![None; line.len()];
    let started = Instant::now();
    loop {
        let mut seen_admitted = false;
        let mut all = true;
        for k in (0..line.len()).rev() {
            let a = clients[k % clients.len()]
                .queue_entry(sale, &line[k].queue_id)
                .await;
            assert_eq!(a.status, 200, "{a:?}");
            assert_eq!(a.body["user_id"].as_str(), Some(line[k].user.as_str()));
            let admitted = a.body["admitted"] == true;
            let position = a.body["position"]
                .as_u64()
                .expect("a place after the opening");
            assert!(
                position <= last_position[k],
                "place {k} moved back from {} to {position}",
                last_position[k]
            );
            last_position[k] = position;
            if seen_admitted {
                assert!(
                    admitted,
                    "place {k} not admitted while a place behind it is"
                );
            }
            if admitted {
                seen_admitted = true;
                assert_eq!(position, 0);
                let token = a.body["admission_token"]
                    .as_str()
                    .expect("a token")
                    .to_string();
                tokens[k].get_or_insert(token);
            } else {
                all = false;
                assert!(position >= 1);
            }
        }
        let next_mark = [t1, t2].get(rate_marks.len()).copied();
        if next_mark.is_some_and(|t| time.now() >= t) {
            let at = time.now();
            rate_marks.push((at, admitted_count(clients, sale, &line).await));
        }
        if all {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the line was not admitted within a minute"
        );
        if let Time::Manual(_) = time {
            time.pass(250).await;
        }
    }
    // The rate held: over 10 s (measured on the store's clock), RATE a second within 3 %.
    let [(a_at, a_n), (b_at, b_n)] = rate_marks[..] else {
        panic!("the rate was not measured: {rate_marks:?}");
    };
    let secs = (b_at.0 - a_at.0) as f64 / 1000.0;
    let measured = (b_n - a_n) as f64 / secs;
    // Each mark is taken after a sweep, so it may come a sweep late; the rate is over the
    // interval actually measured.
    assert!(secs >= 9.0, "{secs}");
    assert!(
        (measured - RATE as f64).abs() <= 0.03 * RATE as f64,
        "admitted {measured:.2}/s, not {RATE}/s ({a_n} at {a_at:?}, {b_n} at {b_at:?})"
    );

    // The line has drained. Newcomers are admitted at the rate from now on, not in a burst of
    // the admissions nobody used while the line was empty.
    let t_first = time.now();
    let mut fresh = Vec::new();
    for i in 0..30 {
        let a = clients[i % clients.len()]
            .join_queue(sale, &format!("late-{i}"))
            .await;
        assert_eq!(a.status, 202, "{a:?}");
        fresh.push(a.body["queue_id"].as_str().unwrap().to_string());
    }
    let admitted_now = |elapsed: i64, n: usize| {
        assert!(
            n as i64 <= 2 + RATE as i64 * elapsed / 1000,
            "{n} of 30 newcomers admitted {elapsed} ms after they came: a burst"
        );
    };
    let count = |fresh: Vec<String>| async move {
        let mut n = 0;
        for (k, id) in fresh.iter().enumerate() {
            if clients[k % clients.len()].queue_entry(sale, id).await.body["admitted"] == true {
                n += 1;
            }
        }
        n
    };
    let n0 = count(fresh.clone()).await;
    admitted_now(time.now().0 - t_first.0, n0);
    assert!(n0 >= 1, "the first newcomer after a drained line waits");
    time.pass(1_000).await;
    let n1 = count(fresh.clone()).await;
    admitted_now(time.now().0 - t_first.0, n1);
    assert!(
        n1 as u64 >= RATE - 2,
        "{n1} newcomers admitted after a second at {RATE}/s"
    );

    // Reserving: the token of this user only.
    let first = &line[0];
    let own = tokens[0].clone().unwrap();
    let other = tokens[1].clone().unwrap();
    let c1 = &clients[1 % clients.len()];
    for (token, why) in [
        (None, "without a token"),
        (Some(other.clone()), "with another user's token"),
        (Some(forge(&own)), "with a forged token"),
        (Some("garbage".to_string()), "with a malformed token"),
    ] {
        let a = match &token {
            None => c1.reserve(sale, &first.user).await,
            Some(t) => c1.reserve_admitted(sale, &first.user, t).await,
        };
        assert_eq!((a.status, a.error()), (403, "not_admitted"), "{why}: {a:?}");
        if why.contains("forged") || why.contains("another") {
            assert!(
                a.body["message"].as_str().unwrap().contains("not issued"),
                "{why}: {a:?}"
            );
        }
    }
    let bought = c1.reserve_admitted(sale, &first.user, &own).await;
    assert_eq!(bought.status, 201, "{bought:?}");
    let (available, reserved, _, _) = c0.counts(sale).await;
    assert_eq!(
        (available, reserved),
        (9_999, 1),
        "only the admitted buyer reserved"
    );
}

/// The token with a character in the middle of its signature changed (still valid base64).
fn forge(token: &str) -> String {
    let (expiry, tag) = token.split_once('.').unwrap();
    let mut tag: Vec<char> = tag.chars().collect();
    let mid = tag.len() / 2;
    tag[mid] = if tag[mid] == 'A' { 'B' } else { 'A' };
    format!("{expiry}.{}", tag.into_iter().collect::<String>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_room_on_the_embedded_store() {
    let clock = ManualClock::starting_now();
    let node = TestNode::start_with_clock(config("fd-embedded"), clock.clone()).await;
    let clients = [node.client.clone()];
    let time = Time::Manual(clock.clone());
    queue_scenario("wr", &clients, &time).await;
    // An admission lapses 10 minutes after it began: its token is refused, and joining again
    // puts the buyer at the back of the line.
    let sale = "wr";
    let a = node.client.join_queue(sale, "post-5").await;
    assert_eq!(a.status, 200);
    let token = a.body["admission_token"].as_str().unwrap().to_string();
    clock.advance(Duration::from_secs(10 * 60 + 1));
    let late = node.client.reserve_admitted(sale, "post-5", &token).await;
    assert_eq!(
        (late.status, late.error()),
        (403, "not_admitted"),
        "{late:?}"
    );
    assert!(late.body["message"].as_str().unwrap().contains("expired"));
    let lapsed = node
        .client
        .queue_entry(sale, a.body["queue_id"].as_str().unwrap())
        .await;
    assert_eq!(lapsed.body["admitted"], true);
    assert!(lapsed.body.get("admission_token").is_none(), "{lapsed:?}");
    let rejoined = node.client.join_queue(sale, "post-5").await;
    assert_eq!(rejoined.status, 202, "{rejoined:?}");
    assert_ne!(rejoined.body["queue_id"], a.body["queue_id"]);
    // Nobody waits any more: the new place is admitted at once, with a token that works.
    assert_eq!(rejoined.body["admitted"], true, "{rejoined:?}");
    let token = rejoined.body["admission_token"].as_str().unwrap();
    let bought = node.client.reserve_admitted(sale, "post-5", token).await;
    assert_eq!(bought.status, 201, "{bought:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_room_on_two_nodes_sharing_redis() {
    let redis = RedisServer::start();
    let nodes = redis_nodes(&redis, &["fd-a", "fd-b"]).await;
    let clients: Vec<Client> = nodes.iter().map(|n| n.client.clone()).collect();
    queue_scenario("wr", &clients, &Time::Real).await;
    // An expired token, signed with the sale's real key (read from Redis), is refused.
    let spec = redis.cli(&["HGET", "{sale:wr}:sale", "spec"]);
    let spec: ticketrush_core::SaleSpec = serde_json::from_str(spec.trim()).unwrap();
    let q = spec.queue.as_ref().unwrap();
    let user = ticketrush_core::UserId::parse("post-7").unwrap();
    let past = UnixMs(wall_now().0 - 1);
    let expired = ticketrush_server::admission::issue(q, &spec.id, &user, past);
    let fresh = ticketrush_server::admission::issue(q, &spec.id, &user, past.plus_ms(60_000));
    let a = clients[1].reserve_admitted("wr", "post-7", &expired).await;
    assert_eq!((a.status, a.error()), (403, "not_admitted"), "{a:?}");
    assert!(a.body["message"].as_str().unwrap().contains("expired"));
    // The same key and user a minute later is what a node issues: accepted (the key is right).
    let ok = clients[0].reserve_admitted("wr", "post-7", &fresh).await;
    assert_eq!(ok.status, 201, "{ok:?}");
    for n in nodes {
        n.stop().await;
    }
}

// ----- the waitlist -----

/// Hammers `sale` with new buyers until `stop`; counts the tickets they got (must stay 0).
fn hammer(
    clients: &[Client],
    sale: &str,
    stop: &Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, Vec<tokio::task::JoinHandle<()>>) {
    let won = Arc::new(AtomicUsize::new(0));
    let tasks = (0..4)
        .map(|w| {
            let (c, sale, stop, won) = (
                clients[w % clients.len()].clone(),
                sale.to_string(),
                stop.clone(),
                won.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let a = c.reserve(&sale, &format!("rush-{w}-{i}")).await;
                    if a.status == 201 {
                        won.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert_eq!(a.error(), "sold_out", "{a:?}");
                    }
                    i += 1;
                }
            })
        })
        .collect();
    (won, tasks)
}

/// The waitlist's answer for `id` once it is `state`, within 2 s.
async fn waitlist_state(c: &Client, sale: &str, id: &str, state: &str) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let a = c.waitlist_entry(sale, id).await;
        assert_eq!(a.status, 200, "{a:?}");
        if a.body["state"] == state {
            return a.body;
        }
        assert!(
            Instant::now() < end,
            "waitlist entry {id} not {state} within 2 s: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three buyers wait; one hold is cancelled and one expires: the first two waiting buyers
/// hold the tickets within 2 s, the third still waits, and the rush of other buyers meanwhile
/// gets none.
async fn waitlist_scenario(sale: &str, clients: &[Client], time: &Time) {
    let c0 = &clients[0];
    let created = c0
        .create_sale(sale, 2, json!({"hold_seconds": 8, "per_user_limit": 1}))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let a = c0.reserve(sale, "a").await;
    assert_eq!(a.status, 201);
    let early = c0.join_waitlist(sale, "x").await;
    assert_eq!((early.status, early.error()), (409, "not_sold_out"));
    let b = clients[1 % clients.len()].reserve(sale, "b").await;
    assert_eq!(b.status, 201);
    let at_limit = c0.join_waitlist(sale, "a").await;
    assert_eq!((at_limit.status, at_limit.error()), (409, "limit_reached"));
    let bad = c0.waitlist_entry(sale, "nope!").await;
    assert_eq!((bad.status, bad.error()), (404, "waitlist_entry_not_found"));
    let mut ids = Vec::new();
    for (i, user) in ["x", "y", "z"].iter().enumerate() {
        let w = clients[i % clients.len()].join_waitlist(sale, user).await;
        assert_eq!(w.status, 201, "{w:?}");
        assert_eq!(w.body["position"], i as u64 + 1);
        assert_eq!(w.body["state"], "waiting");
        ids.push(w.body["waitlist_id"].as_str().unwrap().to_string());
    }
    let again = c0.join_waitlist(sale, "y").await;
    assert_eq!(
        (again.status, again.body["waitlist_id"].as_str()),
        (200, Some(ids[1].as_str()))
    );
    let b_due = UnixMs::parse_rfc3339(b.body["expires_at"].as_str().unwrap()).unwrap();
    // x's hold, made at the cancel, will fall due 4 s after b's.
    time.pass(4_000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (won, rush) = hammer(clients, sale, &stop);
    // A cancel: x holds the ticket.
    let a_id = a.body["reservation_id"].as_str().unwrap();
    assert_eq!(
        clients[1 % clients.len()].cancel(a_id, "a").await.status,
        200
    );
    let x = waitlist_state(c0, sale, &ids[0], "offered").await;
    let rid = x["reservation_id"].as_str().unwrap().to_string();
    let r = c0.get(&format!("/api/v1/reservations/{rid}")).await;
    assert_eq!(
        (r.body["user_id"].as_str(), r.body["state"].as_str()),
        (Some("x"), Some("reserved"))
    );
    let y = c0.waitlist_entry(sale, &ids[1]).await;
    assert_eq!(
        (y.body["state"].as_str(), y.body["position"].as_u64()),
        (Some("waiting"), Some(1))
    );
    // An expiry (b's hold of 8 s): y holds the ticket.
    time.until(b_due.plus_ms(100)).await;
    let y = waitlist_state(&clients[1 % clients.len()], sale, &ids[1], "offered").await;
    let rid_y = y["reservation_id"].as_str().unwrap();
    assert_eq!(c0.pay(rid_y, "y").await.status, 200);
    let z = c0.waitlist_entry(sale, &ids[2]).await;
    assert_eq!(
        (z.body["state"].as_str(), z.body["position"].as_u64()),
        (Some("waiting"), Some(1))
    );
    stop.store(true, Ordering::Relaxed);
    for t in rush {
        t.await.unwrap();
    }
    assert_eq!(
        won.load(Ordering::Relaxed),
        0,
        "a rushing buyer took a freed ticket"
    );
    let (available, reserved, paid, total) = c0.counts(sale).await;
    assert_eq!((available, reserved + paid, total), (0, 2, 2));
    // z withdraws: then a freed ticket goes back on sale.
    let w = c0
        .post(
            &format!("/api/v1/sales/{sale}/waitlist/{}/withdraw", ids[2]),
            json!({"user_id": "y"}),
        )
        .await;
    assert_eq!((w.status, w.error()), (403, "forbidden"));
    let w = c0
        .post(
            &format!("/api/v1/sales/{sale}/waitlist/{}/withdraw", ids[2]),
            json!({"user_id": "z"}),
        )
        .await;
    assert_eq!(
        (w.status, w.body["state"].as_str()),
        (200, Some("withdrawn"))
    );
    assert_eq!(c0.cancel(&rid, "x").await.status, 200);
    assert_eq!(c0.counts(sale).await.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waitlist_on_the_embedded_store() {
    let clock = ManualClock::starting_now();
    let node = TestNode::start_with_clock(config("wl-embedded"), clock.clone()).await;
    waitlist_scenario(
        "wl",
        std::slice::from_ref(&node.client),
        &Time::Manual(clock),
    )
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waitlist_on_two_nodes_sharing_redis() {
    let redis = RedisServer::start();
    let nodes = redis_nodes(&redis, &["wl-a", "wl-b"]).await;
    let clients: Vec<Client> = nodes.iter().map(|n| n.client.clone()).collect();
    waitlist_scenario("wl", &clients, &Time::Real).await;
    for n in nodes {
        n.stop().await;
    }
}

/// The real binary, killed with SIGKILL right after a cancel is acknowledged, and again while
/// a hold is due but not yet expired: after each restart the first waiting buyer holds the
/// ticket, and nobody else got it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waitlist_offer_survives_sigkill() {
    let dir = TempDir::new("wl-crash");
    let (mut child, c) = spawn_node(&dir.0).await;
    assert_eq!(
        c.create_sale("wk", 1, json!({"hold_seconds": 4}))
            .await
            .status,
        201
    );
    let a = c.reserve("wk", "a").await;
    assert_eq!(a.status, 201);
    let x = c.join_waitlist("wk", "x").await;
    let y = c.join_waitlist("wk", "y").await;
    assert_eq!((x.status, y.status), (201, 201));
    let (x_id, y_id) = (
        x.body["waitlist_id"].as_str().unwrap().to_string(),
        y.body["waitlist_id"].as_str().unwrap().to_string(),
    );
    // The cancel is acknowledged, then the node dies at once.
    assert_eq!(
        c.cancel(a.body["reservation_id"].as_str().unwrap(), "a")
            .await
            .status,
        200
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let (mut child, c) = spawn_node(&dir.0).await;
    let x = waitlist_state(&c, "wk", &x_id, "offered").await;
    let rid = x["reservation_id"].as_str().unwrap().to_string();
    let r = c.get(&format!("/api/v1/reservations/{rid}")).await;
    assert_eq!(
        (r.body["user_id"].as_str(), r.body["state"].as_str()),
        (Some("x"), Some("reserved"))
    );
    let deadline = UnixMs::parse_rfc3339(r.body["expires_at"].as_str().unwrap()).unwrap();
    // x's hold falls due while the node is dead.
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let left = deadline.0 - wall_now().0 + 100;
    tokio::time::sleep(Duration::from_millis(left.max(0) as u64)).await;
    let (mut child, c) = spawn_node(&dir.0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (won, rush) = hammer(std::slice::from_ref(&c), "wk", &stop);
    let y = waitlist_state(&c, "wk", &y_id, "offered").await;
    let rid_y = y["reservation_id"].as_str().unwrap();
    assert_eq!(c.pay(rid_y, "y").await.status, 200);
    stop.store(true, Ordering::Relaxed);
    for t in rush {
        t.await.unwrap();
    }
    assert_eq!(won.load(Ordering::Relaxed), 0);
    let r = c.get(&format!("/api/v1/reservations/{rid}")).await;
    assert_eq!(r.body["state"], "expired");
    assert_eq!(c.counts("wk").await, (0, 0, 1, 1));
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
