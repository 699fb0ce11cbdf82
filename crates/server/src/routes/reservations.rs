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

use super::{reservation_json, segment, NodeState, ReservationBody};
use crate::body::read_json;
use crate::error::ApiError;
use crate::metrics::Outcome;
use crate::node::Reserved;
use crate::openapi::ErrorBody;

/// Who is asking. With proven users (`--user-auth jwt`) the user is the bearer token's `sub`:
/// `user_id` may then be left out, and must be that `sub` when given (403 otherwise).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    /// 1–64 characters of `A-Za-z0-9._-:`. Required unless the node runs with proven users.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$")]
    user_id: Option<UserId>,
}

impl UserBody {
    /// The body exactly as nearly every client sends it, `{"user_id":"ID"}` with no spaces and
    /// an id of the id alphabet (so no escapes), read without serde (about 1,000 instructions
    /// less a reservation). Anything else, valid or not, is left to serde and its messages.
    pub(crate) fn fast(bytes: &[u8]) -> Option<UserBody> {
        let id = bytes
            .strip_prefix(b"{\"user_id\":\"")?
            .strip_suffix(b"\"}")?;
        let id = std::str::from_utf8(id).ok()?;
        Some(UserBody {
            user_id: Some(UserId::parse(id).ok()?),
        })
    }

    /// The user this request acts for (see `auth::acting_user`).
    pub(crate) fn acting(
        self,
        node: &crate::node::Node,
        headers: &HeaderMap,
    ) -> Result<UserId, ApiError> {
        crate::auth::acting_user(node.config.user_auth.as_deref(), headers, self.user_id)
    }
}

/// Reserves one ticket for a user; the hold lasts the sale's `hold_seconds`.
#[utoipa::path(
    post,
    path = "/api/v1/sales/{sale_id}/reservations",
    tag = "reservations",
    params(
        ("sale_id" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$", description = "The sale's id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 128,
            pattern = "^[!-~]([ -~]*[!-~])?$",
            description = "1–128 printable ASCII characters: a retry with the same key (same user) answers 200 with the same reservation and never reserves twice"),
        ("Admission-Token" = Option<String>, Header,
            description = "Required by a sale with a waiting room: the token its queue gave this user once admitted (ignored by a sale without one)")
    ),
    request_body = UserBody,
    responses(
        (status = 201, description = "Reserved", body = ReservationBody),
        (status = 200, description = "The Idempotency-Key was seen: the earlier reservation", body = ReservationBody),
        (status = 400, description = "A malformed body, id or key (`invalid_request`)", body = ErrorBody),
        (status = 403, description = "A sale with a waiting room and no valid admission token for this user (`not_admitted`: missing, another user's or sale's, forged, or expired)", body = ErrorBody),
        (status = 404, description = "No such sale (`sale_not_found`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`invalid_request`)", body = ErrorBody),
        (status = 409, description = "No ticket is left anywhere in the sale (`sold_out`), the user holds as many as the sale allows (`limit_reached`), or the sale has not opened (`not_open`)", body = ErrorBody),
        (status = 413, description = "A body over 4 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 429, description = "The node is at capacity (`overloaded`); retry after Retry-After", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`unavailable`); when the outcome is unknown, `reservation_id` names the reservation if it was made", body = ErrorBody)
    )
)]
pub async fn reserve(
    State(node): NodeState,
    sale_id: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    reserve_at(&node, segment(sale_id), req).await
}

/// The path of a reservation, recognised without the router: `POST
/// /api/v1/sales/{sale_id}/reservations` whose segment needs no decoding. The node's middleware
/// answers it by `reserve_at` directly, sparing the hot path the router's matching, its
/// parameter map and its boxed route future (about 2,000 instructions a request); anything
/// else goes through the router as before.
pub(crate) fn hot_path(req: &Request) -> Option<&str> {
    if req.method() != axum::http::Method::POST {
        return None;
    }
    let sale = req
        .uri()
        .path()
        .strip_prefix("/api/v1/sales/")?
        .strip_suffix("/reservations")?;
    (!sale.is_empty() && !sale.contains(['/', '%'])).then_some(sale)
}

