//! `ticketrush demo`, the real binary end to end: it sells every ticket through the weighted
//! tier and passes its audit, over the embedded store and over a real Redis, removes its temp
//! dir also when it fails, and refuses bad flags with exit 2.
//!
//! Every run is bounded twice: `--max-seconds` inside the demo, and a timeout around the
//! process here (killed on drop), so a hung demo fails the test instead of hanging the suite.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use ticketrush_testkit::redis_server::RedisServer;
use ticketrush_testkit::TempDir;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `ticketrush demo ARGS` with its temp dirs under `tmp`.
async fn demo(args: &[&str], tmp: &Path) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .arg("demo")
        .args(args)
        .env("TMPDIR", tmp)
        .env_remove("TICKETRUSH_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("demo finished within 120 s")
        .expect("run ticketrush demo");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The summary's `(weight, sold)` per node, in node order, from lines like
/// `  node-2   weight  2 ( 33.3 %)  sold         148 ( 29.6 %)`.
fn sold_by_node(stdout: &str) -> Vec<(u64, u64)> {
    let number_after = |line: &str, word: &str| -> u64 {
        let rest = &line[line.find(word).unwrap() + word.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ',')
            .filter(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    stdout
        .lines()
        .filter(|l| l.starts_with("  node-") && l.contains(" sold "))
        .map(|l| (number_after(l, "weight"), number_after(l, "sold")))
        .collect()
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sells_every_ticket_through_weighted_nodes_and_passes_its_audit() {
    let tmp = TempDir::new("demo-tmp");
    let out = TempDir::new("demo-out");
    let json = out.0.join("report.json");
    let json_arg = json.to_str().unwrap();
    let args = [
        "--users",
        "3000",
        "--tickets",
        "500",
        "--nodes",
        "3",
        "--max-seconds",
        "60",
        "--json",
        json_arg,
    ];

    let run = demo(&args, &tmp.0).await;

    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "reservations reserved 500 paid 0 cancelled 0 expired 0, order rows 500\nPASSED"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("demo passed: 500 of 500 tickets"));
    let nodes = sold_by_node(&run.stdout);
    let weights: Vec<u64> = nodes.iter().map(|(w, _)| *w).collect();
    assert_eq!(weights, [1, 2, 3], "{}", run.stdout);
    assert_eq!(nodes.iter().map(|(_, s)| s).sum::<u64>(), 500);
    // Every win is decided where its request arrives, so shares follow the gateway's weights;
    // loosely checked here (sell-out ends the run): every node sold, and the weight-3 node
    // sold more than the weight-1 node.
    assert!(nodes.iter().all(|(_, s)| *s > 0), "{}", run.stdout);
    assert!(nodes[2].1 > nodes[0].1, "{}", run.stdout);
    // The generator's report agrees with the summary.
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["succeeded"], 500);
    assert_eq!(report["requests"], 3000);
    assert_eq!(report["by_node"]["node-3"], nodes[2].1);
    assert_eq!(report["early_sold_out"], 0, "{}", run.stdout);
    // The temp data dir is gone.
    assert!(is_empty_dir(&tmp.0), "left behind in {:?}", tmp.0);
}

/// The first version's phantom, through the whole tier: as many users as tickets over four
/// nodes sharing the embedded store. Every user wins; nobody is told `sold_out`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_as_many_users_as_tickets_sells_to_every_user() {
    let tmp = TempDir::new("demo-fair");
    let out = TempDir::new("demo-fair-out");
    let json = out.0.join("report.json");
    let args = [
        "--users",
        "4000",
        "--tickets",
        "4000",
        "--nodes",
        "4",
        "--max-seconds",
        "60",
        "--json",
        json.to_str().unwrap(),
    ];
    let run = demo(&args, &tmp.0).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["succeeded"], 4000, "{}", run.stdout);
    assert_eq!(report["sold_out"], 0, "{}", run.stdout);
    assert_eq!(report["early_sold_out"], 0, "{}", run.stdout);
    assert!(
        run.stdout.contains("demo passed: 4,000 of 4,000 tickets"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_over_redis_passes_and_reruns_do_not_collide() {
    let redis = RedisServer::start();
    let tmp = TempDir::new("demo-redis");
    let url = redis.url();
    let args = [
        "--redis",
        &url,
        "--users",
        "800",
        "--tickets",
        "200",
        "--nodes",
        "2",
        "--connections",
        "20",
        "--max-seconds",
        "60",
    ];
    // Twice on one Redis: each run makes its own sale.
    for _ in 0..2 {
        let run = demo(&args, &tmp.0).await;
        assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("\nPASSED\n"), "{}", run.stdout);
        assert!(run.stdout.contains("demo passed: 200 of 200 tickets"));
        let nodes = sold_by_node(&run.stdout);
        assert_eq!(nodes.len(), 2, "{}", run.stdout);
        assert_eq!(nodes.iter().map(|(_, s)| s).sum::<u64>(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_demo_exits_1_and_still_removes_its_temp_dir() {
    let tmp = TempDir::new("demo-fail");
    // The report cannot be written: the run itself goes through, then the demo fails.
    let run = demo(
        &[
            "--users",
            "200",
            "--tickets",
            "50",
            "--nodes",
            "2",
            "--json",
            "/nonexistent-dir/report.json",
        ],
        &tmp.0,
    )
    .await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("JSON report"), "{}", run.stderr);
    assert!(is_empty_dir(&tmp.0), "left behind in {:?}", tmp.0);

    // Nothing listens on port 1: the demo cannot reach Redis and says so.
    let run = demo(&["--redis", "redis://127.0.0.1:1"], &tmp.0).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("cannot reach redis"), "{}", run.stderr);
}

#[test]
fn bad_demo_flags_exit_2() {
    let run = |args: &[&str], env: Option<(&str, &str)>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"));
        cmd.arg("demo").args(args).env_remove("TICKETRUSH_LOG");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run ticketrush");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases: &[(&[&str], &str)] = &[
        (&["--users", "0"], "--users"),
        (&["--users", "100000001"], "--users"),
        (&["--tickets", "0"], "--tickets"),
        (&["--tickets", "1000000001"], "--tickets"),
        (&["--nodes", "0"], "--nodes"),
        (&["--nodes", "17"], "--nodes"),
        (&["--connections", "0"], "--connections"),
        (&["--connections", "10001"], "--connections"),
        (&["--max-seconds", "0"], "--max-seconds"),
        (&["--redis", "http://127.0.0.1:6379"], "redis://"),
        (
            &["--redis", "redis://127.0.0.1:1", "--data-dir", "d"],
            "--data-dir",
        ),
        (&["--no-such-flag"], "--no-such-flag"),
    ];
    for (args, needle) in cases {
        let (code, stderr) = run(args, None);
        assert_eq!(code, Some(2), "{args:?} should exit 2; stderr: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // Every flag reads TICKETRUSH_<FLAG> too, with the same bounds.
    let (code, stderr) = run(&[], Some(("TICKETRUSH_NODES", "17")));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--nodes"), "{stderr}");
}

/// Many trains at once: users pick a sale by a skewed popularity, the popular ones sell out,
/// the rest stay open; every sale is audited, and the generator's check holds over all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_many_sales_audits_each() {
    let tmp = TempDir::new("demo-sales");
    let args = [
        "--sales",
        "12",
        "--tickets",
        "60",
        "--users",
        "1500",
        "--nodes",
        "2",
        "--max-seconds",
        "60",
    ];
    let run = demo(&args, &tmp.0).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("12 sales:"), "{}", run.stdout);
    assert!(
        run.stdout.contains("audit passed for 12 of 12"),
        "{}",
        run.stdout
    );
    // The most popular train sells out; the least popular does not (1,500 users over 12
    // trains by Zipf: the last gets about 40 of its 60).
    let line = |i: usize| {
        run.stdout
            .lines()
            .find(|l| l.trim_start().starts_with("demo-") && l.contains(&format!("-{i} ")))
            .unwrap_or_else(|| panic!("no line for sale {i}: {}", run.stdout))
            .to_string()
    };
    assert!(line(1).contains("sold out"), "{}", line(1));
    assert!(line(12).contains("open"), "{}", line(12));
}

/// `demo --hold`: the run's dashboard URL is printed at the start; after the run the tier stays
/// up (its dashboard answers) until SIGINT, and then the audit runs and the demo passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_hold_keeps_the_dashboard_up_until_interrupted() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let tmp = TempDir::new("demo-hold");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args([
            "demo",
            "--users",
            "3000",
            "--tickets",
            "100",
            "--nodes",
            "2",
        ])
        .args(["--connections", "20", "--max-seconds", "60", "--hold"])
        .env("TMPDIR", &tmp.0)
        .env_remove("TICKETRUSH_LOG")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run ticketrush demo --hold");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let mut dashboard = None;
    let held = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(url) = line.trim().strip_prefix("dashboard ") {
                dashboard = url.split_whitespace().next().map(str::to_string);
            }
            if line.starts_with("run finished; holding") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the demo held within 90 s");
    assert!(held, "{seen}");
    let url = dashboard.unwrap_or_else(|| panic!("no dashboard URL printed: {seen}"));
    // Held: the run is over, and the tier still answers.
    let page = reqwest::get(&url)
        .await
        .expect("the dashboard answers while held");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("data-kind=\"gateway\""));
    let pid = child.id().unwrap().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status();
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        let mut rest = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    })
    .await
    .expect("the demo ended within 60 s of SIGINT");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{seen}{rest}");
    assert!(
        rest.contains("PASSED") && rest.contains("demo passed"),
        "{rest}"
    );
    assert!(
        reqwest::get(&url).await.is_err(),
        "the tier still answers after the demo"
    );
}
