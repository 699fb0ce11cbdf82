//! The one place where outcomes become status codes and error codes (docs/API.md).

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ticketrush_core::{IdError, LedgerError, ReservationId};
use ticketrush_store::StoreError;

use crate::limits::RETRY_AFTER_SECONDS;

/// An error answer: `{"error": code, "message": sentence}` with its status. A 503 to a
/// reservation whose outcome the node could not learn also names `reservation_id`: the id the
/// reservation has if the store applied it, for the client to look up.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    pub reservation_id: Option<ReservationId>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            reservation_id: None,
        }
    }

    /// Names the reservation this answer may concern (see the type's doc).
    pub fn with_reservation_id(mut self, id: ReservationId) -> Self {
        self.reservation_id = Some(id);
        self
    }

    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body is larger than {} bytes",
                crate::limits::BODY_BYTES_MAX
            ),
        )
    }
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request",
            format!(
                "the body did not arrive within {} seconds",
                crate::limits::BODY_READ_TIMEOUT.as_secs()
            ),
        )
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this needs the header Authorization: Bearer <admin token>",
        )
    }
    /// A reservation, payment or cancellation without a valid user token (`--user-auth jwt`).
    pub fn token(message: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: &'static str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn sale_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "sale_not_found",
            "no sale has this id",
        )
    }
    pub fn reservation_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "reservation_not_found",
            "no reservation has this id",
        )
    }
    pub fn sold_out() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "sold_out",
            "every ticket of this sale is taken",
        )
    }
    pub fn limit_reached() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "limit_reached",
            "this user already holds as many tickets of this sale as it allows",
        )
    }
    pub fn not_admitted(message: &'static str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "not_admitted", message)
    }
    pub fn queue_entry_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "queue_entry_not_found",
            "no queue entry of this sale has this id",
        )
    }
    pub fn waitlist_entry_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "waitlist_entry_not_found",
            "no waitlist entry of this sale has this id",
        )
    }
    pub fn not_open() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "not_open",
            "this sale has not opened yet",
        )
    }
    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            "the node is at capacity; retry after the Retry-After delay",
        )
    }
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not answer this method",
        )
    }
}

impl From<IdError> for ApiError {
    fn from(e: IdError) -> Self {
        ApiError::invalid(e.to_string())
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        let conflict = |code, msg: &'static str| Self::new(StatusCode::CONFLICT, code, msg);
        match e {
            LedgerError::SaleNotFound => ApiError::sale_not_found(),
            LedgerError::SaleExists => {
                conflict("sale_exists", "a sale with this id already exists")
            }
            LedgerError::TooManySales => conflict(
                "too_many_sales",
                "the store holds as many sales as it allows",
            ),
            LedgerError::ReservationNotFound => ApiError::reservation_not_found(),
            LedgerError::Forbidden => Self::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the reservation belongs to another user",
            ),
            LedgerError::Expired => conflict("expired", "the reservation's hold has expired"),
            LedgerError::Cancelled => conflict("cancelled", "the reservation was cancelled"),
            LedgerError::AlreadyPaid => conflict("already_paid", "the reservation is already paid"),
            LedgerError::NoQueue => conflict(
                "no_queue",
                "this sale has no waiting room: reserve directly",
            ),
            LedgerError::NotSoldOut => conflict(
                "not_sold_out",
                "tickets of this sale are still available: reserve one instead",
            ),
            LedgerError::LimitReached => ApiError::limit_reached(),
            LedgerError::LineFull => {
                conflict("line_full", "this line holds as many buyers as it allows")
            }
            LedgerError::WaitlistNotFound => ApiError::waitlist_entry_not_found(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Ledger(l) => l.into(),
            StoreError::Unavailable(m) => {
                log_unavailable(&m);
                ApiError::unavailable("the store is unavailable; retry shortly")
            }
            StoreError::Refused(m) => {
                log_unavailable(&m);
                ApiError::unavailable(format!("{m}; retry shortly"))
            }
            StoreError::NotReplicated(m) => {
                log_unavailable(&m);
                ApiError::unavailable(
                    "the store applied the change but could not replicate it in time, so it \
                     may not survive a failover; retry shortly (with the same Idempotency-Key)",
                )
            }
        }
    }
}

/// Logs a store outage at most once a second: while Redis is down every request meets it,
/// and a log line per request would be a second outage.
fn log_unavailable(reason: &str) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static LAST_LOG_SECOND: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_LOG_SECOND.load(Relaxed);
    if now > last
        && LAST_LOG_SECOND
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
    {
        let suppressed = SUPPRESSED.swap(0, Relaxed);
        tracing::warn!(reason, suppressed, "store unavailable");
    } else {
        SUPPRESSED.fetch_add(1, Relaxed);
    }
}

/// The sold-out answer, built once: it is most of what a node says on sale day.
static SOLD_OUT_BODY: std::sync::LazyLock<bytes::Bytes> =
    std::sync::LazyLock::new(|| bytes::Bytes::from(ApiError::sold_out().body()));

impl ApiError {
    fn body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(40 + self.code.len() + self.message.len());
        body.extend_from_slice(b"{\"error\":\"");
        body.extend_from_slice(self.code.as_bytes());
        body.extend_from_slice(b"\",\"message\":");
        if serde_json::to_writer(&mut body, self.message.as_ref()).is_err() {
            body.extend_from_slice(b"\"\"");
        }
        if let Some(id) = &self.reservation_id {
            // Reservation ids are restricted to `A-Za-z0-9._-:`: no escaping needed.
            body.extend_from_slice(b",\"reservation_id\":\"");
            body.extend_from_slice(id.as_str().as_bytes());
            body.push(b'"');
        }
        body.push(b'}');
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.code == "sold_out" {
            SOLD_OUT_BODY.clone()
        } else {
            bytes::Bytes::from(self.body())
        };
        // Built directly: `(status, bytes).into_response()` set an octet-stream type first.
        let mut resp = Response::new(axum::body::Body::from(body));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written error body is exactly the documented `ErrorBody` shape.
    #[test]
    fn error_bodies_match_the_documented_shape() {
        let id = ReservationId::parse("r1.s").unwrap();
        for e in [
            ApiError::sold_out(),
            ApiError::invalid("a \"quoted\" message\n"),
            ApiError::unavailable("down").with_reservation_id(id),
        ] {
            let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj["error"], e.code);
            assert_eq!(obj["message"], e.message.as_ref());
            for k in obj.keys() {
                assert!(
                    ["error", "message", "reservation_id"].contains(&k.as_str()),
                    "{k}"
                );
            }
            assert_eq!(
                obj.get("reservation_id").and_then(|v| v.as_str()),
                e.reservation_id.as_ref().map(|r| r.as_str())
            );
        }
    }
}
