//! `GET /buy/ticket`: the original prototype's endpoint, so `ab -n 10000 -c 100
//! http://HOST/buy/ticket` works as in the article. Always 200 with `code` 1 or -1; only a
//! malformed query is a 400.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use ticketrush_core::{SaleId, UserId};

use super::{json, NodeState, ReservationBody};
use crate::error::ApiError;
use crate::node::{new_anonymous_user, Reserved};
use crate::openapi::ErrorBody;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BuyQuery {
    /// Default: a new anonymous user per request, as in the original.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$")]
    user_id: Option<String>,
    /// Default: the node's first `--sale`.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$")]
    sale_id: Option<String>,
}

/// The original prototype's answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Answer<'a> {
    /// 1: reserved; -1: not (the reason is in `msg`).
    code: i32,
    msg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<ReservationBody<'a>>,
}

/// The original prototype's endpoint: reserves a ticket, always 200 with `code` 1 or -1.
#[utoipa::path(
    get,
    path = "/buy/ticket",
    tag = "compat",
    params(BuyQuery),
    responses(
        (status = 200, description = "`code` 1 with the reservation, or -1 with the reason", body = Answer),
        (status = 400, description = "A malformed query or id (`invalid_request`)", body = ErrorBody)
    )
)]
pub async fn buy_ticket(
    State(node): NodeState,
    q: Result<Query<BuyQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Ok(Query(q)) = q else {
        return ApiError::invalid("the query string is malformed").into_response();
    };
    let parsed = (|| {
        let given = q.user_id.as_deref().map(UserId::parse).transpose()?;
        let user = match (&node.config.user_auth, given) {
            // Proven users: the token's sub (a user_id given must be it).
            (Some(auth), given) => crate::auth::acting_user(Some(auth), &headers, given)?,
            (None, Some(u)) => u,
            (None, None) => new_anonymous_user(),
        };
        let sale = match q.sale_id.as_deref() {
            Some(s) => Some(SaleId::parse(s)?),
            None => node.config.default_sale.clone(),
        };
        Ok::<_, ApiError>((user, sale))
    })();
    let (user, sale) = match parsed {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Some(sale) = sale else {
        return failure(
            "no sale_id given and the server has no default sale (serve --sale ID:TOTAL)",
        );
    };
    let admission = headers
        .get(&super::reservations::ADMISSION_TOKEN)
        .map(|v| v.as_bytes());
    match node.reserve(&sale, user, None, admission).await {
        Ok(Reserved::Created(r) | Reserved::Replayed(r)) => json(
            StatusCode::OK,
            &Answer {
                code: 1,
                msg: "reserved",
                data: Some(ReservationBody::of(&r)),
            },
        ),
        Err(e) => failure(&e.message),
    }
}

fn failure(msg: &str) -> Response {
    json(
        StatusCode::OK,
        &Answer {
            code: -1,
            msg,
            data: None,
        },
    )
}
