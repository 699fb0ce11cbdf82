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
use crate::openapi::ErrorBody;

/// A new sale.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSale {
    /// 1–64 characters of `A-Za-z0-9._-:`.
    #[schema(value_type = String, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$")]
    id: SaleId,
    /// Up to 256 characters, no control characters; default: the id.
    #[schema(max_length = 256, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    name: Option<String>,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "crate::body::whole::u64")]
    total: u64,
    /// Tickets one user may hold (reserved or paid); default 1.
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "crate::body::whole::opt_u32")]
    per_user_limit: Option<u32>,
    /// How long a reservation is held for payment; default 900.
    #[schema(minimum = 1, maximum = 86400)]
    #[serde(default, deserialize_with = "crate::body::whole::opt_u32")]
    hold_seconds: Option<u32>,
    /// RFC 3339, within the years 0000–9999 in UTC; before it, reservations are `not_open`.
    /// Default: now.
    #[schema(format = DateTime)]
    opens_at: Option<String>,
    /// A waiting room: buyers join the sale's queue and reserve once admitted (docs/API.md).
    queue: Option<QueueRequest>,
}

/// A sale's waiting room.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueRequest {
    /// Buyers admitted per second, in line order.
    #[schema(minimum = 1, maximum = 100_000)]
    #[serde(deserialize_with = "crate::body::whole::u32")]
    admit_per_second: u32,
}

/// Creates a sale (admin).
#[utoipa::path(
    post,
    path = "/api/v1/sales",
    tag = "sales",
    request_body = CreateSale,
    security(("admin" = [])),
    responses(
        (status = 201, description = "Created", body = SaleBody),
        (status = 400, description = "A malformed body or an invalid field (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token (`unauthorized`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`invalid_request`)", body = ErrorBody),
        (status = 409, description = "The id is taken (`sale_exists`) or the store holds as many sales as it allows (`too_many_sales`)", body = ErrorBody),
        (status = 413, description = "A body over 4 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
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
    let spec = match req.queue {
        Some(q) => spec
            .with_queue(q.admit_per_second, new_queue_secret())
            .map_err(|e| ApiError::invalid(e.to_string()))?,
        None => spec,
    };
    let view = node.store.create_sale(spec).await?;
    Ok(json(StatusCode::CREATED, &SaleBody::of(&view)))
}

/// The key a sale's admission tokens are signed with: 256 random bits, in hex.
fn new_queue_secret() -> String {
    use rand::Rng;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One sale with its counts (`available + reserved + paid == total`).
#[utoipa::path(
    get,
    path = "/api/v1/sales/{sale_id}",
    tag = "sales",
    params(("sale_id" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$", description = "The sale's id")),
    responses(
        (status = 200, description = "The sale", body = SaleBody),
        (status = 400, description = "Not a valid sale id (`invalid_request`)", body = ErrorBody),
        (status = 404, description = "No such sale (`sale_not_found`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
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

/// Every sale.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Sales<'a> {
    sales: Vec<SaleBody<'a>>,
}

/// Every sale of the store, ordered by id.
#[utoipa::path(
    get,
    path = "/api/v1/sales",
    tag = "sales",
    responses(
        (status = 200, description = "The sales", body = Sales),
        (status = 503, description = "The store is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn list(State(node): NodeState) -> Result<Response, ApiError> {
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
