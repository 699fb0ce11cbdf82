//! What the gateway answers itself, never forwarding it: `GET /readyz` (200, or 503 while it
//! drains before stopping), `GET /dashboard` (the same page as a
//! node's, polling `/gateway/stats`), `GET /gateway/stats` (each node's weight, traffic and
//! health, JSON) and `GET /metrics` (the gateway's own Prometheus figures; scrape each node's
//! `/metrics` directly). Everything else goes to a node.

use std::fmt::Write;
use std::sync::LazyLock;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::proxy::{GatewayBody, Shared, X_NODE_ID_GATEWAY};

/// The node's dashboard page (one file for both; it draws whichever JSON it is given).
const DASHBOARD_HTML: &str = include_str!("../../server/assets/dashboard.html");

static PAGE: LazyLock<String> = LazyLock::new(|| DASHBOARD_HTML.replace("__KIND__", "gateway"));

/// The gateway's own answer to `req`, if the path is one of its own.
pub fn answer<B>(shared: &Shared, req: &Request<B>) -> Option<Response<GatewayBody>> {
    let own = matches!(
        req.uri().path(),
        "/dashboard" | "/gateway/stats" | "/metrics" | "/readyz"
    );
    if !own {
        return None;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Some(crate::proxy::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path answers GET only",
        ));
    }
    Some(match req.uri().path() {
        "/dashboard" => ok("text/html; charset=utf-8", PAGE.clone()),
        "/gateway/stats" => ok("application/json", stats_json(shared)),
        "/readyz" if shared.draining.load(std::sync::atomic::Ordering::Relaxed) => {
            let mut resp = crate::proxy::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "not ready: draining, this gateway is stopping",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
        "/readyz" => ok("application/json", r#"{"status":"ready"}"#.to_string()),
        _ => ok("text/plain; version=0.0.4", metrics_text(shared)),
    })
}

fn ok(content_type: &'static str, body: String) -> Response<GatewayBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("x-node-id"),
        HeaderValue::from_static(X_NODE_ID_GATEWAY),
    );
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// `{"version", "uptime_ms", "max_fails", "fail_timeout_seconds", "nodes": [{"addr", "weight",
/// "requests", "failures", "fails", "health", "skipped_for_seconds"}]}`; `health` is `up`,
/// `failing` (failures on record, still picked) or `skipped` (out until its fail timeout).
fn stats_json(shared: &Shared) -> String {
    let mut out = format!(
        r#"{{"version":"{}","uptime_ms":{},"max_fails":{},"fail_timeout_seconds":{},"nodes":["#,
        env!("CARGO_PKG_VERSION"),
        shared.started.elapsed().as_millis(),
        shared.max_fails,
        shared.fail_timeout.as_secs_f64()
    );
    for (i, n) in shared.node_views().iter().enumerate() {
        let health = match (n.down_for, n.fails) {
            (Some(_), _) => "skipped",
            (None, 0) => "up",
            (None, _) => "failing",
        };
        let skipped_for = n
            .down_for
            .map_or("null".to_string(), |d| format!("{:.1}", d.as_secs_f64()));
        let _ = write!(
            out,
            r#"{}{{"addr":"{}","weight":{},"requests":{},"failures":{},"fails":{},"health":"{health}","skipped_for_seconds":{skipped_for}}}"#,
            if i == 0 { "" } else { "," },
            n.addr,
            n.weight,
            n.tries,
            n.failures,
            n.fails,
        );
    }
    out.push_str("]}");
    out
}

/// A metric family of one series per node: name, type, help, the value of a node.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::proxy::NodeView) -> String,
);

fn metrics_text(shared: &Shared) -> String {
    let views = shared.node_views();
    let mut out = String::with_capacity(1024);
    let _ = writeln!(
        out,
        "# HELP ticketrush_build_info The running version (always 1).\n\
         # TYPE ticketrush_build_info gauge\n\
         ticketrush_build_info{{version=\"{}\",node=\"{X_NODE_ID_GATEWAY}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let families: [Family; 4] = [
        (
            "ticketrush_gateway_requests_total",
            "counter",
            "Requests the gateway sent to each node (tries, retries included).",
            |n| n.tries.to_string(),
        ),
        (
            "ticketrush_gateway_failures_total",
            "counter",
            "Tries on each node that failed (refused, broken, timed out).",
            |n| n.failures.to_string(),
        ),
        (
            "ticketrush_gateway_node_weight",
            "gauge",
            "Each node's configured weight.",
            |n| n.weight.to_string(),
        ),
        (
            "ticketrush_gateway_node_up",
            "gauge",
            "1 while the node is picked, 0 while it is skipped after failures.",
            |n| u8::from(n.down_for.is_none()).to_string(),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for n in &views {
            let _ = writeln!(out, "{name}{{node=\"{}\"}} {}", n.addr, value(n));
        }
    }
    out
}
