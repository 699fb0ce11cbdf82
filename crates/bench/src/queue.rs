//! `ticketrush bench --queue`: users go through a sale's waiting room (docs/API.md, "The
//! waiting room"): each joins, polls its place with the documented backoff, and reserves with
//! its admission token once admitted. The report says whether the room kept its promises:
//! the admission rate held, nobody admitted out of line order, the pre-queue shuffled, and how
//! long people waited.
//!
//! Each connection serves the users `i ≡ k (mod C)`: it joins them one after another (the
//! rush) and keeps every waiting user in a heap by the time of their next poll, sending one
//! request at a time. The admission instant of each user is exact, not observed: an admitted
//! place's `expires_at` is its admission plus `ADMISSION_WINDOW_MS`, on the store's clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use ticketrush_core::sale::ADMISSION_WINDOW_MS;
use ticketrush_core::UnixMs;

use crate::args::Args;
use crate::http::{connect, Sender};

/// Longest a user is polled between two answers (docs/API.md's backoff: `min(5 s, wait / 4)`).
const POLL_MAX: Duration = Duration::from_secs(5);
const POLL_MIN: Duration = Duration::from_secs(1);

/// One user's story.
#[derive(Debug, Clone, Default)]
struct User {
    /// Queue size in the join's answer: the arrival number of a later arrival (its place), and
    /// the pre-queue's join order for a pre-queue place.
    joined_as: u64,
    pre: bool,
    /// The exact admission instant (store clock, ms) from `expires_at`.
    admitted_at: Option<i64>,
    /// Seconds from the join's answer to the poll that saw the admission.
    waited_s: Option<f64>,
    polls: u32,
    /// The reservation's status once tried.
    bought: Option<u16>,
    /// Its error code, for a 409.
    refusal: Option<String>,
}

/// What `bench --queue` found.
#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    pub sale: String,
    pub users: u64,
    pub connections: u64,
    pub admit_per_second: u64,
    pub duration_s: f64,
    pub joined: u64,
    pub joined_before_opening: u64,
    pub admitted: u64,
    /// Reservations answered 201.
    pub bought: u64,
    /// Reservations answered `sold_out`.
    pub sold_out: u64,
    /// Reservations answered another 409 (`limit_reached`: the user already held a ticket).
    pub other_refusals: u64,
    /// Reservations answered 403 `not_admitted` (must be 0).
    pub refused: u64,
    /// Transport failures, timeouts, 5xx and unexpected answers.
    pub errors: u64,
    /// Polls of places, and per admitted user.
    pub polls: u64,
    pub polls_per_user: f64,
    pub polls_per_second: f64,
    /// Admissions per second between the first and the last admission (store clock).
    pub admit_rate_measured: f64,
    /// The largest number admitted in any whole second, and the smallest (first and last
    /// seconds left out): how evenly the rate was held.
    pub admitted_per_second_max: u64,
    pub admitted_per_second_min: u64,
    /// Later arrivals admitted before someone who arrived before them (must be 0).
    pub out_of_order: u64,
    /// Spearman's rank correlation between arrival order and admission order: later
    /// arrivals (1 when in order) and the pre-queue (near 0 when shuffled).
    pub later_rank_correlation: Option<f64>,
    pub pre_queue_rank_correlation: Option<f64>,
    /// Seconds from joining to seeing the admission: p50, p90, p99, max.
    pub wait_s: [f64; 4],
}

impl QueueReport {
    /// The room kept its promises: nobody refused or admitted out of order, no errors.
    pub fn passed(&self) -> bool {
        self.refused == 0 && self.out_of_order == 0 && self.errors == 0
    }
}

