//! The Lua scripts through `RedisStore`, against a real `redis-server` started by each test:
//! the stock model's edge cases as cluster mode runs them (the last ticket, limits,
//! idempotency, payment and expiry, first-version leases, the largest batch, a re-sent batch),
//! and the waitlist's scripts decided side by side with the embedded ledger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ticketrush_core::{
    LedgerError, ReservationId, ReservationState, ReserveItem, ReserveOutcome, SaleId, SaleSpec,
    UserId,
};
use ticketrush_store::{RedisConfig, RedisStore, Store, StoreError};
use ticketrush_testkit::redis_server::RedisServer;
use ticketrush_testkit::wait_until;

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
    s.create_sale(sale("last", 2, 5, 60)).await.unwrap();
    assert!(matches!(
        s.create_sale(sale("last", 2, 5, 60)).await,
        Err(StoreError::Ledger(LedgerError::SaleExists))
    ));

    let none = s
        .reserve_batch(&sid("other-sale"), vec![item("other-sale", 1, "a", None)])
        .await;
    assert!(matches!(
        none,
        Err(StoreError::Ledger(LedgerError::SaleNotFound))
    ));

    // Three items on a pool of two: the third finds no stock, and the batch says none is left.
    let items = vec![
        item("last", 1, "a", None),
        item("last", 2, "b", None),
        item("last", 3, "c", None),
    ];
    let out = s.reserve_batch(&sid("last"), items).await.unwrap();
    assert!(matches!(out.outcomes[0], ReserveOutcome::Reserved(_)));
    assert!(matches!(out.outcomes[1], ReserveOutcome::Reserved(_)));
    assert_eq!(out.outcomes[2], ReserveOutcome::NoStock);
    assert_eq!(out.available, 0);
    let v = s.sale(&sid("last")).await.unwrap().unwrap();
    assert_eq!(counts(&v), (0, 2, 0));
    // Any later batch, from any node, finds the same empty pool and writes nothing.
    let out = s
        .reserve_batch(&sid("last"), vec![item("last", 4, "d", None)])
        .await
        .unwrap();
    assert_eq!(
        (out.outcomes[0].clone(), out.available),
        (ReserveOutcome::NoStock, 0)
    );
}

#[tokio::test]
async fn scripts_enforce_limits_and_replay_idempotency_keys() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    s.create_sale(sale("lim", 10, 2, 60)).await.unwrap();
    let items = vec![
        item("lim", 1, "u", Some("k1")),
        item("lim", 2, "u", Some("k1")), // same key in the same batch: a replay
        item("lim", 3, "u", None),
        item("lim", 4, "u", None), // third ticket for a limit of two
    ];
    let out = s.reserve_batch(&sid("lim"), items).await.unwrap();
    assert_eq!(out.available, 8);
    let out = out.outcomes;
    let ReserveOutcome::Reserved(first) = &out[0] else {
        panic!("first item: {:?}", out[0]);
    };
    assert_eq!(out[1], ReserveOutcome::Replayed(first.clone()));
    assert!(matches!(out[2], ReserveOutcome::Reserved(_)));
    assert_eq!(out[3], ReserveOutcome::LimitReached);

    // A later replay (another batch) answers the same reservation, and so does the lookup.
    let out = s
        .reserve_batch(&sid("lim"), vec![item("lim", 5, "u", Some("k1"))])
        .await
        .unwrap()
        .outcomes;
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
        .reserve_batch(&sid("lim"), vec![item("lim", 6, "u", None)])
        .await
        .unwrap();
    assert!(matches!(out.outcomes[0], ReserveOutcome::Reserved(_)));
}

