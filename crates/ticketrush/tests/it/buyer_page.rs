//! The buyer's page (`GET /sales/{id}`) as a person sees it: headless Chromium (Debian's
//! `chromium`; scripts/test installs it) opens it for a sale with a waiting room, with
//! `?auto=1` so the page presses its own buttons, and the history the page keeps
//! (`<ol id="history">`) must show the countdown, the place in line moving forward, the
//! admission, the hold and the payment; the API must then agree that the ticket was bought.
//!
//! Chromium's virtual time (`--virtual-time-budget`) runs far faster than real time but stands
//! still while a fetch is pending, and the queue admits by the store's real clock. So Chromium
//! talks to the node through [`delaying_proxy`], which holds every chunk of every answer for
//! 250 ms: each poll of the page then costs real time, and the line moves while the page polls.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use ticketrush_core::UnixMs;
use ticketrush_testkit::{config, TestNode};

/// Buyers in the pre-queue besides the page's. The page's buyer is drawn uniformly among all of
/// them at the opening; near the head of the line there is nothing to watch move (the first is
/// admitted at the opening instant), so the more people, the likelier a draw with people ahead.
const OTHERS: usize = 19;
/// The sale opens this long after it is created: time to start Chromium (slow on a loaded
/// machine) and for the page to show its countdown and join before the opening.
const OPENS_IN_MS: i64 = 6_000;
/// Attempts (each with a new sale) at a draw that leaves the page's buyer people to wait for.
const ATTEMPTS: usize = 4;
/// No new attempt begins later than this after the test started (keeps the test under a minute).
const RETRY_WITHIN: Duration = Duration::from_secs(25);

/// The DOM Chromium builds from `url` after `budget` of virtual time (`dashboard.rs`'s).
async fn render(url: &str, budget: Duration) -> String {
    crate::dashboard::render(url, budget, None).await
}

/// A TCP proxy on a free loopback port in front of `to`: what the client sends goes on at
/// once; each chunk the node sends back is held for `delay` before it is passed on.
async fn delaying_proxy(
    to: SocketAddr,
    delay: Duration,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(node) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = node.set_nodelay(true);
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_node, mut to_node) = node.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_node).await;
                    let _ = to_node.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match from_node.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            tokio::time::sleep(delay).await;
                            if to_client.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = to_client.shutdown().await;
                up.abort();
            });
        }
    });
    (addr, task)
}

/// One item of the page's history: `<li data-stage="STAGE" data-position="N">TEXT</li>`.
#[derive(Debug)]
struct Shown {
    stage: String,
    position: Option<u64>,
    text: String,
}

/// The value of attribute `name` in a start tag's text (from `<` to `>`).
fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    let rest = &tag[at..];
    Some(rest[..rest.find('"')?].to_string())
}

/// The page's history, in order.
fn history(dom: &str) -> Vec<Shown> {
    let Some(start) = dom.find("id=\"history\"") else {
        return Vec::new();
    };
    let list = &dom[start..];
    let list = &list[..list.find("</ol>").unwrap_or(list.len())];
    list.split("<li")
        .skip(1)
        .map(|item| {
            let end = item.find('>').unwrap_or(item.len());
            let tag = &item[..end];
            let text = item.get(end + 1..).unwrap_or("");
            let text = &text[..text.find("</li>").unwrap_or(text.len())];
            Shown {
                stage: attr(tag, "data-stage").unwrap_or_default(),
                position: attr(tag, "data-position").and_then(|p| p.parse().ok()),
                text: text.to_string(),
            }
        })
        .collect()
}

/// The stage the page shows last (`<body data-stage=...>`).
fn body_stage(dom: &str) -> Option<String> {
    let at = dom.find("<body")?;
    let tag = &dom[at..];
    attr(&tag[..tag.find('>')?], "data-stage")
}

/// The text of the element with `id`.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[at..];
    let rest = &rest[rest.find('>')? + 1..];
    Some(rest[..rest.find('<')?].to_string())
}