/// `reserve` for a sale id segment already taken from the path.
pub(crate) async fn reserve_at(
    node: &std::sync::Arc<crate::node::Node>,
    sale_id: Result<String, ApiError>,
    req: Request,
) -> Response {
    let started = Instant::now();
    // The request is taken whole (not a `HeaderMap` extractor, which clones every header).
    let (parts, body) = req.into_parts();
    let result = async {
        let sale_id = SaleId::parse(&sale_id?)?;
        let key = idempotency_key(&parts.headers)?;
        let req: UserBody =
            crate::body::read_json_with(&parts.headers, body, UserBody::fast).await?;
        let user = req.acting(node, &parts.headers)?;
        Ok::<_, ApiError>((sale_id, key, user))
    }
    .await;
    let resp = match result {
        Ok((sale_id, key, user_id)) => match node
            .reserve(
                &sale_id,
                user_id,
                key,
                parts.headers.get(&ADMISSION_TOKEN).map(|v| v.as_bytes()),
            )
            .await
        {
            Ok(Reserved::Created(r)) => reservation_json(StatusCode::CREATED, &r),
            Ok(Reserved::Replayed(r)) => reservation_json(StatusCode::OK, &r),
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

/// Header names as constants: looking one up by a `&str` parses and hashes the name first.
static IDEMPOTENCY_KEY: axum::http::HeaderName =
    axum::http::HeaderName::from_static("idempotency-key");
pub(crate) static ADMISSION_TOKEN: axum::http::HeaderName =
    axum::http::HeaderName::from_static("admission-token");

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = headers.get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| {
        ApiError::invalid("Idempotency-Key may only contain printable ASCII characters")
    })?;
    Ok(Some(IdempotencyKey::parse(s)?))
}

/// A pay or cancel that found the hold past its deadline expired it there and then: its
/// ticket is back in the pool, so this node stops answering sold_out from memory.
fn returned_if_expired(
    node: &crate::node::Node,
    r: Result<ticketrush_core::Reservation, ticketrush_store::StoreError>,
) -> Result<ticketrush_core::Reservation, ApiError> {
    if matches!(
        r,
        Err(ticketrush_store::StoreError::Ledger(
            ticketrush_core::LedgerError::Expired
        ))
    ) {
        node.tickets_returned(None);
    }
    Ok(r?)
}

/// Reservation ids are opaque: one that could not have been made does not exist (404).
fn reservation_id(p: Result<Path<String>, PathRejection>) -> Result<ReservationId, ApiError> {
    ReservationId::parse(&segment(p)?).map_err(|_| ApiError::reservation_not_found())
}

/// One reservation.
#[utoipa::path(
    get,
    path = "/api/v1/reservations/{reservation_id}",
    tag = "reservations",
    params(("reservation_id" = String, Path, description = "The reservation's id (opaque)")),
    responses(
        (status = 200, description = "The reservation", body = ReservationBody),
        (status = 400, description = "The path is not valid percent-encoded UTF-8 (`invalid_request`)", body = ErrorBody),
        (status = 404, description = "No such reservation (`reservation_not_found`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
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
    Ok(reservation_json(StatusCode::OK, &r))
}

/// Pays a reservation (its user only, within the hold). Paying again answers the same.
#[utoipa::path(
    post,
    path = "/api/v1/reservations/{reservation_id}/pay",
    tag = "reservations",
    params(("reservation_id" = String, Path, description = "The reservation's id (opaque)")),
    request_body = UserBody,
    responses(
        (status = 200, description = "Paid", body = ReservationBody),
        (status = 400, description = "A malformed body (`invalid_request`)", body = ErrorBody),
        (status = 403, description = "Another user's reservation (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such reservation (`reservation_not_found`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`invalid_request`)", body = ErrorBody),
        (status = 409, description = "The hold expired (`expired`) or was cancelled (`cancelled`)", body = ErrorBody),
        (status = 413, description = "A body over 4 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn pay(
    State(node): NodeState,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = reservation_id(id)?;
    let req: UserBody = read_json(&headers, body).await?;
    let user = req.acting(&node, &headers)?;
    let r = returned_if_expired(&node, node.store.pay(&id, &user).await)?;
    Ok(reservation_json(StatusCode::OK, &r))
}

/// Cancels a reservation (its user only); the ticket goes back on sale. Cancelling again
/// answers the same.
#[utoipa::path(
    post,
    path = "/api/v1/reservations/{reservation_id}/cancel",
    tag = "reservations",
    params(("reservation_id" = String, Path, description = "The reservation's id (opaque)")),
    request_body = UserBody,
    responses(
        (status = 200, description = "Cancelled", body = ReservationBody),
        (status = 400, description = "A malformed body (`invalid_request`)", body = ErrorBody),
        (status = 403, description = "Another user's reservation (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such reservation (`reservation_not_found`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`invalid_request`)", body = ErrorBody),
        (status = 409, description = "The hold expired (`expired`) or is paid (`already_paid`)", body = ErrorBody),
        (status = 413, description = "A body over 4 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn cancel(
    State(node): NodeState,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = reservation_id(id)?;
    let req: UserBody = read_json(&headers, body).await?;
    let user = req.acting(&node, &headers)?;
    let r = returned_if_expired(&node, node.store.cancel(&id, &user).await)?;
    // A cancelled ticket is back in the pool: this node stops answering sold_out from memory.
    node.tickets_returned(Some(&r.sale_id));
    Ok(reservation_json(StatusCode::OK, &r))
}

#[cfg(test)]
mod tests {
    use super::UserBody;

    /// The hand-written reader takes only the exact form, and reads it as serde does.
    #[test]
    fn the_fast_body_reader_agrees_with_serde() {
        for body in [
            r#"{"user_id":"u-42"}"#,
            r#"{"user_id":"A.b_c:d-9"}"#,
            r#"{ "user_id": "u1" }"#,
            r#"{"user_id":"u\u0031"}"#,
            r#"{"user_id":""}"#,
            r#"{"user_id":"has space"}"#,
            r#"{"user_id":"x","extra":1}"#,
            r#"{"user_id":"a"}}"#,
            r#"{"user_id":null}"#,
        ] {
            let fast = UserBody::fast(body.as_bytes()).map(|b| b.user_id);
            let serde = serde_json::from_str::<UserBody>(body)
                .ok()
                .map(|b| b.user_id);
            if let Some(f) = fast {
                assert_eq!(Some(f), serde, "{body}");
            }
        }
        assert!(UserBody::fast(br#"{"user_id":"u-42"}"#).is_some());
        assert!(UserBody::fast(br#"{"user_id":"has space"}"#).is_none());
        assert!(UserBody::fast(br#"{"user_id":"x","extra":1}"#).is_none());
        assert!(UserBody::fast(&[b'x'; 100]).is_none());
    }
}
