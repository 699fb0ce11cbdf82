//! `/api/v1/sales`: create (admin), read, list.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use ticketrush_core::{SaleId, SaleSpec, UnixMs};

use super::{json, segment, NodeState, SaleBody};
use crate::body::read_json;
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSale {
    id: SaleId,
    name: Option<String>,
    total: u64,
    per_user_limit: Option<u32>,
    hold_seconds: Option<u32>,
    opens_at: Option<String>,
}

pub async fn create(
    State(node): NodeState,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !is_admin(&headers, &node.config.admin_token) {
        return Err(ApiError::unauthorized());
    }
    let req: CreateSale = read_json(&headers, body).await?;
    let opens_at = match req.opens_at {
        Some(s) => {
            UnixMs::parse_rfc3339(&s).map_err(|e| ApiError::invalid(format!("opens_at: {e}")))?
        }
        None => node.store.now(),
    };
    let spec = SaleSpec::new(
        req.id,
        req.name,
        req.total,
        req.per_user_limit,
        req.hold_seconds,
        opens_at,
    )
    .map_err(|e| ApiError::invalid(e.to_string()))?;
    let view = node.store.create_sale(spec).await?;
    Ok(json(StatusCode::CREATED, &SaleBody::of(&view)))
}

pub async fn get(
    State(node): NodeState,
    sale_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let sale_id = SaleId::parse(&segment(sale_id)?)?;
    let view = node
        .store
        .sale(&sale_id)
        .await?
        .ok_or_else(ApiError::sale_not_found)?;
    Ok(json(StatusCode::OK, &SaleBody::of(&view)))
}

pub async fn list(State(node): NodeState) -> Result<Response, ApiError> {
    #[derive(Serialize)]
    struct Sales<'a> {
        sales: Vec<SaleBody<'a>>,
    }
    let views = node.store.sales().await?;
    let sales = views.iter().map(SaleBody::of).collect();
    Ok(json(StatusCode::OK, &Sales { sales }))
}

/// `Authorization: Bearer <token>`, compared in constant time for equal lengths.
fn is_admin(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
