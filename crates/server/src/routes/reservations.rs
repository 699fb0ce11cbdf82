//! `/api/v1/sales/{sale_id}/reservations` and `/api/v1/reservations/...`: reserve, read, pay,
//! cancel. The hot endpoint is `reserve`; its latency is what the histogram measures.

use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use ticketrush_core::{IdempotencyKey, ReservationId, SaleId, UserId};

use super::{json, segment, NodeState, ReservationBody};
use crate::body::read_json;
use crate::error::ApiError;
use crate::metrics::Outcome;
use crate::node::Reserved;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    user_id: UserId,
}

pub async fn reserve(
    State(node): NodeState,
    sale_id: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let started = Instant::now();
    // The request is taken whole (not a `HeaderMap` extractor, which clones every header).
    let (parts, body) = req.into_parts();
    let result = async {
        let sale_id = SaleId::parse(&segment(sale_id)?)?;
        let key = idempotency_key(&parts.headers)?;
        let req: UserBody = read_json(&parts.headers, body).await?;
        Ok::<_, ApiError>((sale_id, key, req.user_id))
    }
    .await;
    let resp = match result {
        Ok((sale_id, key, user_id)) => match node.reserve(&sale_id, user_id, key).await {
            Ok(Reserved::Created(r)) => json(StatusCode::CREATED, &ReservationBody::of(&r)),
            Ok(Reserved::Replayed(r)) => json(StatusCode::OK, &ReservationBody::of(&r)),
            Err(e) => e.into_response(),
        },
        Err(e) => {
            node.metrics.unrouted.count(Outcome::of_error_code(e.code));
            e.into_response()
        }
    };
    node.metrics.reserve_latency.observe(started.elapsed());
    resp
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| {
        ApiError::invalid("Idempotency-Key may only contain printable ASCII characters")
    })?;
    Ok(Some(IdempotencyKey::parse(s)?))
}

fn reservation_id(p: Result<Path<String>, PathRejection>) -> Result<ReservationId, ApiError> {
    Ok(ReservationId::parse(&segment(p)?)?)
}

pub async fn get(
    State(node): NodeState,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = reservation_id(id)?;
    let r = node
        .store
        .reservation(&id)
        .await?
        .ok_or_else(ApiError::reservation_not_found)?;
    Ok(json(StatusCode::OK, &ReservationBody::of(&r)))
}

pub async fn pay(
    State(node): NodeState,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = reservation_id(id)?;
    let req: UserBody = read_json(&headers, body).await?;
    let r = node.store.pay(&id, &req.user_id).await?;
    Ok(json(StatusCode::OK, &ReservationBody::of(&r)))
}

pub async fn cancel(
    State(node): NodeState,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = reservation_id(id)?;
    let req: UserBody = read_json(&headers, body).await?;
    let r = node.store.cancel(&id, &req.user_id).await?;
    // A cancelled ticket is back in the pool: this node stops answering sold_out from memory.
    node.tickets_returned(Some(&r.sale_id));
    Ok(json(StatusCode::OK, &ReservationBody::of(&r)))
}
