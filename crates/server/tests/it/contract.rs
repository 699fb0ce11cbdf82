//! Contract tests: every status and error code docs/API.md gives, against a real node over HTTP.
//!
//! Each test starts its own node (own data dir, own port) and ends by checking the sale's
//! invariant `available + reserved + paid == total`.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use ticketrush_core::{SaleId, UnixMs};
use ticketrush_store::{Clock, ManualClock};

use ticketrush_testkit::{config, wait_until, Answer, Client, TestNode, ADMIN_TOKEN};

// ----- helpers -----

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Parses an RFC 3339 field, failing the test if it is not one.
fn time_ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert!(s.ends_with('Z'), "times are in UTC: {s}");
    UnixMs::parse_rfc3339(s)
        .unwrap_or_else(|e| panic!("not RFC 3339: {s}: {e}"))
        .0
}

fn rid(a: &Answer) -> String {
    a.body["reservation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no reservation_id: {a:?}"))
        .to_string()
}

/// Asserts an error answer: status, `{"error": code, "message": sentence}`.
#[track_caller]
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(a.error(), code, "{a:?}");
    let msg = a.body["message"].as_str().unwrap_or("");
    assert!(!msg.is_empty(), "an error carries a message: {a:?}");
}

/// The sale's counts add up to its total; answers (available, reserved, paid).
async fn invariant(c: &Client, sale: &str) -> (u64, u64, u64) {
    let (a, r, p, t) = c.counts(sale).await;
    assert_eq!(
        a + r + p,
        t,
        "{sale}: available {a} + reserved {r} + paid {p} != total {t}"
    );
    (a, r, p)
}

async fn assert_counts(c: &Client, sale: &str, want: (u64, u64, u64)) {
    assert_eq!(
        invariant(c, sale).await,
        want,
        "{sale}: (available, reserved, paid)"
    );
}

async fn create(c: &Client, id: &str, total: u64, extra: Value) {
    let a = c.create_sale(id, total, extra).await;
    assert_eq!(a.status, 201, "{a:?}");
}

async fn reserved(c: &Client, sale: &str, user: &str) -> String {
    let a = c.reserve(sale, user).await;
    assert_eq!(a.status, 201, "{a:?}");
    rid(&a)
}

async fn get_reservation(c: &Client, id: &str) -> Answer {
    c.get(&format!("/api/v1/reservations/{id}")).await
}

/// A node whose store's clock the test moves (see `TestNode::start_with_clock`).
async fn node_with_clock() -> (TestNode, ManualClock) {
    let clock = ManualClock::starting_now();
    (
        TestNode::start_with_clock(config("clock-node"), clock.clone()).await,
        clock,
    )
}

/// Moves `clock` past `expires_at` and waits (2 s, the contract's bound, in real time: the
/// reaper runs every 250 ms) for each hold to read `expired`.
async fn expire_by_clock(c: &Client, clock: &ManualClock, holds: &[(String, i64)]) {
    let latest = holds.iter().map(|(_, e)| *e).max().unwrap_or(0);
    let ahead = (latest + 1 - clock.now().0).max(0) as u64;
    clock.advance(Duration::from_millis(ahead));
    for (id, _) in holds {
        let path = format!("/api/v1/reservations/{id}");
        let path = &path;
        let ok = wait_until(Duration::from_secs(2), || async move {
            c.get(path).await.body["state"] == "expired"
        })
        .await;
        assert!(
            ok,
            "hold {id} not expired within 2 s of the clock passing expires_at"
        );
    }
}

