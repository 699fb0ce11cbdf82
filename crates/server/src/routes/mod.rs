//! HTTP routes: one file per endpoint group, each parsing into domain types, calling the node
//! or the store, and mapping the outcome to a status (see `error.rs`).
//!
//! Architecture invariant: routes never change stock themselves; they go through `Node` (the
//! reservation flow) or the `Store` trait.

mod compat;
mod lines;
mod ops;
pub(crate) mod reservations;
mod sales;

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::Router;
use serde::Serialize;
use ticketrush_core::{Reservation, SaleView};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::node::Node;

pub const X_NODE_ID: HeaderName = HeaderName::from_static("x-node-id");

/// Every route of the API with its documentation: the router and the OpenAPI document are
/// built from the same declarations (`#[utoipa::path]` on each handler), so neither can list
/// a route the other lacks.
fn api() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(sales::create, sales::list))
        .routes(routes!(sales::get))
        .routes(routes!(reservations::reserve))
        .routes(routes!(reservations::get))
        .routes(routes!(reservations::pay))
        .routes(routes!(reservations::cancel))
        .routes(routes!(lines::queue_join))
        .routes(routes!(lines::queue_get))
        .routes(routes!(lines::waitlist_join))
        .routes(routes!(lines::waitlist_get))
        .routes(routes!(lines::waitlist_withdraw))
        .routes(routes!(lines::page))
        .routes(routes!(compat::buy_ticket))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(ops::stats))
        .routes(routes!(ops::dashboard))
}

/// The OpenAPI document every node serves (and `docs/openapi.json` holds).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api().split_for_parts().1;
    utoipa::Modify::modify(&crate::openapi::Common, &mut doc);
    doc
}

static OPENAPI_JSON: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::openapi::document(&openapi()));

/// The whole HTTP API of a node, as one service (`request_id::NodeService`: the request id,
/// the reservation hot path, then the router). Every response carries `X-Node-Id` and
/// `X-Request-Id`.
pub fn app(node: Arc<Node>) -> crate::request_id::NodeService {
    let node_id = HeaderValue::from_str(node.config.node_id.as_str())
        .expect("node ids are within the header alphabet");
    let (router, _) = api().split_for_parts();
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(node.clone());
    crate::request_id::NodeService::new(node, node_id, router)
}

/// The benchmark ceiling: the same HTTP stack (hyper, axum's router, the accept loop)
/// answering any method and path with a small fixed JSON body and its `X-Node-Id`. Whatever a
/// real endpoint costs beyond this is ours, its one middleware included.
pub fn hello_world() -> Router {
    async fn hello() -> Response {
        use axum::response::IntoResponse;
        (
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (X_NODE_ID, HeaderValue::from_static("ceiling")),
            ],
            "{\"error\":\"sold_out\",\"message\":\"hello\"}",
        )
            .into_response()
    }
    Router::new().fallback(hello)
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// A path segment, or `invalid_request` if it is not valid percent-encoded UTF-8.
fn segment(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(s)| s)
        .map_err(|_| ApiError::invalid("the path is not valid percent-encoded UTF-8"))
}

type NodeState = State<Arc<Node>>;

/// A sale with its counts: `available + reserved + paid == total`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SaleBody<'a> {
    id: &'a str,
    name: &'a str,
    total: u64,
    available: u64,
    reserved: u64,
    paid: u64,
    per_user_limit: u32,
    hold_seconds: u32,
    #[schema(format = DateTime)]
    opens_at: String,
    /// Present when the sale has a waiting room.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    queue: Option<SaleQueueBody>,
}

/// A sale's waiting room as the API shows it (its signing key never leaves the store).
#[derive(Serialize, utoipa::ToSchema)]
pub struct SaleQueueBody {
    admit_per_second: u32,
}