impl fmt::Display for QueueReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let corr = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{c:.3}"));
        writeln!(
            f,
            "bench --queue: sale {} ({} users, {} connections, {:.1} s)",
            self.sale, self.users, self.connections, self.duration_s
        )?;
        writeln!(
            f,
            "  joined {} ({} before the opening), admitted {}, bought {}, sold out {}, other 409 {}, refused {}, errors {}",
            self.joined, self.joined_before_opening, self.admitted, self.bought, self.sold_out,
            self.other_refusals, self.refused, self.errors
        )?;
        writeln!(
            f,
            "  admission: {:.1}/s measured for {}/s set (whole seconds: {}–{})",
            self.admit_rate_measured,
            self.admit_per_second,
            self.admitted_per_second_min,
            self.admitted_per_second_max
        )?;
        writeln!(
            f,
            "  order: {} later arrivals admitted out of order; rank correlation of arrival and admission: later arrivals {}, pre-queue {} (shuffled: near 0)",
            self.out_of_order,
            corr(self.later_rank_correlation),
            corr(self.pre_queue_rank_correlation)
        )?;
        writeln!(
            f,
            "  polls: {} ({:.1} per user, {:.0}/s); wait p50 {:.1} s, p90 {:.1} s, p99 {:.1} s, max {:.1} s",
            self.polls,
            self.polls_per_user,
            self.polls_per_second,
            self.wait_s[0],
            self.wait_s[1],
            self.wait_s[2],
            self.wait_s[3]
        )?;
        write!(f, "  {}", if self.passed() { "PASSED" } else { "FAILED" })
    }
}

struct Shared {
    args: Args,
    sale: String,
    errors: AtomicU64,
    stop: AtomicBool,
}

/// A JSON answer.
struct Answer {
    status: u16,
    body: serde_json::Value,
}

/// One keep-alive connection to one target, reconnected when it breaks.
struct Conn {
    target: crate::args::Target,
    sender: Option<Sender>,
    timeout: Duration,
}

impl Conn {
    async fn send(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> Option<Answer> {
        for _ in 0..2 {
            if self.sender.is_none() {
                let (sender, driver) = connect(&self.target).await.ok()?;
                tokio::spawn(async move {
                    let _ = driver.await;
                });
                self.sender = Some(sender);
            }
            let sender = self.sender.as_mut()?;
            if !matches!(
                tokio::time::timeout(self.timeout, sender.ready()).await,
                Ok(Ok(()))
            ) {
                self.sender = None;
                continue;
            }
            let mut req = hyper::Request::builder()
                .method(method.clone())
                .uri(path)
                .header(hyper::header::HOST, self.target.authority.as_str());
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            if let Some(t) = token {
                req = req.header("admission-token", t);
            }
            let req = req
                .body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
                .ok()?;
            let answer = tokio::time::timeout(self.timeout, async {
                let resp = sender.send_request(req).await.ok()?;
                let status = resp.status().as_u16();
                let bytes = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .ok()?
                    .to_bytes();
                Some(Answer {
                    status,
                    body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
                })
            })
            .await;
            match answer {
                Ok(Some(a)) => return Some(a),
                _ => self.sender = None,
            }
        }
        None
    }
}

fn millis_of(body: &serde_json::Value, field: &str) -> Option<i64> {
    UnixMs::parse_rfc3339(body[field].as_str()?)
        .ok()
        .map(|t| t.0)
}

/// When to poll a place again, by docs/API.md's backoff.
fn next_poll(body: &serde_json::Value) -> Duration {
    let position = body["position"].as_u64();
    let wait = body["estimated_wait_seconds"].as_u64().unwrap_or(0);
    match position {
        Some(p) if p > 100 => Duration::from_secs(wait / 4).clamp(POLL_MIN, POLL_MAX),
        _ => POLL_MIN,
    }
}

/// Connection `k` of `c`: its users' joins, polls and purchases.
async fn run_connection(shared: Arc<Shared>, k: u64, c: u64) -> Vec<User> {
    let args = &shared.args;
    let mut conn = Conn {
        target: args.targets[k as usize % args.targets.len()].clone(),
        sender: None,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let mine: Vec<u64> = (k..args.users).step_by(c as usize).collect();
    let mut users = vec![User::default(); mine.len()];
    let mut ids: Vec<String> = vec![String::new(); mine.len()];
    let mut joined_at: Vec<Instant> = vec![Instant::now(); mine.len()];
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut next_join = 0;
    let sale = &shared.sale;
    let error = || shared.errors.fetch_add(1, Ordering::Relaxed);
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let poll = match due.peek() {
            Some(Reverse((t, _))) if *t <= now => due.pop().map(|Reverse((_, i))| i),
            _ => None,
        };
        let i = match poll {
            Some(i) => i,
            None if next_join < mine.len() => {
                // The rush: the next user joins.
                let i = next_join;
                next_join += 1;
                let body = format!("{{\"user_id\":\"{}{}\"}}", args.user_prefix, mine[i]);
                let path = format!("/api/v1/sales/{sale}/queue");
                match conn
                    .send(hyper::Method::POST, &path, Some(body), None)
                    .await
                {
                    Some(a) if a.status == 202 || a.status == 200 => {
                        users[i].joined_as = a.body["queue_size"].as_u64().unwrap_or(0);
                        users[i].pre = a.body["position"].is_null();
                        ids[i] = a.body["queue_id"].as_str().unwrap_or("").to_string();
                        joined_at[i] = Instant::now();
                        due.push(Reverse((Instant::now() + next_poll(&a.body), i)));
                    }
                    _ => {
                        error();
                    }
                }
                continue;
            }
            None => match due.peek() {
                Some(Reverse((t, _))) => {
                    tokio::time::sleep_until((*t).into()).await;
                    continue;
                }
                None => break,
            },
        };
        let path = format!("/api/v1/sales/{sale}/queue/{}", ids[i]);
        users[i].polls += 1;
        let Some(a) = conn.send(hyper::Method::GET, &path, None, None).await else {
            error();
            due.push(Reverse((Instant::now() + POLL_MIN, i)));
            continue;
        };
        if a.status != 200 {
            error();
            continue;
        }
        if a.body["admitted"] != true {
            due.push(Reverse((Instant::now() + next_poll(&a.body), i)));
            continue;
        }
        users[i].waited_s = Some(joined_at[i].elapsed().as_secs_f64());
        users[i].admitted_at = millis_of(&a.body, "expires_at").map(|t| t - ADMISSION_WINDOW_MS);
        let Some(token) = a.body["admission_token"].as_str().map(str::to_string) else {
            error();
            continue;
        };
        let body = format!("{{\"user_id\":\"{}{}\"}}", args.user_prefix, mine[i]);
        let path = format!("/api/v1/sales/{sale}/reservations");
        match conn
            .send(hyper::Method::POST, &path, Some(body), Some(&token))
            .await
        {
            Some(a) => {
                users[i].bought = Some(a.status);
                users[i].refusal = a.body["error"].as_str().map(str::to_string);
            }
            None => {
                error();
            }
        }
    }
    users
}

/// Spearman's rank correlation of two orderings of the same items (`a[i]`, `b[i]`: item i's
/// key in each; ties broken by index).
fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len();
    if n < 3 {
        return None;
    }
    let ranks = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|x, y| v[*x].total_cmp(&v[*y]).then(x.cmp(y)));
        let mut r = vec![0.0; n];
        for (rank, i) in idx.into_iter().enumerate() {
            r[i] = rank as f64;
        }
        r
    };
    let (ra, rb) = (ranks(a), ranks(b));
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y).powi(2)).sum();
    let n = n as f64;
    Some(1.0 - 6.0 * d2 / (n * (n * n - 1.0)))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the queue benchmark and answers its report (also written to `--json`).