// ----- sales -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sale_answers_201_with_the_sale_object_and_contract_defaults() {
    let node = TestNode::start().await;
    let c = &node.client;
    let before = now_ms();
    let a = c.create_sale("G1234-20270128-2nd", 10_000, json!({})).await;
    assert_eq!(a.status, 201, "{a:?}");
    let s = &a.body;
    assert_eq!(s["id"], "G1234-20270128-2nd");
    assert!(s["name"].is_string(), "{s}");
    assert_eq!(s["total"], 10_000);
    assert_eq!(s["available"], 10_000);
    assert_eq!(s["reserved"], 0);
    assert_eq!(s["paid"], 0);
    assert_eq!(s["per_user_limit"], 1);
    assert_eq!(s["hold_seconds"], 900);
    let opens = time_ms(&s["opens_at"]);
    assert!(
        (before - 2_000..=now_ms() + 2_000).contains(&opens),
        "opens_at defaults to now: {s}"
    );
    assert_eq!(
        a.headers["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_counts(c, "G1234-20270128-2nd", (10_000, 0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sale_keeps_every_given_field() {
    let node = TestNode::start().await;
    let c = &node.client;
    let a = c
        .create_sale(
            "G1-full",
            500,
            json!({"name": "G1 Beijing-Shanghai 2nd class", "per_user_limit": 4,
                   "hold_seconds": 60, "opens_at": "2027-01-01T09:00:00+01:00"}),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let want = json!({"id": "G1-full", "name": "G1 Beijing-Shanghai 2nd class", "total": 500,
        "available": 500, "reserved": 0, "paid": 0, "per_user_limit": 4, "hold_seconds": 60,
        "opens_at": "2027-01-01T08:00:00.000Z"});
    assert_eq!(a.body, want);
    let g = c.get("/api/v1/sales/G1-full").await;
    assert_eq!(g.status, 200, "{g:?}");
    assert_eq!(g.body, want, "GET answers what POST created");
    // The bounds themselves are accepted.
    for (id, total, extra) in [
        ("max-total", 1_000_000_000, json!({})),
        ("hold-1", 1, json!({"hold_seconds": 1})),
        ("hold-86400", 1, json!({"hold_seconds": 86_400})),
        ("a:b.c_d-E", 1, json!({})),
    ] {
        let a = c.create_sale(id, total, extra).await;
        assert_eq!(a.status, 201, "{id}: {a:?}");
    }
    let id64 = "x".repeat(64);
    create(c, &id64, 1, json!({})).await;
    assert_counts(c, "max-total", (1_000_000_000, 0, 0)).await;
    assert_counts(c, "G1-full", (500, 0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sale_refuses_values_out_of_range_with_invalid_request() {
    let node = TestNode::start().await;
    let c = &node.client;
    let cases = [
        ("total 0", json!({"id": "s1", "total": 0})),
        (
            "total above 1e9",
            json!({"id": "s1", "total": 1_000_000_001u64}),
        ),
        (
            "hold_seconds 0",
            json!({"id": "s1", "total": 1, "hold_seconds": 0}),
        ),
        (
            "hold_seconds 86401",
            json!({"id": "s1", "total": 1, "hold_seconds": 86_401}),
        ),
        (
            "per_user_limit 0",
            json!({"id": "s1", "total": 1, "per_user_limit": 0}),
        ),
        (
            "opens_at not a date",
            json!({"id": "s1", "total": 1, "opens_at": "tomorrow"}),
        ),
        (
            "opens_at a date only",
            json!({"id": "s1", "total": 1, "opens_at": "2027-01-01"}),
        ),
        (
            "opens_at month 13",
            json!({"id": "s1", "total": 1, "opens_at": "2027-13-01T00:00:00Z"}),
        ),
        ("id with a space", json!({"id": "s 1", "total": 1})),
        ("id with a slash", json!({"id": "s/1", "total": 1})),
        ("id empty", json!({"id": "", "total": 1})),
        (
            "id of 65 characters",
            json!({"id": "x".repeat(65), "total": 1}),
        ),
        ("id missing", json!({"total": 1})),
        ("total missing", json!({"id": "s1"})),
    ];
    for (what, body) in cases {
        let a = c.admin_post_sale(&body).await;
        assert_eq!(a.status, 400, "{what}: {a:?}");
        assert_error(&a, 400, "invalid_request");
    }
    let list = c.get("/api/v1/sales").await;
    assert_eq!(list.body, json!({"sales": []}), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sale_without_the_admin_token_is_401_and_creates_nothing() {
    let node = TestNode::start().await;
    let c = &node.client;
    let url = format!("{}/api/v1/sales", c.base);
    let body = json!({"id": "s1", "total": 10});
    let attempts = [
        ("no token", c.http.post(&url).json(&body)),
        (
            "wrong token",
            c.http.post(&url).bearer_auth("not-the-token").json(&body),
        ),
        (
            "token with a suffix",
            c.http
                .post(&url)
                .bearer_auth(format!("{ADMIN_TOKEN}x"))
                .json(&body),
        ),
        (
            "empty bearer",
            c.http
                .post(&url)
                .header("Authorization", "Bearer ")
                .json(&body),
        ),
        (
            "basic auth",
            c.http
                .post(&url)
                .basic_auth("admin", Some(ADMIN_TOKEN))
                .json(&body),
        ),
        (
            "token without Bearer",
            c.http
                .post(&url)
                .header("Authorization", ADMIN_TOKEN)
                .json(&body),
        ),
    ];
    for (what, req) in attempts {
        let a = c.send(req).await;
        assert_eq!(a.status, 401, "{what}: {a:?}");
        assert_error(&a, 401, "unauthorized");
    }
    // The token is checked before the body: a bad body without a token is still 401.
    let a = c.send(c.http.post(&url).body("garbage")).await;
    assert_error(&a, 401, "unauthorized");
    assert_error(&c.get("/api/v1/sales/s1").await, 404, "sale_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sale_twice_is_409_sale_exists_and_keeps_the_first() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "dup", 10, json!({"hold_seconds": 30})).await;
    reserved(c, "dup", "u1").await;
    let a = c.create_sale("dup", 99, json!({"hold_seconds": 60})).await;
    assert_error(&a, 409, "sale_exists");
    let g = c.get("/api/v1/sales/dup").await;
    assert_eq!(g.body["total"], 10);
    assert_eq!(g.body["hold_seconds"], 30);
    assert_counts(c, "dup", (9, 1, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sale_is_200_or_404_and_list_shows_every_sale() {
    let node = TestNode::start().await;
    let c = &node.client;
    assert_eq!(c.get("/api/v1/sales").await.body, json!({"sales": []}));
    create(c, "a1", 3, json!({})).await;
    create(c, "b2", 5, json!({"per_user_limit": 2})).await;
    let a = c.get("/api/v1/sales/a1").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["id"], "a1");
    assert_eq!(a.body["total"], 3);
    assert_error(&c.get("/api/v1/sales/nope").await, 404, "sale_not_found");
    reserved(c, "b2", "u1").await;
    let list = c.get("/api/v1/sales").await;
    assert_eq!(list.status, 200, "{list:?}");
    let sales = list.body["sales"].as_array().expect("sales is an array");
    let mut ids: Vec<&str> = sales.iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a1", "b2"]);
    let b2 = sales.iter().find(|s| s["id"] == "b2").unwrap();
    assert_eq!((&b2["available"], &b2["reserved"]), (&json!(4), &json!(1)));
    for s in sales {
        for k in [
            "name",
            "total",
            "available",
            "reserved",
            "paid",
            "per_user_limit",
            "hold_seconds",
            "opens_at",
        ] {
            assert!(!s[k].is_null(), "listed sale lacks {k}: {s}");
        }
    }
    assert_counts(c, "a1", (3, 0, 0)).await;
    assert_counts(c, "b2", (4, 1, 0)).await;
}

// ----- reservations -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_answers_201_with_a_hold_of_hold_seconds() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "r1", 10, json!({"hold_seconds": 120})).await;
    let before = now_ms();
    let a = c.reserve("r1", "u-42").await;
    let after = now_ms();
    assert_eq!(a.status, 201, "{a:?}");
    let r = &a.body;
    let id = rid(&a);
    assert!(
        id.len() >= 20,
        "reservation ids carry >= 96 random bits: {id}"
    );
    assert_eq!(r["sale_id"], "r1");
    assert_eq!(r["user_id"], "u-42");
    assert_eq!(r["state"], "reserved");
    assert!(r.get("paid_at").is_none(), "no paid_at before paying: {r}");
    let exp = time_ms(&r["expires_at"]);
    assert!(
        (before + 120_000 - 1_000..=after + 120_000 + 1_000).contains(&exp),
        "expires_at is hold_seconds ahead: {r}"
    );
    // GET answers the same reservation.
    let g = get_reservation(c, &id).await;
    assert_eq!(g.status, 200, "{g:?}");
    assert_eq!(g.body, a.body);
    // Ids are distinct and opaque.
    let mut ids = vec![id];
    for u in 0..5 {
        ids.push(reserved(c, "r1", &format!("u{u}")).await);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    assert_counts(c, "r1", (4, 6, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_with_the_same_idempotency_key_answers_200_with_the_same_reservation() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "idem", 10, json!({"per_user_limit": 5})).await;
    let first = c.reserve_with_key("idem", "u1", "order-1").await;
    assert_eq!(first.status, 201, "{first:?}");
    for _ in 0..3 {
        let again = c.reserve_with_key("idem", "u1", "order-1").await;
        assert_eq!(again.status, 200, "{again:?}");
        assert_eq!(again.body, first.body, "same reservation");
    }
    assert_counts(c, "idem", (9, 1, 0)).await;
    // Same key, another user: a new reservation.
    let other = c.reserve_with_key("idem", "u2", "order-1").await;
    assert_eq!(other.status, 201, "{other:?}");
    assert_ne!(rid(&other), rid(&first));
    // Same user, another key: a new reservation (the limit allows it).
    let second = c.reserve_with_key("idem", "u1", "order-2").await;
    assert_eq!(second.status, 201, "{second:?}");
    assert_ne!(rid(&second), rid(&first));
    // Without a key, every request is a new attempt.
    reserved(c, "idem", "u1").await;
    assert_counts(c, "idem", (6, 4, 0)).await;
    // Same key and user on another sale: a new reservation there.
    create(c, "idem-2", 1, json!({})).await;
    let elsewhere = c.reserve_with_key("idem-2", "u1", "order-1").await;
    assert_eq!(elsewhere.status, 201, "{elsewhere:?}");
    assert_eq!(elsewhere.body["sale_id"], "idem-2");
    // Replays still answer 200 once the sale is sold out.
    let sold_out = c.reserve("idem-2", "u9").await;
    assert_error(&sold_out, 409, "sold_out");
    let replay = c.reserve_with_key("idem-2", "u1", "order-1").await;
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.body, elsewhere.body);
    // A paid reservation replays in its current state.
    assert_eq!(c.pay(&rid(&first), "u1").await.status, 200);
    let replay = c.reserve_with_key("idem", "u1", "order-1").await;
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.body["reservation_id"], first.body["reservation_id"]);
    assert_eq!(replay.body["state"], "paid");
    assert_counts(c, "idem", (6, 3, 1)).await;
    assert_counts(c, "idem-2", (0, 1, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_on_a_sold_out_sale_is_409_sold_out() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "two", 2, json!({})).await;
    reserved(c, "two", "u1").await;
    reserved(c, "two", "u2").await;
    for u in ["u3", "u4", "u3"] {
        assert_error(&c.reserve("two", u).await, 409, "sold_out");
    }
    assert_counts(c, "two", (0, 2, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_beyond_per_user_limit_is_409_limit_reached_until_a_cancel() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "lim", 10, json!({"per_user_limit": 2})).await;
    let r1 = reserved(c, "lim", "u1").await;
    let r2 = reserved(c, "lim", "u1").await;
    assert_error(&c.reserve("lim", "u1").await, 409, "limit_reached");
    // Other users are not affected.
    reserved(c, "lim", "u2").await;
    assert_counts(c, "lim", (7, 3, 0)).await;
    // A cancel frees a slot.
    assert_eq!(c.cancel(&r1, "u1").await.status, 200);
    let r3 = reserved(c, "lim", "u1").await;
    assert_error(&c.reserve("lim", "u1").await, 409, "limit_reached");
    // A paid ticket still counts against the limit.
    assert_eq!(c.pay(&r2, "u1").await.status, 200);
    assert_error(&c.reserve("lim", "u1").await, 409, "limit_reached");
    assert_eq!(c.pay(&r3, "u1").await.status, 200);
    assert_error(&c.reserve("lim", "u1").await, 409, "limit_reached");
    assert_counts(c, "lim", (7, 1, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_before_opens_at_is_409_not_open() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "later", 5, json!({"opens_at": "2999-01-01T00:00:00Z"})).await;
    assert_error(&c.reserve("later", "u1").await, 409, "not_open");
    assert_error(
        &c.reserve_with_key("later", "u1", "k").await,
        409,
        "not_open",
    );
    assert_counts(c, "later", (5, 0, 0)).await;
    // A sale that opened in the past sells.
    create(c, "earlier", 5, json!({"opens_at": "2001-01-01T00:00:00Z"})).await;
    reserved(c, "earlier", "u1").await;
    assert_counts(c, "earlier", (4, 1, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_on_an_unknown_sale_is_404_sale_not_found() {
    let node = TestNode::start().await;
    let c = &node.client;
    assert_error(
        &c.reserve("no-such-sale", "u1").await,
        404,
        "sale_not_found",
    );
    assert_error(
        &c.reserve_with_key("no-such-sale", "u1", "k").await,
        404,
        "sale_not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_with_a_bad_request_is_400_invalid_request() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "bad", 5, json!({})).await;
    let path = "/api/v1/sales/bad/reservations";
    for body in [
        json!({}),
        json!({"user_id": ""}),
        json!({"user_id": "has space"}),
        json!({"user_id": 42}),
        json!({"user_id": "u1", "extra": true}),
    ] {
        let a = c.post(path, body.clone()).await;
        assert_error(&a, 400, "invalid_request");
    }
    let a = c
        .send(
            c.http
                .post(format!("{}{path}", c.base))
                .header("Idempotency-Key", "k".repeat(129))
                .json(&json!({"user_id": "u1"})),
        )
        .await;
    assert_error(&a, 400, "invalid_request");
    assert_counts(c, "bad", (5, 0, 0)).await;
}

// ----- reading, paying, cancelling -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reservation_is_200_or_404_reservation_not_found() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "g", 5, json!({})).await;
    let id = reserved(c, "g", "u1").await;
    let a = get_reservation(c, &id).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["reservation_id"], id.as_str());
    assert_eq!(a.body["state"], "reserved");
    for unknown in ["0123456789abcdefghjkmnpqrs", "x", &"z".repeat(64)] {
        let a = get_reservation(c, unknown).await;
        assert_error(&a, 404, "reservation_not_found");
    }
    assert_counts(c, "g", (4, 1, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_answers_200_paid_and_paying_again_changes_nothing() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "pay", 5, json!({})).await;
    let id = reserved(c, "pay", "u1").await;
    let before = now_ms();
    let a = c.pay(&id, "u1").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["state"], "paid");
    assert_eq!(a.body["reservation_id"], id.as_str());
    assert_eq!(a.body["user_id"], "u1");
    let paid_at = time_ms(&a.body["paid_at"]);
    assert!(
        (before - 1_000..=now_ms() + 1_000).contains(&paid_at),
        "{a:?}"
    );
    assert_counts(c, "pay", (4, 0, 1)).await;
    let again = c.pay(&id, "u1").await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body, a.body, "paying again changes nothing");
    assert_eq!(get_reservation(c, &id).await.body, a.body);
    assert_counts(c, "pay", (4, 0, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_or_cancel_by_another_user_is_403_forbidden() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "own", 5, json!({})).await;
    let id = reserved(c, "own", "u1").await;
    assert_error(&c.pay(&id, "u2").await, 403, "forbidden");
    assert_error(&c.cancel(&id, "u2").await, 403, "forbidden");
    assert_eq!(get_reservation(c, &id).await.body["state"], "reserved");
    assert_counts(c, "own", (4, 1, 0)).await;
    // Also once paid: another user neither pays nor cancels it.
    assert_eq!(c.pay(&id, "u1").await.status, 200);
    assert_error(&c.pay(&id, "u2").await, 403, "forbidden");
    assert_error(&c.cancel(&id, "u2").await, 403, "forbidden");
    assert_counts(c, "own", (4, 0, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_or_cancel_an_unknown_reservation_is_404() {
    let node = TestNode::start().await;
    let c = &node.client;
    for id in ["0123456789abcdefghjkmnpqrs", "nope"] {
        assert_error(&c.pay(id, "u1").await, 404, "reservation_not_found");
        assert_error(&c.cancel(id, "u1").await, 404, "reservation_not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_answers_200_cancelled_again_200_and_the_ticket_is_back() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "cx", 1, json!({})).await;
    let id = reserved(c, "cx", "u1").await;
    assert_error(&c.reserve("cx", "u2").await, 409, "sold_out");
    let a = c.cancel(&id, "u1").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["state"], "cancelled");
    assert_eq!(a.body["reservation_id"], id.as_str());
    assert_counts(c, "cx", (1, 0, 0)).await;
    let again = c.cancel(&id, "u1").await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body, a.body, "cancelling again changes nothing");
    assert_counts(c, "cx", (1, 0, 0)).await;
    // Paying a cancelled reservation: 409 cancelled.
    assert_error(&c.pay(&id, "u1").await, 409, "cancelled");
    // The ticket is on sale again, at once.
    let u2 = reserved(c, "cx", "u2").await;
    assert_ne!(u2, id);
    assert_counts(c, "cx", (0, 1, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_pay_is_409_already_paid() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "cp", 3, json!({})).await;
    let id = reserved(c, "cp", "u1").await;
    assert_eq!(c.pay(&id, "u1").await.status, 200);
    assert_error(&c.cancel(&id, "u1").await, 409, "already_paid");
    assert_eq!(get_reservation(c, &id).await.body["state"], "paid");
    assert_counts(c, "cp", (2, 0, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_and_cancel_after_expiry_are_409_expired() {
    let (node, clock) = node_with_clock().await;
    let c = &node.client;
    create(
        c,
        "exp",
        4,
        json!({"hold_seconds": 60, "per_user_limit": 4}),
    )
    .await;
    let a = c.reserve("exp", "u1").await;
    assert_eq!(a.status, 201, "{a:?}");
    let (id, expires) = (rid(&a), time_ms(&a.body["expires_at"]));
    let b = c.reserve("exp", "u1").await;
    assert_eq!(b.status, 201, "{b:?}");
    let id_b = rid(&b);
    let holds = [
        (id.clone(), expires),
        (id_b.clone(), time_ms(&b.body["expires_at"])),
    ];
    expire_by_clock(c, &clock, &holds).await;
    assert_error(&c.pay(&id, "u1").await, 409, "expired");
    assert_error(&c.cancel(&id_b, "u1").await, 409, "expired");
    // Both again, crossed: still 409 expired, nothing changes.
    assert_error(&c.cancel(&id, "u1").await, 409, "expired");
    assert_error(&c.pay(&id_b, "u1").await, 409, "expired");
    // The owner check comes first: another user gets 403 even on an expired hold.
    assert_error(&c.pay(&id, "u2").await, 403, "forbidden");
    assert_eq!(get_reservation(c, &id).await.body["state"], "expired");
    assert_counts(c, "exp", (4, 0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_just_after_expires_at_is_409_expired_even_before_the_reaper() {
    let (node, clock) = node_with_clock().await;
    let c = &node.client;
    create(c, "late", 2, json!({"hold_seconds": 60})).await;
    let a = c.reserve("late", "u1").await;
    assert_eq!(a.status, 201, "{a:?}");
    let expires = time_ms(&a.body["expires_at"]);
    // Just past the deadline, and at once: the pay itself finds the hold expired.
    clock.advance(Duration::from_millis((expires + 1 - clock.now().0) as u64));
    assert_error(&c.pay(&rid(&a), "u1").await, 409, "expired");
    assert_eq!(get_reservation(c, &rid(&a)).await.body["state"], "expired");
    assert_counts(c, "late", (2, 0, 0)).await;
}

// ----- expiry -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_is_back_on_sale_within_2s_and_resold() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "one", 1, json!({"hold_seconds": 1})).await;
    let a = c.reserve("one", "u1").await;
    assert_eq!(a.status, 201, "{a:?}");
    let expires = time_ms(&a.body["expires_at"]);
    assert_error(&c.reserve("one", "u2").await, 409, "sold_out");
    assert_counts(c, "one", (0, 1, 0)).await;
    // Within 2 s of expires_at: expired, and its ticket available again.
    let left = (expires + 2_000 - now_ms()).max(0) as u64;
    let back = wait_until(Duration::from_millis(left), || async {
        let (avail, _, _, _) = c.counts("one").await;
        avail == 1 && get_reservation(c, &rid(&a)).await.body["state"] == "expired"
    })
    .await;
    assert!(back, "ticket not back within 2 s of expires_at");
    assert_counts(c, "one", (1, 0, 0)).await;
    // No few-sell: another user gets it.
    let b = c.reserve("one", "u2").await;
    assert_eq!(b.status, 201, "{b:?}");
    assert_counts(c, "one", (0, 1, 0)).await;
    assert_error(&c.reserve("one", "u3").await, 409, "sold_out");
    // The expired owner may try again once it is free, like anyone.
    assert_eq!(c.cancel(&rid(&b), "u2").await.status, 200);
    reserved(c, "one", "u1").await;
    assert_counts(c, "one", (0, 1, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_demand_outlasts_supply_expired_tickets_all_sell_again() {
    let (node, clock) = node_with_clock().await;
    let c = &node.client;
    create(c, "few", 3, json!({"hold_seconds": 300})).await;
    let mut holds = Vec::new();
    for u in ["a1", "a2", "a3"] {
        let a = c.reserve("few", u).await;
        assert_eq!(a.status, 201, "{a:?}");
        holds.push((rid(&a), time_ms(&a.body["expires_at"])));
    }
    assert_error(&c.reserve("few", "b0").await, 409, "sold_out");
    expire_by_clock(c, &clock, &holds).await;
    assert_counts(c, "few", (3, 0, 0)).await;
    for u in ["b1", "b2", "b3"] {
        reserved(c, "few", u).await;
    }
    assert_error(&c.reserve("few", "b4").await, 409, "sold_out");
    assert_counts(c, "few", (0, 3, 0)).await;
}

// ----- the prototype's endpoint -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buy_ticket_sells_the_default_sale_to_anonymous_users() {
    let mut cfg = config("compat-node");
    cfg.default_sale = Some(SaleId::parse("default-sale").unwrap());
    let node = TestNode::start_with(cfg).await;
    let c = &node.client;
    create(c, "default-sale", 2, json!({})).await;
    let mut users = Vec::new();
    for _ in 0..2 {
        let a = c.get("/buy/ticket").await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body["code"], 1, "{a:?}");
        assert!(a.body["msg"].is_string(), "{a:?}");
        let d = &a.body["data"];
        assert_eq!(d["sale_id"], "default-sale");
        assert_eq!(d["state"], "reserved");
        assert!(d["reservation_id"].as_str().unwrap().len() >= 20, "{d}");
        time_ms(&d["expires_at"]);
        users.push(d["user_id"].as_str().unwrap().to_string());
    }
    assert_ne!(users[0], users[1], "each anonymous request is a new user");
    assert_counts(c, "default-sale", (0, 2, 0)).await;
    // Sold out: still 200, with code -1 and a message, and no data.
    let a = c.get("/buy/ticket").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["code"], -1, "{a:?}");
    assert!(!a.body["msg"].as_str().unwrap_or("").is_empty(), "{a:?}");
    assert!(a.body.get("data").is_none(), "{a:?}");
    assert_counts(c, "default-sale", (0, 2, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buy_ticket_takes_user_id_and_sale_id_from_the_query() {
    let mut cfg = config("compat-node");
    cfg.default_sale = Some(SaleId::parse("default-sale").unwrap());
    let node = TestNode::start_with(cfg).await;
    let c = &node.client;
    create(c, "default-sale", 5, json!({})).await;
    create(c, "other", 5, json!({})).await;
    let a = c.get("/buy/ticket?user_id=U1&sale_id=other").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["code"], 1, "{a:?}");
    assert_eq!(a.body["data"]["user_id"], "U1");
    assert_eq!(a.body["data"]["sale_id"], "other");
    // The reservation is a real one.
    let id = a.body["data"]["reservation_id"].as_str().unwrap();
    assert_eq!(get_reservation(c, id).await.body, a.body["data"]);
    // Same user again: the per-user limit applies (code -1).
    let again = c.get("/buy/ticket?user_id=U1&sale_id=other").await;
    assert_eq!(
        (again.status, &again.body["code"]),
        (200, &json!(-1)),
        "{again:?}"
    );
    // user_id alone: the default sale.
    let d = c.get("/buy/ticket?user_id=U1").await;
    assert_eq!(d.body["code"], 1, "{d:?}");
    assert_eq!(d.body["data"]["sale_id"], "default-sale");
    // An unknown sale: code -1.
    let none = c.get("/buy/ticket?sale_id=nope").await;
    assert_eq!(
        (none.status, &none.body["code"]),
        (200, &json!(-1)),
        "{none:?}"
    );
    assert_counts(c, "other", (4, 1, 0)).await;
    assert_counts(c, "default-sale", (4, 1, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buy_ticket_without_any_sale_answers_code_minus_1() {
    let node = TestNode::start().await;
    let a = node.client.get("/buy/ticket").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["code"], -1, "{a:?}");
    assert!(a.body["msg"].is_string(), "{a:?}");
}

// ----- operations -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200() {
    let node = TestNode::start().await;
    let c = &node.client;
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.get("/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_reservation_attempts_by_outcome_and_time_them() {
    let node = TestNode::start().await;
    let c = &node.client;
    create(c, "m1", 3, json!({"per_user_limit": 2})).await;
    create(c, "m2", 5, json!({"opens_at": "2999-01-01T00:00:00Z"})).await;
    reserved(c, "m1", "u1").await;
    reserved(c, "m1", "u1").await;
    assert_error(&c.reserve("m1", "u1").await, 409, "limit_reached");
    let first = c.reserve_with_key("m1", "u2", "k").await;
    assert_eq!(first.status, 201);
    assert_eq!(c.reserve_with_key("m1", "u2", "k").await.status, 200);
    assert_error(&c.reserve("m1", "u3").await, 409, "sold_out");
    assert_error(&c.reserve("m1", "u4").await, 409, "sold_out");
    assert_error(&c.reserve("m2", "u1").await, 409, "not_open");
    let endpoint_calls = 8;
    let resp = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.unwrap();
    for line in [
        r#"ticketrush_reservation_attempts_total{sale="m1",outcome="reserved"} 3"#,
        r#"ticketrush_reservation_attempts_total{sale="m1",outcome="replayed"} 1"#,
        r#"ticketrush_reservation_attempts_total{sale="m1",outcome="limit_reached"} 1"#,
        r#"ticketrush_reservation_attempts_total{sale="m1",outcome="sold_out"} 2"#,
        r#"ticketrush_reservation_attempts_total{sale="m2",outcome="not_open"} 1"#,
        "# TYPE ticketrush_reservation_attempts_total counter",
        "# TYPE ticketrush_reservation_duration_seconds histogram",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(
        text.contains("ticketrush_reservation_duration_seconds_bucket{le="),
        "{text}"
    );
    let count_line = format!("ticketrush_reservation_duration_seconds_count {endpoint_calls}");
    assert!(
        text.lines().any(|l| l == count_line),
        "missing {count_line:?} in:\n{text}"
    );
    let inf =
        format!("ticketrush_reservation_duration_seconds_bucket{{le=\"+Inf\"}} {endpoint_calls}");
    assert!(
        text.lines().any(|l| l == inf),
        "missing {inf:?} in:\n{text}"
    );
    assert_counts(c, "m1", (0, 3, 0)).await;
    assert_counts(c, "m2", (5, 0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_x_node_id() {
    let node = TestNode::start_with(config("node-xyz.7")).await;
    let c = &node.client;
    let base = &c.base;
    create(c, "n1", 1, json!({})).await;
    let id = reserved(c, "n1", "u1").await;
    let requests = [
        ("healthz", c.http.get(format!("{base}/healthz"))),
        ("readyz", c.http.get(format!("{base}/readyz"))),
        ("metrics", c.http.get(format!("{base}/metrics"))),
        ("list", c.http.get(format!("{base}/api/v1/sales"))),
        ("get sale", c.http.get(format!("{base}/api/v1/sales/n1"))),
        ("404 sale", c.http.get(format!("{base}/api/v1/sales/zz"))),
        (
            "201 create",
            c.http
                .post(format!("{base}/api/v1/sales"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"id": "n2", "total": 1})),
        ),
        (
            "401",
            c.http
                .post(format!("{base}/api/v1/sales"))
                .json(&json!({"id": "n3", "total": 1})),
        ),
        (
            "409 sold out",
            c.http
                .post(format!("{base}/api/v1/sales/n1/reservations"))
                .json(&json!({"user_id": "u2"})),
        ),
        (
            "400",
            c.http
                .post(format!("{base}/api/v1/sales/n1/reservations"))
                .body("{"),
        ),
        (
            "413",
            c.http
                .post(format!("{base}/api/v1/sales/n1/reservations"))
                .header("content-type", "application/json")
                .body(vec![b' '; 8 * 1024]),
        ),
        (
            "get reservation",
            c.http.get(format!("{base}/api/v1/reservations/{id}")),
        ),
        (
            "pay",
            c.http
                .post(format!("{base}/api/v1/reservations/{id}/pay"))
                .json(&json!({"user_id": "u1"})),
        ),
        ("buy", c.http.get(format!("{base}/buy/ticket"))),
        ("unknown path", c.http.get(format!("{base}/no/such/path"))),
        ("root", c.http.get(format!("{base}/"))),
        ("405", c.http.delete(format!("{base}/api/v1/sales"))),
        ("405 put", c.http.put(format!("{base}/healthz"))),
    ];
    for (what, req) in requests {
        let a = c.send(req).await;
        let got = a
            .headers
            .get("x-node-id")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(got.as_deref(), Some("node-xyz.7"), "{what}: {a:?}");
    }
    let a = c.get("/no/such/path").await;
    assert_error(&a, 404, "not_found");
    let a = c.send(c.http.delete(format!("{base}/api/v1/sales"))).await;
    assert_eq!(a.status, 405, "{a:?}");
    assert_counts(c, "n1", (0, 0, 1)).await;
}

// ----- load shedding -----

/// 429 `overloaded` with `Retry-After` when the node sheds. With `pending_max` 1 and
/// `batch_size_max` 1 the sale's queue holds one reservation; the batcher keeps at most
/// `BATCHES_IN_FLIGHT_MAX` (4) single-item commits in flight, each waiting for an fsync, so a
/// few hundred concurrent requests overflow the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_capacity_answers_429_overloaded_with_retry_after() {
    let mut cfg = config("shedding");
    cfg.pending_max = 1;
    cfg.batch_size_max = 1;
    let node = TestNode::start_with(cfg).await;
    let c = &node.client;
    create(c, "big", 100_000, json!({})).await;
    let n = 300;
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.reserve("big", &format!("user-{i}")).await
        }));
    }
    let (mut created, mut shed) = (0u64, 0u64);
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            201 => created += 1,
            429 => {
                assert_eq!(a.error(), "overloaded", "{a:?}");
                let retry = a
                    .headers
                    .get("retry-after")
                    .unwrap_or_else(|| panic!("{a:?}"));
                let secs: u64 = retry.to_str().unwrap().parse().unwrap();
                assert!(secs >= 1, "{a:?}");
                shed += 1;
            }
            _ => panic!("only 201 or 429 expected: {a:?}"),
        }
    }
    assert!(shed >= 1, "no request was shed ({created} created)");
    let (_, r, p) = invariant(c, "big").await;
    assert_eq!((r, p), (created, 0), "every 201 is a hold, and only those");
    // The node recovers: a request on its own is served.
    reserved(c, "big", "after-the-storm").await;
    assert_counts(c, "big", (100_000 - created - 1, created + 1, 0)).await;
}