impl<'a> SaleBody<'a> {
    fn of(v: &'a SaleView) -> Self {
        SaleBody {
            id: v.spec.id.as_str(),
            name: &v.spec.name,
            total: v.spec.total,
            available: v.available,
            reserved: v.reserved,
            paid: v.paid,
            per_user_limit: v.spec.per_user_limit,
            hold_seconds: v.spec.hold_seconds,
            opens_at: v.spec.opens_at.to_rfc3339(),
            queue: v.spec.queue.as_ref().map(|q| SaleQueueBody {
                admit_per_second: q.admit_per_second,
            }),
        }
    }
}

/// A reservation: `reserved` (held until `expires_at`), then `paid`, `cancelled` or
/// `expired` (final).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReservationBody<'a> {
    reservation_id: &'a str,
    sale_id: &'a str,
    user_id: &'a str,
    #[schema(pattern = "^(reserved|paid|cancelled|expired)$")]
    state: &'static str,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    expires_at: String,
    /// Present once paid.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    paid_at: Option<String>,
}

impl<'a> ReservationBody<'a> {
    fn of(r: &'a Reservation) -> Self {
        ReservationBody {
            reservation_id: r.id.as_str(),
            sale_id: r.sale_id.as_str(),
            user_id: r.user_id.as_str(),
            state: r.state.as_str(),
            created_at: r.created_at.to_rfc3339(),
            expires_at: r.expires_at.to_rfc3339(),
            paid_at: r.paid_at.map(|t| t.to_rfc3339()),
        }
    }
}

impl ReservationBody<'_> {
    /// This body's JSON, written by hand on the winners' path: byte for byte what serde
    /// writes (every value is an id, a state or a time, so nothing needs escaping; a unit test
    /// holds the two equal), without serde's machinery.
    fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            160 + self.reservation_id.len() + self.sale_id.len() + self.user_id.len(),
        );
        let mut field = |first: bool, name: &str, value: &str| {
            out.extend_from_slice(if first { b"{\"" } else { b",\"" });
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":\"");
            out.extend_from_slice(value.as_bytes());
            out.push(b'"');
        };
        field(true, "reservation_id", self.reservation_id);
        field(false, "sale_id", self.sale_id);
        field(false, "user_id", self.user_id);
        field(false, "state", self.state);
        field(false, "created_at", &self.created_at);
        field(false, "expires_at", &self.expires_at);
        if let Some(paid_at) = &self.paid_at {
            field(false, "paid_at", paid_at);
        }
        out.push(b'}');
        out
    }
}

/// A reservation as a JSON answer with a status.
fn reservation_json(status: axum::http::StatusCode, r: &Reservation) -> Response {
    let mut resp = Response::new(axum::body::Body::from(ReservationBody::of(r).to_json()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON answer with a status.
fn json<T: Serialize>(status: axum::http::StatusCode, body: &T) -> Response {
    use axum::response::IntoResponse;
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(_) => ApiError::unavailable("could not encode the answer").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticketrush_core::{ReservationId, ReservationState, SaleId, UnixMs, UserId};

    /// The hand-written reservation JSON is serde's, byte for byte.
    #[test]
    fn reservation_bodies_are_written_as_serde_writes_them() {
        for (state, paid_at, created) in [
            (ReservationState::Reserved, None, 1_796_229_493_474),
            (ReservationState::Paid, Some(UnixMs(1_796_229_500_001)), 0),
            (ReservationState::Cancelled, None, -1),
            // Past year 9999: the long way of `to_rfc3339`.
            (
                ReservationState::Expired,
                Some(UnixMs(400_000_000_000_000)),
                1,
            ),
        ] {
            let r = Reservation {
                id: ReservationId::parse("01m8vsxwp4h76zm21zhmkswzkm.G1:2nd_x-y").unwrap(),
                sale_id: SaleId::parse("G1:2nd_x-y").unwrap(),
                user_id: UserId::parse("user.7:a_b-c").unwrap(),
                state,
                created_at: UnixMs(created),
                expires_at: UnixMs(created + 900_000),
                paid_at,
                updated_at: UnixMs(created),
            };
            let body = ReservationBody::of(&r);
            assert_eq!(
                String::from_utf8(body.to_json()).unwrap(),
                serde_json::to_string(&body).unwrap()
            );
        }
    }
}