/// A Redis written by the first version holds leases (its nodes sold from leased chunks).
/// This version never grants one; `reap` takes each back into the pool once it lapses, so
/// every ticket is on sale again after an upgrade.
#[tokio::test]
async fn scripts_take_back_first_version_leases_once_lapsed() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    s.create_sale(sale("v1", 10, 1, 60)).await.unwrap();
    let keys = ticketrush_store::redis_store::SaleKeys::of(&sid("v1"));
    let now = s.now().0;
    // Two leases as the first version's `lease.lua` wrote them: 4 unsold, lapsing soon; 2
    // unsold, lapsing in an hour.
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let soon = format!("4 {} n1", now + 300);
    let later = format!("2 {} n2", now + 3_600_000);
    let _: () = redis::pipe()
        .hset(&keys.leases, "1", &soon)
        .hset(&keys.leases, "2", &later)
        .hincr(&keys.sale, "pool", -6)
        .hincr(&keys.sale, "leased", 6)
        .query_async(&mut c)
        .await
        .unwrap();
    let v = s.sale(&sid("v1")).await.unwrap().unwrap();
    assert_eq!(counts(&v), (10, 0, 0), "leased tickets count as available");
    // The pool holds 4: the fifth item of a batch is sold out, and the batch says 6 remain
    // (the leased ones), so no node concludes the sale is over.
    let items: Vec<ReserveItem> = (1..=5)
        .map(|n| item("v1", n, &format!("u{n}"), None))
        .collect();
    let out = s.reserve_batch(&sid("v1"), items).await.unwrap();
    assert_eq!(out.outcomes[4], ReserveOutcome::NoStock);
    assert_eq!(out.available, 6);
    // Once the first lease lapses, a reaper pass puts its 4 back; the other stays.
    assert!(wait_until(Duration::from_secs(5), || async { s.now().0 > now + 300 }).await);
    assert_eq!(s.reap(100).await.unwrap().leases_reclaimed, 1);
    let items: Vec<ReserveItem> = (6..=10)
        .map(|n| item("v1", n, &format!("u{n}"), None))
        .collect();
    let out = s.reserve_batch(&sid("v1"), items).await.unwrap();
    assert_eq!(out.outcomes[4], ReserveOutcome::NoStock);
    assert_eq!(out.available, 2);
    let v = s.sale(&sid("v1")).await.unwrap().unwrap();
    assert_eq!(counts(&v), (2, 8, 0));
}

