//! `GET /api/v1/openapi.json`: the API's description, generated from the handlers (their
//! `#[utoipa::path]` attributes) and the types they read and answer with (`ToSchema`).
//! The router and the document are built from the same registrations
//! (`utoipa_axum::routes!`), so a route cannot be served under one path and documented
//! under another; a test walks the router for `/api/` routes the document lacks, and
//! another checks real responses against it.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa_axum::routes;

use super::access::Routes;
use super::error::ErrorBody;
use super::params::{ApiQuery, NoParams};

/// `GET /api/v1/openapi.json`.
pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(openapi))
}

/// What the document says about the API as a whole; the paths come from the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Rackwatch API",
        version = "1",
        description = "Every page's data as JSON, the agents' ingest, schedulers' queue \
            reports and facility meter readings. People authenticate with the session \
            cookie of a login or HTTP Basic credentials of a Rackwatch user; agents send \
            their token as a Bearer token, schedulers their pool's token. Times are \
            RFC 3339 UTC; units are in field names (_pct, _bytes, _watts, _celsius, _mhz, \
            _kwh). Errors answer with a JSON body `{\"error\": \"…\"}` that says what to \
            do; 503 answers carry Retry-After.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    servers((url = "/")),
    security(("basic" = []), ("session" = [])),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody))
)]
pub(super) struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, doc: &mut OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::auth::SESSION_COOKIE,
                "The session cookie a login through /login sets.",
            ))),
        );
        c.add_security_scheme(
            "agent_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An agent token (`rackwatch token create --host NAME`), bound to \
                         its host.",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "remote_write_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A remote-write token (`rackwatch token create --write-site SITE` or \
                         `--write-hosts A,B`), bound to the hosts it may write for; \
                         Prometheus sends it as `remote_write.authorization.credentials`.",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "scheduler_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A pool's scheduler token (`rackwatch token create --pool NAME`), \
                         bound to its pool.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document, built once from the API router.
pub fn document() -> &'static OpenApi {
    static DOC: LazyLock<OpenApi> = LazyLock::new(|| {
        let mut doc = super::api_router().into_openapi();
        common_responses(&mut doc);
        doc
    });
    &DOC
}

/// Answers any route can give: a panic caught (500) and a database that cannot be
/// reached or a limit the server keeps (503, with Retry-After), and on a route that takes
/// query parameters, a malformed or unknown one (400). Listed on every operation so a
/// client knows the body it gets.
fn common_responses(doc: &mut OpenApi) {
    let error = || {
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Error")))
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post, &mut item.delete]
            .into_iter()
            .flatten()
        {
            let takes_query =
                op.parameters.iter().flatten().any(
                    |p| matches!(p, RefOr::T(p) if matches!(p.parameter_in, ParameterIn::Query)),
                );
            let r = &mut op.responses.responses;
            if takes_query {
                r.entry("400".into()).or_insert_with(|| {
                    ResponseBuilder::new()
                        .description(
                            "A query parameter is malformed or unknown; the error names it \
                             and the parameters the route takes.",
                        )
                        .content("application/json", error())
                        .build()
                        .into()
                });
            }
            r.entry("500".into()).or_insert_with(|| {
                ResponseBuilder::new()
                    .description("Internal error; the server logged the cause.")
                    .content("application/json", error())
                    .build()
                    .into()
            });
            r.entry("503".into()).or_insert_with(|| {
                ResponseBuilder::new()
                    .description(
                        "The database cannot be reached; retry after the Retry-After \
                         header's seconds.",
                    )
                    .content("application/json", error())
                    .build()
                    .into()
            });
        }
    }
}

/// The document as served, serialized once.
static JSON: LazyLock<String> =
    LazyLock::new(|| serde_json::to_string(document()).expect("the document serializes"));

/// The OpenAPI 3.1 description of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    security(()),
    responses(
        (status = 200, description = "This document.", body = Object),
        (status = 400, description = "A query parameter: this endpoint takes none.", body = ErrorBody),
    )
)]
pub async fn openapi(_q: ApiQuery<NoParams>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], JSON.as_str())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_names_every_anomaly_feature() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let names: Vec<&str> = doc["components"]["schemas"]["AnomalyExplanation"]["properties"]
            ["metric"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            crate::analytics::anomaly::FEATURES
                .iter()
                .map(|f| f.name)
                .collect::<Vec<_>>()
        );
    }
}
