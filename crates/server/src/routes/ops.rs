//! `/healthz`, `/readyz`, `/metrics`.

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
        (status = 503, description = "Not ready: the store is down, or its disk is full (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn readyz(State(node): NodeState) -> Response {
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
    if let Some(n) = node.store.round_trips() {
        use std::fmt::Write;
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