pub async fn run(args: Args) -> anyhow::Result<QueueReport> {
    args.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.jwt_secret_file.is_none(),
        "--queue does not sign user tokens yet: run it against nodes without --user-auth jwt"
    );
    let sale = args.sale().to_string();
    let (status, body) = crate::http::get(&args.targets[0], &format!("/api/v1/sales/{sale}"))
        .await
        .with_context(|| format!("cannot read sale {sale}"))?;
    let spec: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    anyhow::ensure!(status == 200, "cannot read sale {sale}: status {status}");
    let rate = spec["queue"]["admit_per_second"]
        .as_u64()
        .with_context(|| format!("sale {sale} has no waiting room (create it with \"queue\")"))?;
    let connections = args.connections.min(args.users);
    let shared = Arc::new(Shared {
        sale,
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        args,
    });
    let started = Instant::now();
    let timer = {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(shared.args.max_seconds)).await;
            shared.stop.store(true, Ordering::Relaxed);
        })
    };
    let tasks: Vec<_> = (0..connections)
        .map(|k| tokio::spawn(run_connection(shared.clone(), k, connections)))
        .collect();
    let mut users = Vec::new();
    for t in tasks {
        users.extend(t.await.context("a queue connection failed")?);
    }
    timer.abort();
    let duration_s = started.elapsed().as_secs_f64();
    let report = summarize(&shared, rate, connections, duration_s, &users);
    if let Some(path) = &shared.args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write the JSON report to {}", path.display()))?;
    }
    Ok(report)
}

