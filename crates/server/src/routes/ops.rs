//! `/healthz`, `/readyz`, `/metrics`, `/api/v1/stats`, `/dashboard`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::NodeState;
use crate::error::ApiError;
use crate::openapi::{ErrorBody, StatusBody};

/// 200 while the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "Up", body = StatusBody))
)]
pub async fn healthz() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
        .into_response()
}

/// 200 when the node can sell (its store answers), 503 otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Ready", body = StatusBody),
        (status = 503, description = "Not ready: the store is down, its disk is full, or the node is draining before it stops (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn readyz(State(node): NodeState) -> Response {
    if node.is_draining() {
        return ApiError::unavailable("not ready: draining, this node is stopping").into_response();
    }
    match node.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"status\":\"ready\"}",
        )
            .into_response(),
        Err(e) => ApiError::unavailable(format!("not ready: {e}")).into_response(),
    }
}

/// Prometheus text.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(node): NodeState) -> Response {
    let runtimes = node.runtimes();
    let mut text = node.metrics.render(
        runtimes
            .iter()
            .map(|rt| (rt.spec.id.as_str(), &rt.counters)),
    );
    use std::fmt::Write;
    crate::metrics::render_build_info(&mut text, node.config.node_id.as_str());
    // Stock as the store has it (at most 0.5 s old; shared with the dashboard).
    let stats = node.stats.get(&node).await;
    if stats.store_error.is_none() {
        text.push_str(
            "# HELP ticketrush_sale_tickets Tickets of each sale by state, as the store holds them.\n\
             # TYPE ticketrush_sale_tickets gauge\n",
        );
        for s in &stats.sales {
            for (state, n) in [
                ("available", s.available),
                ("reserved", s.reserved),
                ("paid", s.paid),
            ] {
                let _ = writeln!(
                    text,
                    "ticketrush_sale_tickets{{sale=\"{}\",state=\"{state}\"}} {n}",
                    s.id
                );
            }
        }
    }
    if let Some(n) = node.store.round_trips() {
        let _ = writeln!(
            text,
            "# HELP ticketrush_store_round_trips_total Calls this node made to its store (Redis).\n\
             # TYPE ticketrush_store_round_trips_total counter\nticketrush_store_round_trips_total {n}"
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

/// The live figures the dashboard draws: every sale's counts (the store's), this node's
/// attempts by outcome, latency percentiles of the last seconds, the order writer's lag.
/// Computed at most twice a second, whoever asks.
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    tag = "ops",
    responses((status = 200, description = "The node's live figures", body = crate::dashboard::NodeStats))
)]
pub async fn stats(State(node): NodeState) -> Response {
    let stats = node.stats.get(&node).await;
    let body = serde_json::to_vec(&*stats).expect("stats serialise");
    live("application/json", body)
}

/// A 200 for the live view: never cached, every poll asks again.
fn live(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

static DASHBOARD_PAGE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::dashboard::page("node"));

/// The live view: one self-contained page polling `/api/v1/stats` every second.
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "ops",
    responses((status = 200, description = "An HTML page (nothing loaded from elsewhere)", body = String, content_type = "text/html"))
)]
pub async fn dashboard() -> Response {
    live("text/html; charset=utf-8", DASHBOARD_PAGE.as_str())
}

/// This document (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "ops",
    responses((status = 200, description = "The OpenAPI document of this API", body = Object, content_type = "application/json"))
)]
pub async fn openapi() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        super::OPENAPI_JSON.as_str(),
    )
        .into_response()
}
