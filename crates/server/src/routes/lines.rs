//! The fair front door: a sale's waiting-room queue (`/api/v1/sales/{id}/queue`), its
//! waitlist (`/api/v1/sales/{id}/waitlist`), and the buyer's page (`/sales/{id}`).
//!
//! Admission is arithmetic, not a process: place `rank` is admitted at
//! `QueueSpec::admitted_at(opens_at, rank)`, judged by the store's clock as each answer is read,
//! so every node admits the same buyers at the same moment and in line order. An admitted
//! buyer's answer carries the admission token (`admission.rs`) that a reservation needs.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use ticketrush_core::sale::ADMISSION_WINDOW_MS;
use ticketrush_core::{QueueId, SaleId, SaleSpec, WaitlistEntry, WaitlistId};
use ticketrush_store::QueueAnswer;

use super::reservations::UserBody;
use super::{json, NodeState};
use crate::body::read_json;
use crate::error::ApiError;
use crate::openapi::ErrorBody;

/// A place in a sale's waiting room.
#[derive(Serialize, utoipa::ToSchema)]
pub struct QueueBody<'a> {
    queue_id: &'a str,
    sale_id: &'a str,
    user_id: &'a str,
    /// Places ahead in line, plus one (counts from 1 and only moves forward); 0 once admitted;
    /// null before the opening, when the pre-queue has not been shuffled yet.
    #[schema(nullable = true)]
    position: Option<u64>,
    admitted: bool,
    /// Seconds until this place is admitted (0 once admitted), at the sale's rate.
    estimated_wait_seconds: u64,
    /// Everyone in the queue.
    queue_size: u64,
    #[schema(format = DateTime)]
    opens_at: String,
    /// Once admitted and until `expires_at`: send it as the header `Admission-Token` to
    /// reserve.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    admission_token: Option<String>,
    /// Once admitted: when the admission (and its token) ends, 10 minutes after it began.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    expires_at: Option<String>,
}

impl<'a> QueueBody<'a> {
    fn of(spec: &'a SaleSpec, a: &'a QueueAnswer) -> QueueBody<'a> {
        let q = spec.queue.as_ref().expect("only a queued sale has entries");
        let (now, opens) = (a.now, spec.opens_at);
        let mut body = QueueBody {
            queue_id: a.entry.queue_id.as_str(),
            sale_id: spec.id.as_str(),
            user_id: a.entry.user_id.as_str(),
            position: None,
            admitted: false,
            estimated_wait_seconds: 0,
            queue_size: a.entry.size,
            opens_at: opens.to_rfc3339(),
            admission_token: None,
            expires_at: None,
        };
        let seconds = |ms: i64| (ms.max(0) as u64).div_ceil(1000);
        match a.entry.rank {
            // Before the draw: the opening, then on average half the pre-queue ahead.
            None => {
                let middle = q.admitted_at(opens, a.entry.size.div_ceil(2).max(1));
                body.estimated_wait_seconds = seconds(middle.0 - now.0);
            }
            Some(rank) => {
                let through = q.admitted_through(opens, now);
                if rank <= through {
                    let expires = q.admitted_at(opens, rank).plus_ms(ADMISSION_WINDOW_MS);
                    body.admitted = true;
                    body.position = Some(0);
                    body.expires_at = Some(expires.to_rfc3339());
                    if expires > now {
                        body.admission_token = Some(crate::admission::issue(
                            q,
                            &spec.id,
                            &a.entry.user_id,
                            expires,
                        ));
                    }
                } else {
                    body.position = Some(rank - through);
                    body.estimated_wait_seconds = seconds(q.admitted_at(opens, rank).0 - now.0);
                }
            }
        }
        body
    }
}