fn summarize(
    shared: &Shared,
    rate: u64,
    connections: u64,
    duration_s: f64,
    users: &[User],
) -> QueueReport {
    let joined: Vec<&User> = users.iter().filter(|u| u.joined_as > 0).collect();
    let admitted: Vec<&User> = joined
        .iter()
        .copied()
        .filter(|u| u.admitted_at.is_some())
        .collect();
    let status = |s: u16| users.iter().filter(|u| u.bought == Some(s)).count() as u64;
    let polls: u64 = users.iter().map(|u| u64::from(u.polls)).sum();
    // The rate, from the exact admission instants.
    let mut times: Vec<i64> = admitted.iter().filter_map(|u| u.admitted_at).collect();
    times.sort_unstable();
    let (mut per_max, mut per_min, mut measured) = (0, 0, 0.0);
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        if last > first {
            measured = (times.len() - 1) as f64 * 1000.0 / (last - first) as f64;
        }
        let seconds = ((last - first) / 1000) as usize + 1;
        let mut buckets = vec![0u64; seconds];
        for t in &times {
            buckets[((t - first) / 1000) as usize] += 1;
        }
        per_max = buckets.iter().copied().max().unwrap_or(0);
        let inner = if buckets.len() > 2 {
            &buckets[1..buckets.len() - 1]
        } else {
            &buckets[..]
        };
        per_min = inner.iter().copied().min().unwrap_or(0);
    }
    // Order: later arrivals by their place, against their admission instants.
    let mut later: Vec<(u64, i64)> = admitted
        .iter()
        .filter(|u| !u.pre)
        .map(|u| (u.joined_as, u.admitted_at.unwrap_or(0)))
        .collect();
    later.sort_unstable();
    let out_of_order = later.windows(2).filter(|w| w[1].1 < w[0].1).count() as u64;
    let corr = |v: &[&User], pre: bool| {
        let v: Vec<&&User> = v.iter().filter(|u| u.pre == pre).collect();
        let a: Vec<f64> = v.iter().map(|u| u.joined_as as f64).collect();
        let b: Vec<f64> = v
            .iter()
            .map(|u| u.admitted_at.unwrap_or(0) as f64)
            .collect();
        spearman(&a, &b)
    };
    let mut waits: Vec<f64> = admitted.iter().filter_map(|u| u.waited_s).collect();
    waits.sort_by(f64::total_cmp);
    QueueReport {
        sale: shared.sale.clone(),
        users: shared.args.users,
        connections,
        admit_per_second: rate,
        duration_s,
        joined: joined.len() as u64,
        joined_before_opening: joined.iter().filter(|u| u.pre).count() as u64,
        admitted: admitted.len() as u64,
        bought: status(201) + status(200),
        sold_out: users
            .iter()
            .filter(|u| u.bought == Some(409) && u.refusal.as_deref() == Some("sold_out"))
            .count() as u64,
        other_refusals: users
            .iter()
            .filter(|u| u.bought == Some(409) && u.refusal.as_deref() != Some("sold_out"))
            .count() as u64,
        refused: status(403),
        errors: shared.errors.load(Ordering::Relaxed)
            + users
                .iter()
                .filter(|u| u.bought.is_some_and(|s| ![200, 201, 403, 409].contains(&s)))
                .count() as u64,
        polls,
        polls_per_user: if admitted.is_empty() {
            0.0
        } else {
            polls as f64 / admitted.len() as f64
        },
        polls_per_second: polls as f64 / duration_s.max(1e-9),
        admit_rate_measured: measured,
        admitted_per_second_max: per_max,
        admitted_per_second_min: per_min,
        out_of_order,
        later_rank_correlation: corr(&admitted, false),
        pre_queue_rank_correlation: corr(&admitted, true),
        wait_s: [
            percentile(&waits, 0.5),
            percentile(&waits, 0.9),
            percentile(&waits, 0.99),
            waits.last().copied().unwrap_or(0.0),
        ],
    }
}

/// `ticketrush bench --queue`: runs, prints the report, fails (exit 1) when the room broke a
/// promise.
pub async fn command(args: Args) -> anyhow::Result<()> {
    let report = run(args).await?;
    println!("{report}");
    anyhow::ensure!(
        report.passed(),
        "the waiting room broke a promise: {} refused, {} out of order, {} errors",
        report.refused,
        report.out_of_order,
        report.errors
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_is_one_for_the_same_order_and_minus_one_reversed() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(spearman(&a, &[10.0, 20.0, 30.0, 40.0]), Some(1.0));
        assert_eq!(spearman(&a, &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&a[..2], &a[..2]), None);
    }
}
