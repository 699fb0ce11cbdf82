//! The live progress line on stderr, and the stock sampler for the chart.
//!
//! Hand-rolled rather than indicatif: one task every `TICK` sums the connection tasks' own
//! progress cells (so the hot path never touches a shared counter) and rewrites one line with
//! `\r`. That is all a bar needs here, without a dependency. It is drawn only when stderr is a
//! terminal, so scripts and tests get a quiet stderr.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::Shared;

const TICK: Duration = Duration::from_millis(250);
const BAR_WIDTH: usize = 30;
/// How often the sale's stock is read for the chart.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

fn answered(shared: &Shared) -> u64 {
    shared
        .progress
        .iter()
        .map(|p| p.0.load(Ordering::Relaxed))
        .sum()
}

/// Redraws the progress line until aborted.
pub async fn bar(shared: Arc<Shared>) {
    let mut last = (Instant::now(), 0u64);
    let mut stderr = std::io::stderr();
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        let done = answered(&shared);
        let rate = (done - last.1.min(done)) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, done);
        let tried = shared.next_user.0.load(Ordering::Relaxed).min(shared.users);
        let filled = (tried as f64 / shared.users as f64 * BAR_WIDTH as f64) as usize;
        let _ = write!(
            stderr,
            "\r[{}{}] {tried}/{} users  {done} requests  {:.0} req/s  {:.0} s   ",
            "=".repeat(filled),
            " ".repeat(BAR_WIDTH - filled.min(BAR_WIDTH)),
            shared.users,
            rate,
            shared.started.elapsed().as_secs_f64(),
        );
        let _ = stderr.flush();
    }
}

/// Clears the progress line.
pub fn clear() {
    let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(BAR_WIDTH + 80));
}

/// Reads the sale's `available` once a second into the timeline, until aborted.
pub async fn sample_stock(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let args = &shared.args;
        if let Ok((s, _)) = crate::check::read_sales(&args.targets, &args.sales).await {
            let second = shared.started.elapsed().as_secs() as u32;
            shared.timeline.set_available(second, s.available);
        }
    }
}