/// The stages of `shown` with repeats in a row merged.
fn stages(shown: &[Shown]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for s in shown {
        if out.last() != Some(&s.stage.as_str()) {
            out.push(&s.stage);
        }
    }
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buyer_page_counts_down_queues_is_admitted_and_buys() {
    let began = Instant::now();
    let node = TestNode::start_with(config("buyer-page")).await;
    let c = node.client.clone();
    let (proxy, proxy_task) = delaying_proxy(node.addr, Duration::from_millis(250)).await;

    let mut attempt = 0;
    let (sale, shown, dom) = loop {
        attempt += 1;
        let sale = if attempt == 1 {
            "page".to_string()
        } else {
            format!("page-{attempt}")
        };
        let opens_at = UnixMs(now_ms() + OPENS_IN_MS).to_rfc3339();
        let created = c
            .create_sale(
                &sale,
                20,
                json!({"opens_at": opens_at, "queue": {"admit_per_second": 2}}),
            )
            .await;
        assert_eq!(created.status, 201, "{created:?}");
        for i in 0..OTHERS {
            let joined = c
                .post(
                    &format!("/api/v1/sales/{sale}/queue"),
                    json!({"user_id": format!("early-{i}")}),
                )
                .await;
            assert_eq!(joined.status, 202, "{joined:?}");
            assert!(joined.body["position"].is_null(), "{joined:?}");
        }
        let url = format!("http://{proxy}/sales/{sale}?user=alice&auto=1");
        let dom = render(&url, Duration::from_secs(120)).await;
        let shown = history(&dom);

        // A draw at the head of the line leaves nothing to watch move: the page may show one
        // place, or none, before the admission. Then try again with a new sale.
        let places: Vec<u64> = shown.iter().filter_map(|s| s.position).collect();
        let mut distinct = places.clone();
        distinct.dedup();
        let near_head = places.first().is_none_or(|&p| p <= 2);
        if distinct.len() < 2 && near_head && attempt < ATTEMPTS && began.elapsed() < RETRY_WITHIN {
            eprintln!("attempt {attempt}: alice was drawn near the head ({places:?}); again");
            continue;
        }
        break (sale, shown, dom);
    };

    // The countdown first, then the line, the admission, the hold and the payment.
    assert_eq!(
        stages(&shown),
        ["countdown", "queued", "admitted", "reserved", "paid"],
        "the page showed {shown:#?}"
    );
    assert_eq!(body_stage(&dom).as_deref(), Some("paid"), "{shown:#?}");
    // In the line: before the opening no place ("drawn at the opening"), then places that
    // only move forward, at least two of them.
    let queued: Vec<&Shown> = shown.iter().filter(|s| s.stage == "queued").collect();
    assert!(queued[0].position.is_none(), "{shown:#?}");
    let places: Vec<u64> = queued.iter().filter_map(|s| s.position).collect();
    assert!(
        places.len() >= 2,
        "the place in line never moved: {shown:#?}"
    );
    assert!(
        places.windows(2).all(|w| w[1] < w[0]),
        "places went back or repeated: {places:?}"
    );
    assert!(places.iter().all(|&p| p >= 1), "{places:?}");
    assert!(
        shown.iter().all(|s| !s.text.is_empty()),
        "an item without words: {shown:#?}"
    );

    // The API agrees: the reservation the page shows is alice's, of this sale, paid; and it is
    // the sale's only ticket gone (the others only queued).
    let id = text_of(&dom, "reservation-id").expect("the page shows the reservation id");
    assert!(!id.is_empty(), "{dom}");
    let r = c.get(&format!("/api/v1/reservations/{id}")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["user_id"], "alice", "{r:?}");
    assert_eq!(r.body["sale_id"], sale.as_str(), "{r:?}");
    assert_eq!(r.body["state"], "paid", "{r:?}");
    assert_eq!(c.counts(&sale).await, (19, 0, 1, 20));

    proxy_task.abort();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buyer_page_of_a_sale_that_does_not_exist_says_so() {
    let node = TestNode::start_with(config("buyer-none")).await;

    // The page is served for any id, self-contained: nothing from another host.
    let r = reqwest::get(format!("http://{}/sales/nope", node.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"history\""), "not the page");
    for needle in ["src=", "href=", "url(", "@import", "://"] {
        assert!(!html.contains(needle), "the page contains {needle:?}");
    }

    let dom = render(
        &format!("http://{}/sales/nope?user=bob&auto=1", node.addr),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(body_stage(&dom).as_deref(), Some("error"), "{dom}");
    let shown = history(&dom);
    assert_eq!(stages(&shown), ["error"], "{shown:#?}");
    assert!(shown[0].text.contains("No such sale"), "{shown:#?}");
    assert_eq!(
        text_of(&dom, "stage-title").as_deref(),
        Some("No such sale")
    );
    assert!(dom.contains("There is no sale called “nope”"), "{dom}");
    node.stop().await;
}
