//! `ticketrush bench` against a real node on loopback: the report's counts equal what the
//! store holds, its figures are consistent, a target that dies mid-run ends the run by itself
//! with the report still written, and bad flags exit 2.

use std::time::Duration;

use serde_json::{json, Value};
use ticketrush_bench::{Args, Endpoint, Report, Stopped, Target};
use ticketrush_core::SaleId;

use ticketrush_testkit::{wait_until, TempDir, TestNode};

fn args_for(node: &TestNode, sale: &str, users: u64) -> Args {
    let target = Target::parse(&format!("http://{}", node.addr)).unwrap();
    let mut args = Args::new(vec![target], SaleId::parse(sale).unwrap(), users);
    args.connections = 8;
    args.max_seconds = 60;
    args
}

/// The figures of any report agree with each other.
fn assert_consistent(r: &Report) {
    assert_eq!(r.requests, r.succeeded + r.sold_out + r.other + r.errors);
    assert!((r.rps - r.requests as f64 / r.duration_s).abs() < 1e-6 * r.rps.max(1.0));
    let l = &r.latency_ms;
    assert!(l.p50 > 0.0, "{l:?}");
    assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
    assert_eq!(r.by_node.values().sum::<u64>(), r.succeeded);
    // Below a connection's share of about 8 million wins the winners' latency covers each
    // of them exactly.
    let w = &r.win_latency_ms;
    assert_eq!(w.samples, r.succeeded);
    if r.succeeded > 0 {
        assert!(
            w.p50 > 0.0 && w.p50 <= w.p99 && w.p99 <= w.max && w.max <= l.max,
            "{w:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_counts_equal_what_the_store_holds() {
    let node = TestNode::start().await;
    assert_eq!(
        node.client.create_sale("b1", 300, json!({})).await.status,
        201
    );
    let dir = TempDir::new("bench");
    let mut args = args_for(&node, "b1", 2_000);
    args.json = Some(dir.0.join("report.json"));
    args.chart = Some(dir.0.join("chart.svg"));

    let r = ticketrush_bench::run(args).await.unwrap();

    assert_consistent(&r);
    assert_eq!((r.requests, r.succeeded, r.sold_out), (2_000, 300, 1_700));
    assert_eq!((r.other, r.errors, r.stopped), (0, 0, Stopped::Completed));
    assert!(r.check.passed, "{:?}", r.check);
    assert_eq!(node.client.counts("b1").await, (0, 300, 0, 300));
    assert_eq!(r.by_node.get("test-node"), Some(&300));
    let file: Value = serde_json::from_slice(&std::fs::read(dir.0.join("report.json")).unwrap())
        .expect("the JSON report parses");
    for key in [
        "requests",
        "succeeded",
        "sold_out",
        "errors",
        "duration_s",
        "rps",
    ] {
        assert!(file[key].is_number(), "{key} in {file}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(file["latency_ms"][key].is_number(), "latency_ms.{key}");
        assert!(
            file["win_latency_ms"][key].is_number(),
            "win_latency_ms.{key}"
        );
    }
    assert_eq!(file["win_latency_ms"]["samples"], 300);
    assert_eq!(file["succeeded"], 300);
    let svg = std::fs::read_to_string(dir.0.join("chart.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_winners_are_paid_in_the_store() {
    let node = TestNode::start().await;
    assert_eq!(
        node.client.create_sale("b2", 200, json!({})).await.status,
        201
    );
    let mut args = args_for(&node, "b2", 1_000);
    args.pay_ratio = 0.5;

    let r = ticketrush_bench::run(args).await.unwrap();

    assert_consistent(&r);
    assert_eq!(r.succeeded, 200);
    assert!(r.check.passed, "{:?}", r.check);
    let (available, reserved, paid, _) = node.client.counts("b2").await;
    assert_eq!(paid, r.payments.paid);
    assert_eq!((available, reserved), (0, 200 - paid));
    // Each of the 8 connections pays every second winner it got: half, give or take one each.
    assert!((92..=100).contains(&paid), "paid {paid}");
    assert_eq!((r.payments.refused, r.payments.unknown), (0, 0));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prototype_endpoint_counts_the_same() {
    let node = TestNode::start().await;
    assert_eq!(
        node.client.create_sale("b3", 100, json!({})).await.status,
        201
    );
    let mut args = args_for(&node, "b3", 500);
    args.endpoint = Endpoint::BuyTicket;

    let r = ticketrush_bench::run(args).await.unwrap();

    assert_consistent(&r);
    assert_eq!(
        (r.succeeded, r.sold_out, r.other, r.errors),
        (100, 400, 0, 0)
    );
    assert!(r.check.passed, "{:?}", r.check);
    assert_eq!(node.client.counts("b3").await, (0, 100, 0, 100));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_dies_mid_run_ends_the_run_and_the_report_is_written() {
    let node = TestNode::start().await;
    let client = node.client.clone();
    assert_eq!(
        client.create_sale("b4", 1_000_000, json!({})).await.status,
        201
    );
    let dir = TempDir::new("bench-dies");
    let mut args = args_for(&node, "b4", 10_000_000);
    args.connections = 4;
    args.give_up_seconds = 1;
    args.json = Some(dir.0.join("report.json"));
    let run = tokio::spawn(ticketrush_bench::run(args));

    // How: stop the node once the run has visibly reserved, then wait (bounded) for the run.
    let selling = wait_until(Duration::from_secs(20), || {
        let client = client.clone();
        async move { client.counts("b4").await.1 >= 50 }
    })
    .await;
    assert!(selling, "the run never reserved anything");
    node.stop().await;
    let r = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run ends by itself once the target is gone")
        .unwrap()
        .expect("a dead target is a report, not an error");

    assert_consistent(&r);
    assert_eq!(r.stopped, Stopped::TargetsUnreachable);
    assert!(r.errors > 0 && r.users_not_done > 0, "{r:?}");
    assert!(
        !r.check.passed,
        "the sale cannot be read back: {:?}",
        r.check
    );
    let file: Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("report.json")).unwrap()).unwrap();
    assert_eq!(file["errors"], r.errors);
    assert_eq!(file["stopped"], "targets_unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_0_when_the_check_passes() {
    let node = TestNode::start().await;
    assert_eq!(
        node.client.create_sale("b5", 50, json!({})).await.status,
        201
    );
    let dir = TempDir::new("bench-bin");
    let json_path = dir.0.join("r.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args([
            "bench",
            "--sale",
            "b5",
            "--users",
            "300",
            "--connections",
            "4",
        ])
        .arg("--target")
        .arg(format!("http://{}", node.addr))
        .arg("--json")
        .arg(&json_path)
        .env_remove("TICKETRUSH_LOG")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("check      passed"), "{stdout}");
    let file: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(
        (file["succeeded"].as_u64(), file["requests"].as_u64()),
        (Some(50), Some(300))
    );
    node.stop().await;
}

#[test]
fn bad_flags_exit_2_and_an_unreadable_sale_exits_1() {
    let run = |args: &[&str]| crate::cli::run(&[&["bench"], args].concat());
    let ok = ["--target", "http://127.0.0.1:1", "--sale", "s"];
    let cases: &[(&[&str], &str)] = &[
        (&["--users", "0"], "--users"),
        (&["--users", "100000001"], "--users"),
        (&["--connections", "0"], "--connections"),
        (&["--connections", "10001"], "--connections"),
        (&["--pay-ratio", "1.5"], "--pay-ratio"),
        (&["--retries", "11"], "--retries"),
        (&["--max-seconds", "0"], "--max-seconds"),
        (&["--endpoint", "nope"], "--endpoint"),
        (&["--target", "not a url"], "--target"),
        (&["--target", "https://127.0.0.1:1"], "http://"),
    ];
    for (extra, needle) in cases {
        // A repeated --target adds a target, so the bad one is still parsed.
        let args: Vec<&str> = ok.iter().chain(extra.iter()).copied().collect();
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?} should exit 2; stderr: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr should mention {needle:?}: {stderr}"
        );
    }
    let (code, stderr) = run(&["--target", "http://127.0.0.1:1", "--sale", "bad id"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--sale"), "{stderr}");
    let (code, stderr) = run(&["--sale", "s"]);
    assert_eq!(code, Some(2), "--target is required: {stderr}");
    let (code, stderr) = run(&ok);
    assert_eq!(code, Some(1), "nothing listens on port 1: {stderr}");
    assert!(stderr.contains("cannot read sale"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_answered_429_retry_after_retry_after() {
    // How: a node that lets one reservation wait for the store sheds most of 16 concurrent
    // connections with 429; those users come back after Retry-After (1 s), up to 3 times.
    let mut config = ticketrush_testkit::config("test-node");
    config.pending_max = 1;
    config.batch_wait = Duration::from_millis(5);
    let node = TestNode::start_with(config).await;
    assert_eq!(
        node.client.create_sale("b6", 1_000, json!({})).await.status,
        201
    );
    let mut args = args_for(&node, "b6", 400);
    args.connections = 16;

    let r = ticketrush_bench::run(args).await.unwrap();

    assert_consistent(&r);
    assert!(r.overloaded > 0, "nothing was shed: {r:?}");
    assert_eq!(r.other, r.overloaded, "429 is the only other answer");
    assert_eq!(r.requests, 400 + r.overloaded, "one more request per 429");
    assert_eq!(r.succeeded + r.users_gave_up, 400);
    assert!(r.check.passed, "{:?}", r.check);
    assert_eq!(node.client.counts("b6").await.1, r.succeeded);
    node.stop().await;
}

/// `bench --queue` through a real waiting room: everyone admitted in line order at the set
/// rate, the pre-queue shuffled, exactly the stock bought, nobody refused; the report's counts
/// equal the sale's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_queue_goes_through_the_waiting_room() {
    let node = TestNode::start().await;
    let opens = ticketrush_core::UnixMs(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            + 1_500,
    );
    let created = node
        .client
        .create_sale(
            "bq",
            250,
            json!({"opens_at": opens.to_rfc3339(), "queue": {"admit_per_second": 200}}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let mut args = args_for(&node, "bq", 400);
    args.connections = 40;
    args.queue = true;
    let r = ticketrush_bench::queue::run(args).await.unwrap();
    assert!(r.passed(), "{r}");
    assert_eq!((r.joined, r.admitted), (400, 400), "{r}");
    assert_eq!((r.bought, r.sold_out), (250, 150), "{r}");
    assert_eq!(r.out_of_order, 0);
    assert!((r.admit_rate_measured - 200.0).abs() < 2.0, "{r}");
    if r.joined_before_opening >= 100 {
        let c = r.pre_queue_rank_correlation.unwrap();
        assert!(c.abs() < 0.5, "the pre-queue was not shuffled: {r}");
    }
    if r.joined - r.joined_before_opening >= 3 {
        assert!(r.later_rank_correlation.unwrap() > 0.99, "{r}");
    }
    assert!(r.wait_s[0] <= r.wait_s[1] && r.wait_s[1] <= r.wait_s[2] && r.wait_s[2] <= r.wait_s[3]);
    assert_eq!(node.client.counts("bq").await, (0, 250, 0, 250));
    node.stop().await;
}
