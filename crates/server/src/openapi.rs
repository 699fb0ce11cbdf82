//! The OpenAPI 3.1 document of the node's API, generated from the handlers and the types they
//! use (`utoipa`): the router is built from the same `#[utoipa::path]` declarations
//! (`routes/mod.rs`), so a route cannot be served without being documented. Every node serves
//! it at `GET /api/v1/openapi.json`; `docs/openapi.json` is the committed copy, which a test
//! keeps equal to it (`ticketrush openapi > docs/openapi.json` writes it).
//!
//! What the declarations would repeat on every operation is added here once: `X-Node-Id` on
//! every response, `Retry-After` on every 429 and 503, the admin bearer scheme.

use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, OpenApi as Doc, RefOr, Type};
use utoipa::{Modify, OpenApi, ToSchema};

/// The body of every error answer (`error.rs` writes it by hand for speed; a test holds the
/// two together).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// The error code: what a client branches on (docs/API.md lists them with their statuses).
    #[schema(example = "sold_out")]
    pub error: String,
    /// A sentence for people.
    pub message: String,
    /// On a 503 to a reservation whose outcome the node could not learn: the id the
    /// reservation has if the store applied it (look it up later).
    #[schema(nullable = false)]
    pub reservation_id: Option<String>,
}

/// `/healthz` and `/readyz` when all is well.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct StatusBody {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    pub status: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ticketrush",
        description = "A flash-sale ticketing node: create sales, reserve (with per-user \
            limits and idempotency), pay or cancel within the hold; every seat sold once. \
            The contract in words is docs/API.md.",
        license(name = "MIT")
    ),
    components(schemas(ErrorBody, StatusBody)),
    tags(
        (name = "sales", description = "Sales: create (admin), read, list"),
        (name = "reservations", description = "Reserve, read, pay, cancel"),
        (name = "compat", description = "The original prototype's endpoint"),
        (name = "ops", description = "Health, readiness, metrics, this document")
    )
)]
pub struct ApiDoc;

/// Adds what every operation shares (see the module doc). Runs on the finished document, once
/// the router has merged every route's declaration into it.
pub struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut Doc) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let string = || ObjectBuilder::new().schema_type(Type::String).build();
        let integer = || ObjectBuilder::new().schema_type(Type::Integer).build();
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                for (status, resp) in op.responses.responses.iter_mut() {
                    let RefOr::T(resp) = resp else { continue };
                    resp.headers.insert(
                        "X-Node-Id".into(),
                        HeaderBuilder::new()
                            .schema(string())
                            .description(Some("The node that answered."))
                            .build(),
                    );
                    if status == "429" || status == "503" {
                        resp.headers.insert(
                            "Retry-After".into(),
                            HeaderBuilder::new()
                                .schema(integer())
                                .description(Some("Seconds to wait before retrying."))
                                .build(),
                        );
                    }
                }
            }
        }
    }
}

/// The document, as the node serves it (pretty JSON, a newline at the end).
pub fn document(doc: &Doc) -> String {
    let mut s = doc.to_pretty_json().expect("the document serialises");
    s.push('\n');
    s
}