/// A sale id and a place's id from the path. Place ids are opaque: one that could not have
/// been made does not exist (`not_found`), like any unknown one.
fn place_id<T>(
    p: Result<Path<(String, String)>, PathRejection>,
    parse: fn(&str) -> Result<T, ticketrush_core::IdError>,
    not_found: fn() -> ApiError,
) -> Result<(SaleId, T), ApiError> {
    let Path((sale, id)) =
        p.map_err(|_| ApiError::invalid("the path is not valid percent-encoded UTF-8"))?;
    let sale = SaleId::parse(&sale)?;
    let id = parse(&id).map_err(|_| not_found())?;
    Ok((sale, id))
}

fn new_queue_id() -> QueueId {
    QueueId::parse(crate::node::new_random_id().as_str()).expect("base32 is a valid id")
}

fn new_waitlist_id() -> WaitlistId {
    WaitlistId::parse(crate::node::new_random_id().as_str()).expect("base32 is a valid id")
}

/// Joins a sale's waiting room. Joining before the opening puts the buyer in the pre-queue,
/// shuffled at the opening; joining later puts them behind everyone, in arrival order.
#[utoipa::path(
    post,
    path = "/api/v1/sales/{sale_id}/queue",
    tag = "queue",
    params(("sale_id" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$", description = "The sale's id")),
    request_body = UserBody,
    responses(
        (status = 202, description = "In line (a new place)", body = QueueBody),
        (status = 200, description = "This user's place, already in line (or admitted and within its window)", body = QueueBody),
        (status = 400, description = "A malformed body or id (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "With proven users: no valid bearer token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "With proven users: a `user_id` that is not the token's (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such sale (`sale_not_found`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`invalid_request`)", body = ErrorBody),
        (status = 409, description = "The sale has no waiting room (`no_queue`) or its queue is full (`line_full`)", body = ErrorBody),
        (status = 413, description = "A body over 4 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn queue_join(
    State(node): NodeState,
    sale_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let sale_id = SaleId::parse(&super::segment(sale_id)?)?;
    let req: UserBody = read_json(&headers, body).await?;
    let user = req.acting(&node, &headers)?;
    let rt = node.runtime(&sale_id).await?;
    if rt.spec.queue.is_none() {
        return Err(ticketrush_core::LedgerError::NoQueue.into());
    }
    let a = node
        .store
        .queue_join(&sale_id, new_queue_id(), user)
        .await?;
    let status = if a.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &QueueBody::of(&rt.spec, &a)))
}

/// A place in a sale's waiting room: where it stands, and the admission token once admitted.
/// Poll it with backoff (docs/API.md); any node answers the same.
#[utoipa::path(
    get,
    path = "/api/v1/sales/{sale_id}/queue/{queue_id}",
    tag = "queue",
    params(
        ("sale_id" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$", description = "The sale's id"),
        ("queue_id" = String, Path, description = "The place's id (opaque)")
    ),
    responses(
        (status = 200, description = "The place", body = QueueBody),
        (status = 400, description = "Not a valid sale id (`invalid_request`)", body = ErrorBody),
        (status = 404, description = "No such sale (`sale_not_found`) or place (`queue_entry_not_found`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn queue_get(
    State(node): NodeState,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (sale_id, id) = place_id(ids, QueueId::parse, ApiError::queue_entry_not_found)?;
    let rt = node.runtime(&sale_id).await?;
    if rt.spec.queue.is_none() {
        return Err(ApiError::queue_entry_not_found());
    }
    let a = node
        .store
        .queue_entry(&sale_id, &id)
        .await?
        .ok_or_else(ApiError::queue_entry_not_found)?;
    Ok(json(StatusCode::OK, &QueueBody::of(&rt.spec, &a)))
}

/// A place on a sale's waitlist.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WaitlistBody<'a> {
    waitlist_id: &'a str,
    sale_id: &'a str,
    user_id: &'a str,
    /// Waiting entries ahead, plus one; null unless `waiting`.
    #[schema(nullable = true)]
    position: Option<u64>,
    /// `waiting`; `offered` (a freed ticket is held in this user's name: `reservation_id`);
    /// `withdrawn` (left the line).
    #[schema(pattern = "^(waiting|offered|withdrawn)$")]
    state: &'static str,
    /// Once offered: the reservation, held for the sale's `hold_seconds` (pay it as any other).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    reservation_id: Option<String>,
}

impl<'a> WaitlistBody<'a> {
    fn of(sale: &'a SaleId, e: &'a WaitlistEntry) -> WaitlistBody<'a> {
        WaitlistBody {
            waitlist_id: e.waitlist_id.as_str(),
            sale_id: sale.as_str(),
            user_id: e.user_id.as_str(),
            position: e.position,
            state: e.state.as_str(),
            reservation_id: (e.state == ticketrush_core::WaitState::Offered)
                .then(|| ticketrush_core::ledger::offer_id(&e.waitlist_id, sale).to_string()),
        }
    }
}

/// Joins a sold-out sale's waitlist: a ticket freed later (a cancel, an unpaid hold) becomes a
/// reservation for the first buyer waiting, in the same step, before anyone else can take it.
#[utoipa::path(
    post,
    path = "/api/v1/sales/{sale_id}/waitlist",
    tag = "waitlist",
    params(("sale_id" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$", description = "The sale's id")),
    request_body = UserBody,
    responses(
        (status = 201, description = "On the waitlist", body = WaitlistBody),
        (status = 200, description = "This user's place, already waiting", body = WaitlistBody),
        (status = 400, description = "A malformed body or id (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "With proven users: no valid bearer token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "With proven users: a `user_id` that is not the token's (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such sale (`sale_not_found`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`invalid_request`)", body = ErrorBody),
        (status = 409, description = "Tickets are available (`not_sold_out`), the user holds as many as the sale allows (`limit_reached`), or the waitlist is full (`line_full`)", body = ErrorBody),
        (status = 413, description = "A body over 4 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn waitlist_join(
    State(node): NodeState,
    sale_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let sale_id = SaleId::parse(&super::segment(sale_id)?)?;
    let req: UserBody = read_json(&headers, body).await?;
    let user = req.acting(&node, &headers)?;
    let a = node
        .store
        .waitlist_join(&sale_id, new_waitlist_id(), user)
        .await?;
    let status = if a.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &WaitlistBody::of(&sale_id, &a.entry)))
}

/// A place on a sale's waitlist.
#[utoipa::path(
    get,
    path = "/api/v1/sales/{sale_id}/waitlist/{waitlist_id}",
    tag = "waitlist",
    params(
        ("sale_id" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$", description = "The sale's id"),
        ("waitlist_id" = String, Path, description = "The place's id (opaque)")
    ),
    responses(
        (status = 200, description = "The place", body = WaitlistBody),
        (status = 400, description = "Not a valid sale id (`invalid_request`)", body = ErrorBody),
        (status = 404, description = "No such sale (`sale_not_found`) or place (`waitlist_entry_not_found`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn waitlist_get(
    State(node): NodeState,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (sale_id, id) = place_id(ids, WaitlistId::parse, ApiError::waitlist_entry_not_found)?;
    node.runtime(&sale_id).await?;
    let e = node
        .store
        .waitlist_entry(&sale_id, &id)
        .await?
        .ok_or_else(ApiError::waitlist_entry_not_found)?;
    Ok(json(StatusCode::OK, &WaitlistBody::of(&sale_id, &e)))
}

/// Leaves a sale's waitlist. Withdrawing again answers the same; an entry already offered keeps
/// its reservation (cancel that to give the ticket up).
#[utoipa::path(
    post,
    path = "/api/v1/sales/{sale_id}/waitlist/{waitlist_id}/withdraw",
    tag = "waitlist",
    params(
        ("sale_id" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$", description = "The sale's id"),
        ("waitlist_id" = String, Path, description = "The place's id (opaque)")
    ),
    request_body = UserBody,
    responses(
        (status = 200, description = "The place, now withdrawn (or offered, if it already was)", body = WaitlistBody),
        (status = 400, description = "A malformed body or id (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "With proven users: no valid bearer token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The place is another user's, or with proven users a `user_id` that is not the token's (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such sale (`sale_not_found`) or place (`waitlist_entry_not_found`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`invalid_request`)", body = ErrorBody),
        (status = 413, description = "A body over 4 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn waitlist_withdraw(
    State(node): NodeState,
    ids: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (sale_id, id) = place_id(ids, WaitlistId::parse, ApiError::waitlist_entry_not_found)?;
    let req: UserBody = read_json(&headers, body).await?;
    let user = req.acting(&node, &headers)?;
    node.runtime(&sale_id).await?;
    let e = node
        .store
        .waitlist_withdraw(&sale_id, &id, &user)
        .await
        .map_err(|e| match e {
            ticketrush_store::StoreError::Ledger(ticketrush_core::LedgerError::Forbidden) => {
                ApiError::forbidden("the waitlist entry belongs to another user")
            }
            e => e.into(),
        })?;
    Ok(json(StatusCode::OK, &WaitlistBody::of(&sale_id, &e)))
}

/// The buyer's page of a sale: countdown, queue, buying, waitlist (one self-contained file).
pub const BUYER_HTML: &str = include_str!("../../assets/buyer.html");

/// The buyer's page: a person sees the countdown to the opening, joins the queue, watches
/// their place, buys once admitted, joins the waitlist when sold out, and pays. Self-contained
/// (nothing from another host); it reads the sale's id from its own path.
#[utoipa::path(
    get,
    path = "/sales/{sale_id}",
    tag = "queue",
    params(("sale_id" = String, Path, description = "The sale's id")),
    responses((status = 200, description = "An HTML page (nothing loaded from elsewhere)", body = String, content_type = "text/html"))
)]
pub async fn page(_sale_id: Result<Path<String>, PathRejection>) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        BUYER_HTML,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticketrush_core::{QueueEntry, UnixMs, UserId};

    fn spec(rate: u32) -> SaleSpec {
        SaleSpec::new(
            SaleId::parse("s").unwrap(),
            None,
            10,
            None,
            None,
            UnixMs(100_000),
        )
        .unwrap()
        .with_queue(rate, "k".into())
        .unwrap()
    }

    fn answer(rank: Option<u64>, size: u64, now: i64) -> QueueAnswer {
        QueueAnswer {
            entry: QueueEntry {
                queue_id: QueueId::parse("q").unwrap(),
                user_id: UserId::parse("u").unwrap(),
                rank,
                size,
            },
            created: false,
            now: UnixMs(now),
        }
    }

    #[test]
    fn positions_count_down_to_admission_and_the_token_follows() {
        let s = spec(2);
        let a1 = answer(None, 10, 90_000);
        let before = QueueBody::of(&s, &a1);
        assert_eq!((before.position, before.admitted), (None, false));
        // 10 s to the opening, then the 5th of 10 at 2/s: 2 s more.
        assert_eq!(before.estimated_wait_seconds, 12);
        let a2 = answer(Some(7), 10, 100_000);
        let waiting = QueueBody::of(&s, &a2);
        assert_eq!((waiting.position, waiting.admitted), (Some(6), false));
        assert_eq!(waiting.estimated_wait_seconds, 3);
        assert!(waiting.admission_token.is_none());
        let a3 = answer(Some(7), 10, 101_000);
        let later = QueueBody::of(&s, &a3);
        assert_eq!(later.position, Some(4));
        let a4 = answer(Some(7), 10, 103_000);
        let admitted = QueueBody::of(&s, &a4);
        assert_eq!((admitted.position, admitted.admitted), (Some(0), true));
        let token = admitted.admission_token.unwrap();
        let q = s.queue.as_ref().unwrap();
        let user = UserId::parse("u").unwrap();
        assert!(
            crate::admission::verify(q, &s.id, &user, Some(token.as_bytes()), UnixMs(103_000))
                .is_ok()
        );
        let a5 = answer(Some(7), 10, 103_000 + ADMISSION_WINDOW_MS);
        let lapsed = QueueBody::of(&s, &a5);
        assert!(lapsed.admitted && lapsed.admission_token.is_none());
    }
}
