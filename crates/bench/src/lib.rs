//! `ticketrush bench`: the load generator and its report.
//!
//! A library so `ticketrush bench` and the later `ticketrush demo` share it: build an `Args`
//! (from the command line, or `Args::new` in code), `run` it, and get a `Report` (serde
//! `Serialize`, `Display` for the text). The shape follows from "the generator must not be the
//! bottleneck": C tasks, each owning one hyper HTTP/1 connection and everything it counts
//! (`conn.rs`), merged once at the end; the progress line and the stock sampler are separate
//! tasks that read what the connections publish without slowing them.
//!
//! The run: read the sale (`check.rs`), start the connection tasks, a timer for
//! `--max-seconds`, the progress line (terminals only) and the stock sampler; wait for the
//! tasks (they stop when the users run out, when the timer fires, or when their target has not
//! answered for `--give-up-seconds`); read the sale again and compare; write the JSON and the
//! chart (`chart.rs`) if asked. The report is written even when the targets died mid-run.

pub mod args;
pub mod chart;
pub mod check;
mod conn;
mod http;
mod progress;
pub mod queue;
pub mod report;
pub mod timeline;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

pub use args::{Args, Endpoint, Target};
pub use check::{Check, SaleCounts};
pub use report::{Latency, Payments, Report, Stopped};

use conn::{ConnResult, Counts, Padded, Shared, LATENCY_US_MAX};
use timeline::Timeline;

/// Runs the load described by `args` and answers its report (also written to `--json` and
/// `--chart` when given). An error means the run could not start (bad arguments, the sale
/// could not be read) or a file could not be written; a failed check is in the report.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    args.validate().map_err(anyhow::Error::msg)?;
    let first_read = Instant::now();
    let before = if args.no_check {
        None
    } else {
        let s = check::read_sales(&args.targets, &args.sales)
            .await
            .with_context(|| format!("cannot read sale {} before the run", args.sale()))?;
        Some(s.0)
    };
    let connections = args.connections.min(args.users);
    let tokens = match &args.jwt_secret_file {
        Some(path) => {
            let mut secret = std::fs::read(path)
                .with_context(|| format!("cannot read the JWT secret {}", path.display()))?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            Some(jsonwebtoken::EncodingKey::from_secret(&secret))
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        tokens,
        users: args.users,
        next_user: Padded::default(),
        stop: AtomicBool::new(false),
        started: Instant::now(),
        timeline: Timeline::new(args.max_seconds + 1),
        progress: (0..connections)
            .map(|_| Padded(AtomicU64::new(0)))
            .collect(),
        args,
    });
    if let Some(b) = before {
        shared.timeline.set_available(0, b.available);
    }
    let (results, timed_out) = drive(&shared, connections).await?;
    let duration_s = shared.started.elapsed().as_secs_f64();
    let check = match before {
        None => Check::skipped(),
        Some(before) => {
            let mut told = told(&results);
            match check::read_sales(&shared.args.targets, &shared.args.sales).await {
                Ok((after, each)) => {
                    told.sold_out_left = sold_out_left(&results, &each);
                    shared
                        .timeline
                        .set_available(duration_s as u32, after.available);
                    check::compare(before, after, told, first_read.elapsed().as_secs_f64())
                }
                Err(e) => Check::unreadable(Some(before), format!("{e:#}")),
            }
        }
    };
    let report = build_report(&shared, results, duration_s, timed_out, check)?;
    write_outputs(&shared.args, &report)?;
    Ok(report)
}

