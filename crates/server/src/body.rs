//! Reading a JSON body within our limits, with our error codes.
//!
//! axum's `Json` extractor answers its own plain-text rejections (and 415 for a missing content
//! type); the contract wants `{"error": ...}` everywhere, so bodies are read here instead.
//!
//! [`drain_unread`] is the other half: whatever a handler left unread of a body is read and
//! discarded (within bounds) before the answer is sent, so an early refusal is not lost to a
//! TCP reset.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Frame, SizeHint};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::limits::{BODY_BYTES_MAX, BODY_DRAIN_BYTES_MAX, BODY_DRAIN_TIMEOUT, BODY_READ_TIMEOUT};

/// Checks the content type and size, reads the body, and parses it as `T`.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    read_json_with(headers, body, |_| None).await
}

/// `read_json`, trying `fast` on the bytes first: a hand-written reader of the one exact form
/// nearly every client sends (see `UserBody::fast`), serde for everything else.
pub async fn read_json_with<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    fast: fn(&[u8]) -> Option<T>,
) -> Result<T, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::invalid(
            "send the body as JSON with Content-Type: application/json",
        ));
    }
    // The declared length, without a header lookup: hyper sets the body's size hint from
    // Content-Length (a chunked body declares none, and `Limited` bounds it as it arrives).
    if body.size_hint().lower() > BODY_BYTES_MAX as u64 {
        return Err(ApiError::payload_too_large());
    }
    // A small body arrives with its head, so one poll usually finds it whole: only a body
    // still on its way arms the timer (arming and dropping one cost ~1,000 instructions a
    // request). A client that declares a body and never sends it must not hold the request
    // forever.
    let mut collect = std::pin::pin!(Limited::new(body, BODY_BYTES_MAX).collect());
    let first = collect
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()));
    let collected = match first {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => tokio::time::timeout(BODY_READ_TIMEOUT, collect).await,
    };
    let bytes = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return Err(ApiError::payload_too_large()),
        Ok(Err(_)) => return Err(ApiError::invalid("the body could not be read")),
        Err(_) => return Err(ApiError::body_timeout()),
    };
    if let Some(v) = fast(&bytes) {
        return Ok(v);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("the body is empty; send a JSON object"));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    // What every client sends, compared as bytes; parameters and spacing take the long way.
    if v.as_bytes().eq_ignore_ascii_case(b"application/json") {
        return true;
    }
    let Ok(v) = v.to_str() else {
        return false;
    };
    let mime = v.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
}

/// Middleware (run inside `request_id::layer`): after the handler answers, reads and discards what it left of the request body
/// (up to `BODY_DRAIN_BYTES_MAX`, within `BODY_DRAIN_TIMEOUT`), so the client, still sending,
/// gets the answer instead of a reset. Past the bounds, or when the client waits for
/// `100 Continue`, the answer says `Connection: close` and nothing more is read.
pub async fn drain_unread(req: Request, router: axum::Router) -> Response {
    use tower::ServiceExt;
    let run = |req: Request| async move {
        match router.oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    };
    if !may_outlast_handler(req.body()) {
        return run(req).await;
    }
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let left = Arc::new(Mutex::new(None));
    let req = req.map(|inner| {
        Body::new(Tracked {
            inner: Some(inner),
            left: left.clone(),
        })
    });
    let mut resp = run(req).await;
    let unread = left.lock().expect("body slot lock").take();
    if let Some(body) = unread {
        if expects_continue || !discard(body).await {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    resp
}

/// Whether a body may outlast what a handler reads: one sent in chunks, or declared larger
/// than any handler reads. A body within `BODY_BYTES_MAX` arrives with its headers and hyper
/// reads what a handler left of it; not tracking those keeps the reservation path free of
/// this layer's cost. Read from the body's size hint, which hyper sets from the request's
/// framing (`Content-Length`: exactly that; chunked: no upper bound), not from two header
/// lookups (about 350 instructions a request; BENCHMARKS.md, issue 17).
pub(crate) fn may_outlast_handler(body: &Body) -> bool {
    body.size_hint()
        .upper()
        .is_none_or(|n| n > BODY_BYTES_MAX as u64)
}

/// Reads `body` to its end within the bounds; answers whether it got there.
async fn discard(mut body: Body) -> bool {
    if body.size_hint().lower() > BODY_DRAIN_BYTES_MAX {
        return false;
    }
    let read = async {
        let mut budget = BODY_DRAIN_BYTES_MAX;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                let Some(rest) = budget.checked_sub(data.len() as u64) else {
                    return false;
                };
                budget = rest;
            }
        }
        true
    };
    tokio::time::timeout(BODY_DRAIN_TIMEOUT, read)
        .await
        .unwrap_or(false)
}

/// A request body that, when dropped before its end, leaves the rest in `left` for
/// [`drain_unread`].
struct Tracked {
    inner: Option<Body>,
    left: Arc<Mutex<Option<Body>>>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if !inner.is_end_stream() {
                if let Ok(mut left) = self.left.lock() {
                    *left = Some(inner);
                }
            }
        }
    }
}

/// Whole numbers as JSON Schema defines them: `10` and `10.0` are the same integer (a generated
/// client, or the OpenAPI document's own checker, may send either); `10.5`, negatives and
/// values past the type's range are refused. For `#[serde(deserialize_with)]`.
pub mod whole {
    use serde::de::{Deserializer, Error};
    use serde::Deserialize;

    fn number<'de, D: Deserializer<'de>>(d: D, max: u64) -> Result<u64, D::Error> {
        check(serde_json::Number::deserialize(d)?, max)
    }

    fn check<E: Error>(n: serde_json::Number, max: u64) -> Result<u64, E> {
        let v = match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Some(v),
            // 2^53: past it an f64 is not exact, so a fraction would be invisible.
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f <= 9_007_199_254_740_992.0 => {
                Some(f as u64)
            }
            _ => None,
        };
        match v {
            Some(v) if v <= max => Ok(v),
            _ => Err(E::custom(format!(
                "invalid value: {n}, expected a whole number from 0 to {max}"
            ))),
        }
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        number(d, u64::MAX)
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        number(d, u64::from(u32::MAX)).map(|v| v as u32)
    }

    /// `null` is as good as absent.
    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(|n| check(n, u64::from(u32::MAX)).map(|v| v as u32))
            .transpose()
    }
}