#[tokio::test]
async fn scripts_pay_and_expire_holds() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    s.create_sale(sale("hold", 4, 3, 1)).await.unwrap();
    let items = vec![
        item("hold", 1, "a", None),
        item("hold", 2, "b", None),
        item("hold", 3, "c", None),
        item("hold", 4, "d", None),
    ];
    let out = s.reserve_batch(&sid("hold"), items).await.unwrap();
    let ids: Vec<ReservationId> = out
        .outcomes
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
    let cancelled = s
        .cancel(&ids[3], &UserId::parse("d").unwrap())
        .await
        .unwrap();
    assert_eq!(cancelled.state, ReservationState::Cancelled);
    // The batch's four holds share one deadline entry (`dueb`), kept until the deadline.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let batches: Vec<String> = redis::cmd("ZRANGE")
        .arg("{sale:hold}:dueb")
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(batches[0].split(' ').count(), 4, "{batches:?}");

    // After the one-second hold, the reaper expires the two holds neither paid nor cancelled
    // into the pool, and skips the paid and the cancelled one.
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
    // The cancelled and the two expired tickets are back in the pool.
    assert_eq!(counts(&v), (3, 0, 1));
    assert_eq!(
        s.reservation(&ids[3]).await.unwrap().unwrap().state,
        ReservationState::Cancelled,
        "a cancelled hold of the batch stays cancelled"
    );
    assert_eq!(
        s.reservation(&ids[0]).await.unwrap().unwrap().state,
        ReservationState::Paid,
        "a paid hold of the batch stays paid"
    );
    for key in ["{sale:hold}:dueb", "{sale:hold}:due"] {
        let left: u64 = redis::cmd("ZCARD")
            .arg(key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(left, 0, "{key} is empty once every deadline passed");
    }
    assert!(s
        .reservation(&ReservationId::parse("nosuch.hold").unwrap())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn scripts_commit_the_largest_batch_in_one_call() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let max = ticketrush_server::limits::BATCH_SIZE_CEILING;
    s.create_sale(sale("big", max as u64, 2, 60)).await.unwrap();
    // Users come in threes (a limit of two: every third is refused), and every user's first
    // key is sent twice (the second is a replay of the first, within the same call).
    let items: Vec<ReserveItem> = (0..max)
        .map(|n| {
            let user = format!("u{}", n / 3);
            let key = (n % 3 != 2).then(|| format!("k{}", n / 3 * 3));
            item("big", n, &user, key.as_deref())
        })
        .collect();
    let out = s.reserve_batch(&sid("big"), items).await.unwrap().outcomes;
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

/// A client library may re-send a script call whose reply it lost (redis-rs's cluster client
/// does on a dropped connection). The batch answers each item with what it already got and
/// takes nothing again: the counts stay true.
#[tokio::test]
async fn scripts_answer_a_resent_batch_without_taking_again() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    s.create_sale(sale("resent", 10, 1, 60)).await.unwrap();
    let items = vec![
        item("resent", 1, "a", None),
        item("resent", 2, "b", Some("k")),
    ];
    let first = s
        .reserve_batch(&sid("resent"), items.clone())
        .await
        .unwrap();
    let again = s.reserve_batch(&sid("resent"), items).await.unwrap();
    for (a, b) in first.outcomes.iter().zip(&again.outcomes) {
        let (ReserveOutcome::Reserved(a), ReserveOutcome::Reserved(b)) = (a, b) else {
            panic!("{first:?} then {again:?}");
        };
        assert_eq!(a, b);
    }
    assert_eq!(again.available, 8);
    let v = s.sale(&sid("resent")).await.unwrap().unwrap();
    assert_eq!(counts(&v), (8, 2, 0));
    // The users' holdings were not counted twice: each may still not take a second ticket,
    // and nobody else is short of one.
    let more = s
        .reserve_batch(&sid("resent"), vec![item("resent", 3, "c", None)])
        .await
        .unwrap();
    assert!(matches!(more.outcomes[0], ReserveOutcome::Reserved(_)));
}

// ----- the waitlist: the Lua scripts against the ledger -----

/// One answer, with times left out (the two stores read different clocks).
fn shape(r: &Result<ticketrush_store::WaitlistAnswer, StoreError>) -> String {
    match r {
        Ok(a) => format!(
            "{} {:?} {:?} {}",
            a.entry.user_id, a.entry.state, a.entry.position, a.created
        ),
        Err(e) => format!("{e}"),
    }
}

fn settled(r: &Result<ticketrush_core::Reservation, StoreError>) -> String {
    match r {
        Ok(r) => format!("{} {}", r.user_id, r.state.as_str()),
        Err(e) => format!("{e}"),
    }
}

/// The same random mix of reservations, cancels, payments, waitlist joins and withdrawals, and
/// one round of expiries, on the embedded store (the ledger) and on Redis (the Lua scripts):
/// every answer and the final state agree, offers included. Deterministic (a fixed LCG).
#[tokio::test]
async fn the_waitlist_scripts_decide_as_the_ledger_does() {
    use ticketrush_core::WaitlistId;
    let redis = RedisServer::start();
    let r = store(&redis).await;
    let dir = ticketrush_testkit::TempDir::new("wl-parity");
    let clock = ticketrush_store::ManualClock::starting_now();
    let (e, _) = ticketrush_store::EmbeddedStore::open(
        &dir.0,
        ticketrush_store::embedded::Options {
            clock: Arc::new(clock.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let stores: [&dyn Store; 2] = [&e, r.as_ref()];
    for s in stores {
        s.create_sale(sale("wp", 6, 2, 1)).await.unwrap();
    }
    let sale_id = sid("wp");
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    let mut made: Vec<(ReservationId, String)> = Vec::new();
    let mut waits: Vec<(WaitlistId, String)> = Vec::new();
    let mut expiry_round_done = false;
    for step in 0..400 {
        let user = format!("u{}", next(9));
        let op = next(10);
        let answers: Vec<String> = match op {
            0..=2 => {
                let it = item("wp", step, &user, None);
                let mut out = Vec::new();
                for s in stores {
                    let o = s.reserve_batch(&sale_id, vec![it.clone()]).await.unwrap();
                    out.push(format!(
                        "{} left {}",
                        outcome_shape(&o.outcomes[0]),
                        o.available
                    ));
                    if let ReserveOutcome::Reserved(_) = &o.outcomes[0] {
                        if out.len() == 1 {
                            made.push((it.id.clone(), user.clone()));
                        }
                    }
                }
                out
            }
            3 | 4 if !made.is_empty() => {
                let (id, u) = made[next(made.len() as u64) as usize].clone();
                let mut out = Vec::new();
                for s in stores {
                    let r = if op == 3 {
                        s.cancel(&id, &UserId::parse(&u).unwrap()).await
                    } else {
                        s.pay(&id, &UserId::parse(&u).unwrap()).await
                    };
                    out.push(settled(&r));
                }
                out
            }
            5..=7 => {
                let wid = WaitlistId::parse(&format!("w{step:025}")).unwrap();
                let mut out = Vec::new();
                for s in stores {
                    let a = s
                        .waitlist_join(&sale_id, wid.clone(), UserId::parse(&user).unwrap())
                        .await;
                    out.push(shape(&a));
                    if let Ok(a) = &a {
                        if a.created && out.len() == 1 {
                            waits.push((wid.clone(), user.clone()));
                        }
                    }
                }
                out
            }
            8 if !waits.is_empty() => {
                let (wid, u) = waits[next(waits.len() as u64) as usize].clone();
                let mut out = Vec::new();
                for s in stores {
                    let w = s
                        .waitlist_withdraw(&sale_id, &wid, &UserId::parse(&u).unwrap())
                        .await
                        .map(|entry| ticketrush_store::WaitlistAnswer {
                            entry,
                            created: false,
                        });
                    out.push(shape(&w));
                }
                out
            }
            9 if !expiry_round_done && step > 200 => {
                // Every hold made so far falls due: 1.1 s on both clocks.
                expiry_round_done = true;
                tokio::time::sleep(Duration::from_millis(1_100)).await;
                clock.advance(Duration::from_millis(1_100));
                let mut out = Vec::new();
                for s in stores {
                    out.push(format!("{:?}", s.reap(10_000).await.unwrap().expired));
                }
                out
            }
            _ => continue,
        };
        assert_eq!(
            answers[0], answers[1],
            "step {step} (op {op}): ledger vs Lua"
        );
        // The offers: every waitlist place reads the same on both.
        for (wid, _) in &waits {
            let a = e.waitlist_entry(&sale_id, wid).await.unwrap();
            let b = r.waitlist_entry(&sale_id, wid).await.unwrap();
            assert_eq!(a, b, "step {step}: waitlist place {wid}");
        }
        let (va, vb) = (
            e.sale(&sale_id).await.unwrap().unwrap(),
            r.sale(&sale_id).await.unwrap().unwrap(),
        );
        assert_eq!(counts(&va), counts(&vb), "step {step}: counts");
    }
    assert!(expiry_round_done);
    // The mix did exercise the waitlist: offers were made, and some places still wait.
    let mut states = Vec::new();
    for (wid, _) in &waits {
        states.push(
            e.waitlist_entry(&sale_id, wid)
                .await
                .unwrap()
                .unwrap()
                .state,
        );
    }
    assert!(
        states.contains(&ticketrush_core::WaitState::Offered),
        "no offer in the mix: {states:?}"
    );
}

fn outcome_shape(o: &ReserveOutcome) -> String {
    match o {
        ReserveOutcome::Reserved(r) => format!("reserved {} {}", r.id, r.user_id),
        ReserveOutcome::Replayed(r) => format!("replayed {}", r.id),
        ReserveOutcome::LimitReached => "limit".into(),
        ReserveOutcome::NoStock => "no stock".into(),
    }
}