/// Starts the connection tasks and the helpers, and waits for the connections. Answers their
/// results and whether `--max-seconds` stopped them.
async fn drive(shared: &Arc<Shared>, connections: u64) -> anyhow::Result<(Vec<ConnResult>, bool)> {
    let threads = shared
        .args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
        .clamp(1, connections);
    let workers: Vec<_> = (0..threads as usize)
        .map(|t| spawn_thread(shared.clone(), t, threads as usize))
        .collect::<anyhow::Result<_>>()?;
    let timed_out = Arc::new(AtomicBool::new(false));
    let timer = {
        let (shared, timed_out) = (shared.clone(), timed_out.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(shared.args.max_seconds)).await;
            timed_out.store(true, Ordering::Relaxed);
            shared.stop.store(true, Ordering::Relaxed);
        })
    };
    let show_bar = !shared.args.quiet && std::io::stderr().is_terminal();
    let bar = show_bar.then(|| tokio::spawn(progress::bar(shared.clone())));
    let sampler =
        (!shared.args.no_check).then(|| tokio::spawn(progress::sample_stock(shared.clone())));
    let mut results = Vec::with_capacity(connections as usize);
    for w in workers {
        results.extend(w.await.context("a generator thread failed")?);
    }
    timer.abort();
    for t in [bar, sampler].into_iter().flatten() {
        t.abort();
        let _ = t.await;
    }
    if show_bar {
        progress::clear();
    }
    Ok((results, timed_out.load(Ordering::Relaxed)))
}

/// Generator thread `t` of `n`: its own single-threaded runtime running connections `t`,
/// `t + n`, … to their end, like wrk's threads each with their own event loop. One runtime per
/// core spares every request the multi-threaded scheduler's cross-thread wake-ups (the I/O
/// driver of one thread waking a task on the other), which was a visible share of the
/// generator's CPU on two cores. Answers the connections' results when they are done.
fn spawn_thread(
    shared: Arc<Shared>,
    t: usize,
    n: usize,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<Vec<ConnResult>>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let connections = shared.progress.len();
    std::thread::Builder::new()
        .name(format!("bench-{t}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            let results = runtime.block_on(async {
                let tasks: Vec<_> = (t..connections)
                    .step_by(n)
                    .map(|i| tokio::spawn(conn::run_connection(shared.clone(), i)))
                    .collect();
                let mut results = Vec::with_capacity(tasks.len());
                for task in tasks {
                    // A panicking task drops `tx` unanswered: the caller reports the failure.
                    results.push(task.await.expect("a connection task panicked"));
                }
                results
            });
            let _ = tx.send(results);
        })
        .context("cannot start a generator thread")?;
    Ok(rx)
}

fn told(results: &[ConnResult]) -> check::Told {
    let mut c = Counts::default();
    for r in results {
        c.add(&r.counts);
    }
    let early = early_sold_out(results);
    check::Told {
        winners: c.succeeded,
        unknown: c.errors,
        paid: c.paid,
        pay_unknown: c.pay_unknown,
        sold_out: c.sold_out,
        sold_out_left: 0,
        early_sold_out: early.count,
    }
}

/// Users told `sold_out` by sales that ended with tickets available (`each`: the sales after
/// the run, in `--sale` order).
fn sold_out_left(results: &[ConnResult], each: &[check::SaleCounts]) -> u64 {
    each.iter()
        .enumerate()
        .filter(|(_, c)| c.available > 0)
        .map(|(i, _)| results.iter().map(|r| r.sold_out_by_sale[i]).sum::<u64>())
        .sum()
}

/// `sold_out` answers that arrived before some request that went on to win was sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EarlySoldOut {
    pub count: u64,
    /// A connection kept fewer answer times than it had early ones: `count` is a lower bound.
    pub at_least: bool,
}

/// Counts the certain phantoms: a user told `sold_out` while a ticket of that sale was still
/// to be had by someone who asked later. In a sale with no payment, cancellation or expiry
/// during the run, every one of them is a false answer. Each connection keeps its earliest
/// `sold_out` times (the ones that can be early).
pub fn early_sold_out(results: &[ConnResult]) -> EarlySoldOut {
    let sales = results.first().map_or(0, |r| r.last_win_sent_us.len());
    let last_win: Vec<Option<u64>> = (0..sales)
        .map(|s| results.iter().filter_map(|r| r.last_win_sent_us[s]).max())
        .collect();
    let mut e = EarlySoldOut::default();
    for r in results {
        let early = |&(t, s): &(u64, u32)| last_win[s as usize].is_some_and(|w| t < w);
        let n = r.sold_out_at_us.iter().filter(|x| early(x)).count();
        e.count += n as u64;
        // All kept times early, and the list full: there may be more than counted.
        e.at_least |= n == r.times_max;
    }
    e
}

