//! The live view as a person sees it: headless Chromium (Debian's `chromium`; scripts/test
//! installs it) renders `/dashboard` of a live node and of a gateway, and the DOM it built is
//! checked against the API. Screenshots go to the test's temp dir under `target/` (not
//! committed) for a person to look at. Also: the stock gauges and `build_info` of `/metrics`,
//! the gateway's own `/metrics`, and the Grafana board's metric names.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use ticketrush_gateway::NodeSpec;

use ticketrush_testkit::{config, Client, TempDir, TestNode};

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("chromium is not installed: scripts/test installs it (apt-get install chromium)");
}

/// The DOM Chromium builds from `url` after the page's scripts ran for `budget` of virtual
/// time (its polls included). With `screenshot`, also a PNG of the page.
pub(crate) async fn render(
    url: &str,
    budget: Duration,
    screenshot: Option<&std::path::Path>,
) -> String {
    let profile = TempDir::new("chromium");
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,1100",
    ])
    .arg(format!("--user-data-dir={}", profile.0.display()))
    .arg(format!("--virtual-time-budget={}", budget.as_millis()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        cmd.arg(url).kill_on_drop(true).output(),
    )
    .await
    .expect("chromium finished within 90 s")
    .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element `<tag ... data-field="FIELD">TEXT<` inside the row `row_attr`.
fn field_in_row(dom: &str, row_attr: &str, field: &str) -> Option<String> {
    let row_start = dom.find(row_attr)?;
    let row = &dom[row_start..];
    let row = &row[..row.find("</tr>")?];
    let at = row.find(&format!("data-field=\"{field}\""))?;
    let text = &row[at..];
    let text = &text[text.find('>')? + 1..];
    Some(text[..text.find('<')?].to_string())
}

fn screenshot_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Buyers on `sale` until `stop`, one new user per request.
fn burst(c: &Client, sale: &str, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|w| {
            let (c, sale, stop) = (c.clone(), sale.to_string(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = c.reserve(&sale, &format!("b{w}-{i}")).await;
                    i += 1;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dashboard_shows_the_sales_counts_and_moves_during_a_burst() {
    let node = TestNode::start_with(config("dash-node")).await;
    let c = node.client.clone();
    assert_eq!(c.create_sale("quiet", 50, json!({})).await.status, 201);
    for i in 0..7 {
        let a = c.reserve("quiet", &format!("u{i}")).await;
        assert_eq!(a.status, 201);
        if i < 3 {
            let id = a.body["reservation_id"].as_str().unwrap().to_string();
            let paid = c.pay(&id, &format!("u{i}")).await;
            assert_eq!(paid.status, 200, "{:?}", paid.body);
        }
    }
    let url = format!("http://{}/dashboard", node.addr);

    // The page (rendered by a browser) shows the same counts as the API.
    let dom = render(&url, Duration::from_millis(2_500), None).await;
    assert!(dom.contains("ticketrush node dash-node"), "{dom}");
    let (available, reserved, paid, total) = c.counts("quiet").await;
    assert_eq!((available, reserved, paid, total), (43, 4, 3, 50));
    let row = "data-sale=\"quiet\"";
    for (field, want) in [
        ("total", total),
        ("available", available),
        ("reserved", reserved),
        ("paid", paid),
    ] {
        assert_eq!(
            field_in_row(&dom, row, field).as_deref(),
            Some(want.to_string().as_str()),
            "{field} in {dom}"
        );
    }

    // During a burst two renders a second apart differ.
    assert_eq!(
        c.create_sale("busy", 10_000_000, json!({})).await.status,
        201
    );
    let stop = Arc::new(AtomicBool::new(false));
    let buyers = burst(&c, "busy", &stop);
    let first = render(&url, Duration::from_millis(1_500), None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = render(&url, Duration::from_millis(1_500), None).await;
    let shot = screenshot_path("node.png");
    render(&url, Duration::from_millis(3_000), Some(&shot)).await;
    stop.store(true, Ordering::Relaxed);
    for b in buyers {
        b.await.unwrap();
    }
    let busy = "data-sale=\"busy\"";
    let (a1, a2) = (
        field_in_row(&first, busy, "available").expect("busy row in the first render"),
        field_in_row(&second, busy, "available").expect("busy row in the second render"),
    );
    assert_ne!(a1, a2, "the page did not move during a burst");
    let (a1, a2): (u64, u64) = (a1.parse().unwrap(), a2.parse().unwrap());
    assert!(a2 < a1, "available went from {a1} to {a2}");
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        shot.display()
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_loads_nothing_from_another_host() {
    let node = TestNode::start_with(config("dash-self")).await;
    for path in ["/dashboard"] {
        let r = reqwest::get(format!("http://{}{path}", node.addr))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = r.text().await.unwrap();
        assert!(
            html.contains("<canvas") || html.contains("chart("),
            "not the page"
        );
        for needle in ["src=", "href=", "url(", "@import", "://"] {
            assert!(!html.contains(needle), "the page contains {needle:?}");
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_dashboard_lists_each_node_with_its_weight_and_health() {
    // Two nodes selling from one store, as a tier does.
    let shared_dir = TempDir::new("gw-store");
    let (store, _) = ticketrush_orders::open_embedded(&shared_dir.0).expect("open store");
    let store: Arc<dyn ticketrush_store::Store> = Arc::new(store);
    let a = TestNode::start_on(config("gw-a"), store.clone(), TempDir::new("gw-a")).await;
    let b = TestNode::start_on(config("gw-b"), store, TempDir::new("gw-b")).await;
    // A third node that is not there: the gateway marks it skipped after its first failure.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = ticketrush_testkit::gateway::start_gateway(
        vec![
            NodeSpec {
                addr: a.addr,
                weight: 1,
            },
            NodeSpec {
                addr: b.addr,
                weight: 3,
            },
            NodeSpec {
                addr: dead,
                weight: 2,
            },
        ],
        // Long enough that the dead node is still skipped when a slow headless browser (a
        // loaded CI machine) finally renders the page; 10 s was not (it read `failing`).
        Duration::from_secs(300),
    )
    .await;
    let through = Client::new(gw.addr);
    assert_eq!(
        through.create_sale("via-gw", 100, json!({})).await.status,
        201
    );
    for i in 0..12 {
        assert_eq!(
            through.reserve("via-gw", &format!("g{i}")).await.status,
            201
        );
    }
    let url = format!("http://{}/dashboard", gw.addr);
    let dom = render(&url, Duration::from_millis(2_500), None).await;
    render(
        &url,
        Duration::from_millis(2_500),
        Some(&screenshot_path("gateway.png")),
    )
    .await;
    assert!(dom.contains("ticketrush gateway"), "{dom}");
    for (addr, weight, health) in [(a.addr, 1, "up"), (b.addr, 3, "up"), (dead, 2, "skipped")] {
        let row = format!("data-node=\"{addr}\"");
        assert_eq!(
            field_in_row(&dom, &row, "weight").as_deref(),
            Some(weight.to_string().as_str()),
            "{addr} in {dom}"
        );
        let shown = field_in_row(&dom, &row, "health").unwrap_or_default();
        assert!(shown.starts_with(health), "{addr}: {shown:?}");
    }
    // The sale's counts, as a node answers them through the gateway.
    assert_eq!(
        field_in_row(&dom, "data-sale=\"via-gw\"", "available").as_deref(),
        Some("88")
    );

    // The gateway's own figures: its stats and its metrics, not a node's.
    let stats: serde_json::Value = reqwest::get(format!("http://{}/gateway/stats", gw.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent: u64 = stats["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["requests"].as_u64().unwrap())
        .sum();
    assert!(sent >= 13, "{stats}");
    let metrics = get_text(&format!("http://{}/metrics", gw.addr)).await;
    assert!(
        metrics.contains(&format!(
            "ticketrush_gateway_node_weight{{node=\"{}\"}} 3",
            b.addr
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("ticketrush_gateway_node_up{{node=\"{dead}\"}} 0")),
        "{metrics}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_stock_gauges_and_build_info_and_the_grafana_board_uses_only_real_names() {
    let node = TestNode::start_with(config("gauges")).await;
    let c = node.client.clone();
    assert_eq!(c.create_sale("g", 20, json!({})).await.status, 201);
    for i in 0..5 {
        assert_eq!(c.reserve("g", &format!("u{i}")).await.status, 201);
    }
    let text = get_text(&format!("http://{}/metrics", node.addr)).await;
    assert!(
        text.contains("ticketrush_sale_tickets{sale=\"g\",state=\"available\"} 15"),
        "{text}"
    );
    assert!(
        text.contains("ticketrush_sale_tickets{sale=\"g\",state=\"reserved\"} 5"),
        "{text}"
    );
    assert!(text.contains("ticketrush_build_info{version=\""), "{text}");

    // Every metric the Grafana board queries exists on a node, a gateway or an order writer.
    let mut known = text.clone();
    ticketrush_orders::writer::WriterStats::default().render(&mut known);
    let gw = ticketrush_testkit::gateway::start_gateway(
        vec![NodeSpec {
            addr: node.addr,
            weight: 1,
        }],
        Duration::from_secs(10),
    )
    .await;
    known.push_str(&get_text(&format!("http://{}/metrics", gw.addr)).await);
    let board = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana/ticketrush.json"),
    )
    .expect("docs/grafana/ticketrush.json");
    let board: serde_json::Value = serde_json::from_str(&board).expect("the board is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&board, &mut exprs);
    assert!(exprs.len() >= 6, "{exprs:?}");
    for e in &exprs {
        for name in metric_names(e) {
            let present = known.lines().any(|l| {
                !l.starts_with('#')
                    && (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            });
            assert!(
                present,
                "the board queries {name} (in {e:?}), which nothing exports"
            );
        }
    }
    node.stop().await;
}

async fn get_text(url: &str) -> String {
    let r = reqwest::get(url).await.expect("GET");
    assert_eq!(r.status(), 200, "{url}");
    r.text().await.expect("a text body")
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `ticketrush_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ticketrush_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