/// Time from the first to the last win among the final 1 % of the wins (at least one): how
/// long a sale's last tickets take to go. `None` without wins.
pub fn tail_of_wins(results: &[ConnResult], wins: u64) -> Option<f64> {
    let mut t: Vec<u64> = results
        .iter()
        .flat_map(|r| r.won_at_us.iter().copied())
        .collect();
    if t.is_empty() {
        return None;
    }
    t.sort_unstable();
    let n = (wins.div_ceil(100) as usize).clamp(1, t.len());
    let tail = &t[t.len() - n..];
    Some((tail[tail.len() - 1] - tail[0]) as f64 / 1000.0)
}

fn build_report(
    shared: &Shared,
    results: Vec<ConnResult>,
    duration_s: f64,
    timed_out: bool,
    check: Check,
) -> anyhow::Result<Report> {
    let args = &shared.args;
    let mut counts = Counts::default();
    let mut latency = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?;
    let mut win_latency = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?;
    let mut by_node = BTreeMap::new();
    let mut gave_up_on_target = false;
    let mut last_success = None;
    for r in &results {
        counts.add(&r.counts);
        // The tasks count in u32 (half the memory); the merged histogram counts in u64.
        for v in r.latency_us.iter_recorded() {
            latency
                .record_n(v.value_iterated_to(), u64::from(v.count_at_value()))
                .context("merging histograms")?;
        }
        for &us in &r.wins.latency_us {
            win_latency.saturating_record_n(u64::from(us).max(1), r.wins.stride);
        }
        gave_up_on_target |= r.gave_up_on_target;
        last_success = last_success.max(r.last_success);
        for (node, n) in &r.by_node {
            let name = String::from_utf8_lossy(node.as_bytes()).into_owned();
            *by_node.entry(name).or_insert(0) += n;
        }
    }
    let users_not_done = args.users - counts.users_tried + counts.users_abandoned;
    let stopped = if timed_out {
        Stopped::MaxSeconds
    } else if gave_up_on_target && users_not_done > 0 {
        Stopped::TargetsUnreachable
    } else {
        Stopped::Completed
    };
    let requests = counts.requests();
    let duration_s = duration_s.max(1e-6);
    let available_at_start = check.before.as_ref().map(|b| b.available);
    Ok(Report {
        targets: args.targets.iter().map(|t| t.to_string()).collect(),
        sale: args.sale().to_string(),
        sales: args.sales.len(),
        endpoint: args.endpoint,
        users: args.users,
        connections: shared.progress.len() as u64,
        requests,
        succeeded: counts.succeeded,
        sold_out: counts.sold_out,
        other: counts.other,
        errors: counts.errors,
        overloaded: counts.overloaded,
        users_tried: counts.users_tried,
        users_gave_up: counts.users_gave_up,
        users_not_done,
        duration_s,
        rps: requests as f64 / duration_s,
        latency_ms: Latency::of(&latency),
        win_latency_ms: Latency::of(&win_latency),
        last_success_s: last_success.map(|d| d.as_secs_f64()),
        early_sold_out: early_sold_out(&results).count,
        tail_ms: tail_of_wins(&results, counts.succeeded),
        by_node,
        payments: Payments {
            attempted: counts.pay_attempted,
            paid: counts.paid,
            refused: counts.pay_refused,
            unknown: counts.pay_unknown,
        },
        stopped,
        check,
        timeline: shared.timeline.points(duration_s.ceil() as u32),
        wins_per_tick: shared.timeline.wins_per_tick(),
        available_at_start,
    })
}

fn write_outputs(args: &Args, report: &Report) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(report)?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write the JSON report to {}", path.display()))?;
    }
    if let Some(path) = &args.chart {
        std::fs::write(path, chart::svg(report))
            .with_context(|| format!("cannot write the chart to {}", path.display()))?;
    }
    Ok(())
}

/// The `ticketrush bench` command: runs, prints the report on stdout, and fails (exit 1) when
/// the oversell/few-sell check failed.
pub async fn command(args: Args) -> anyhow::Result<()> {
    if args.queue {
        return queue::command(args).await;
    }
    let report = run(args).await?;
    println!("{report}");
    if !report.passed() {
        anyhow::bail!(
            "the check failed: {}",
            report.check.notes.first().map_or("", String::as_str)
        );
    }
    Ok(())
}
